"""The arrivals at one replica as the analytic model sees them: a rate, a dispersion, states.

Every rate-driven arrival process of a scenario maps to an :class:`ArrivalView`:

* **Poisson**: one state, arrivals with index of dispersion ``ca2 = 1``;
* **constant** gaps and **gamma** gaps with ``CV <= 1``: one state, ``ca2 = CV^2`` (renewal
  arrivals' counts over long windows have index ``CV^2``); the number-in-system law takes it in
  its dispersion (:func:`sdsim.analytic.operating.dispersion`);
* **gamma** gaps with ``CV > 1`` (bursty): half of a ``CV = 3`` gamma's gaps are below 1% of
  the mean gap, so at the scale of a server step (tens of ms) its arrivals come in clumps. Over
  long windows its counts have index of dispersion ``CV^2`` (the number-in-system law takes
  that); at the scale of a step ``tau`` a clump goes on while the next gap is shorter than
  ``tau``: geometric clumps with ``E[B] = 1 / (1 - P(gap < tau))`` (a tagged arrival has
  ``E[B] - 1`` clump-mates ahead of it and as many behind, on average, all prefilled in its
  step). (A two-moment hyperexponential fit, an interrupted Poisson process, spreads the same
  bursts over half a second instead: notes/analytic.md);
* **mmpp**: its two states as given (``workload.mmpp``).

Replicas: every router sends each replica ``rate / N``; round-robin and least-outstanding
routing make a replica's gaps more regular (within a state, ``ca2 = c^2 / N``), random routing
thins (``1 - 1/N + c^2 / N``); the states (bursts) reach every replica at once.

With two states the number in system is a quasi-birth-death process (:func:`sdsim.analytic.gps.
modulated_birth_death`), an arrival sees the law of the state it arrives in (weighted by that
state's rate), and during its life the rate relaxes from its state's towards the mean at the
switching rate ``gamma`` (:meth:`ArrivalView.rate_over`), with extra variance in the number of
arrivals (:meth:`ArrivalView.count_var`).
"""

from __future__ import annotations

__all__ = ["ArrivalView", "arrival_view"]

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import special

from sdsim.scenario import Scenario

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ArrivalView:
    """Arrivals at one replica.

    Attributes
    ----------
    rate
        Mean arrival rate (req/s).
    ca2
        Index of dispersion of the arrivals within a state (1: Poisson).
    rates
        Arrival rate in each state (one entry: no states).
    leave
        Rate of leaving each state (to the other; ``(0.0,)`` with one state).
    kind
        What it was built from (for messages).
    batch
        Mean size of the geometric batches arrivals come in (1: one at a time).
    """

    rate: float
    ca2: float = 1.0
    rates: tuple[float, ...] = ()
    leave: tuple[float, ...] = ()
    kind: str = "poisson"
    batch: float = 1.0

    def __post_init__(self) -> None:
        if not self.rates:
            object.__setattr__(self, "rates", (self.rate,))
            object.__setattr__(self, "leave", (0.0,))

    @property
    def states(self) -> int:
        """Number of states (1 or 2)."""
        return len(self.rates)

    @property
    def occupancy(self) -> FloatArray:
        """Long-run share of time in each state."""
        if self.states == 1:
            return np.ones(1)
        a, b = self.leave
        return np.array([b / (a + b), a / (a + b)])

    @property
    def arrival_share(self) -> FloatArray:
        """Share of the arrivals that come in each state (``lambda_i pi_i / lambda``)."""
        w = self.occupancy * np.asarray(self.rates)
        return np.asarray(w / w.sum())

    @property
    def relax(self) -> float:
        """``gamma``: the rate at which the state forgets where it started."""
        return float(sum(self.leave))

    @property
    def rate_var(self) -> float:
        """Variance of the state's arrival rate over time."""
        occ = self.occupancy
        r = np.asarray(self.rates)
        return float(occ @ (r - self.rate) ** 2)

    def index_of_dispersion(self) -> float:
        """Of the counts over long windows: ``ca2 + 2 Var(rate) / (rate gamma)``."""
        if self.states == 1:
            return self.ca2
        return self.ca2 + 2.0 * self.rate_var / (self.rate * self.relax)

    def rate_over(self, state: int, t: npt.ArrayLike) -> FloatArray:
        """Mean arrival rate over the ``t`` seconds after an arrival in ``state``:
        ``rate + (rate_i - rate) (1 - exp(-gamma t)) / (gamma t)``."""
        tt = np.maximum(np.asarray(t, dtype=np.float64), 1e-12)
        if self.states == 1:
            return np.full(tt.shape, self.rate)
        g = self.relax
        share = -np.expm1(-g * tt) / (g * tt)  # the mean of exp(-g u) over [0, t]
        return np.asarray(self.rate + (self.rates[state] - self.rate) * share)

    def count_var(self, t: npt.ArrayLike) -> FloatArray:
        """Variance of the arrivals in ``t`` seconds beyond Poisson's (the rate's own swings,
        stationary): ``2 Var(rate) (t / gamma - (1 - exp(-gamma t)) / gamma^2)``, plus
        ``(ca2 - 1) rate t`` for over- or under-dispersed arrivals within a state."""
        tt = np.maximum(np.asarray(t, dtype=np.float64), 0.0)
        extra = (self.ca2 - 1.0) * self.rate * tt
        if self.states == 1:
            return np.asarray(extra)
        g = self.relax
        return np.asarray(extra + 2.0 * self.rate_var * (tt / g + np.expm1(-g * tt) / (g * g)))

    def batch_mates(self) -> tuple[float, float]:
        """Mean and variance of a tagged arrival's batch-mates on one side (ahead or behind):
        geometric on 0, 1, ... with mean ``batch - 1``."""
        m = self.batch - 1.0
        return m, m * (m + 1.0)

    def describe(self) -> str:
        """One line for messages."""
        if self.states == 1:
            extra = f", in batches of {self.batch:.3g} on average" if self.batch > 1 else ""
            return f"{self.kind} arrivals (index of dispersion {self.ca2:.2g}{extra})"
        lo, hi = self.rates
        return (
            f"{self.kind} arrivals as two states ({lo:.3g} and {hi:.3g} req/s, switching every "
            f"{1 / self.leave[0]:.3g} / {1 / self.leave[1]:.3g} s on average)"
        )


def _per_replica(c2: float, scn: Scenario) -> float:
    n = scn.server.replicas
    if n == 1:
        return c2
    if scn.server.router in ("random", "prefix-affinity"):
        # prefix-affinity splits the stream by a hash of the prefix: taken as a random split
        return 1.0 - 1.0 / n + c2 / n
    return c2 / n


def arrival_view(
    scn: Scenario, rate: float | None = None, step_s: float = 0.01
) -> ArrivalView:
    """The arrivals at one replica of a scenario (see the module docstring).

    Parameters
    ----------
    scn
        Scenario (its ``workload`` and ``server.replicas``/``router``).
    rate
        Mean rate per replica (req/s); default ``workload.rate / replicas``.
    step_s
        A server step's length: arrivals closer together than this come as one clump.

    Returns
    -------
    ArrivalView
    """
    w = scn.workload
    lam = w.rate / scn.server.replicas if rate is None else float(rate)
    if w.arrival == "mmpp":
        reps = scn.server.replicas
        lo, hi = (r / reps for r in w.mmpp.rates(w.rate))
        scale = lam / (w.rate / reps)
        d_lo, d_hi = w.mmpp.durations()
        return ArrivalView(lam, _per_replica(1.0, scn), (lo * scale, hi * scale),
                           (1.0 / d_lo, 1.0 / d_hi), "MMPP")
    if w.arrival == "gamma":
        c2 = _per_replica(float(w.cv**2), scn)
        batch = 1.0
        if c2 > 1.0:
            # gaps gamma(1 / c2) with mean 1 / lam: P(gap < tau) = gammainc(k, tau lam k)
            k = 1.0 / c2
            batch = 1.0 / max(1.0 - float(special.gammainc(k, step_s * lam * k)), 1e-6)
        return ArrivalView(lam, c2, kind=f"gamma (CV {w.cv:g})", batch=batch)
    if w.arrival == "constant":
        return ArrivalView(lam, _per_replica(0.0, scn), kind="constant-gap")
    # poisson; a trace is treated as Poisson (predict refuses trace arrivals)
    return ArrivalView(lam, _per_replica(1.0, scn), kind="Poisson")
