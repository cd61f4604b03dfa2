"""The cost model's own step time as a function of the engine state (no global line).

A roofline or measured-profile step is ``max(compute, memory)`` per operator: flat while the
weights dominate, steeper once the verify pass turns compute-bound, and a prompt chunk added to
a memory-bound step costs less than one added to a compute-bound step. One line through all
batch sizes (``linearize()``) misses all three (20% error on ``scenarios/default.yaml``), so the
analytic model prices steps through ``StepCostModel.step`` directly:

* ``decode[n]``: a step of ``n`` decoding requests at the mean context ``ctx`` (and its verify,
  draft and overhead parts), for every ``n`` in ``0..n_max``;
* ``mixed[n, q]``: the same step carrying ``q`` prefill chunks of the mean prompt (``q`` up to
  :data:`MAX_CHUNKS`; chunks beyond the token budget are priced at the same marginal rate, as
  the spilled work costs the same in the next step); with prompts of random length a chunk
  costs the law's mean, not the mean-length prompt's (attention makes a prompt's cost convex
  in its length);
* the number of chunks in a step: the engine prefills in each step what arrived during the
  previous one, so given ``n`` the chunk count is a Markov chain ``q' ~ Poisson(lambda_c
  mixed[n, q])`` (``lambda_c`` chunk arrival rate); :meth:`StepCurve.step_time` is its stationary
  mean step, ``t(n)``, the state-dependent step time the GPS birth-death model takes, and
  :meth:`StepCurve.chunk_cost` the mean time one chunk adds at ``n`` (for linear costs these
  reduce to ``(a + b n) / (1 - lambda c_p)`` and ``c_p``).

The step-weighted mean context (long requests stay longer in the batch) is
``E[prompt] + E[S g] / (2 E[S])`` for decode steps ``S`` and output length ``g``.
"""

from __future__ import annotations

__all__ = [
    "MAX_CHUNKS",
    "LocalSteps",
    "PromptLaw",
    "StepCurve",
    "build_step_curve",
    "mean_context",
    "poisson_pmf",
    "prompt_chunks",
    "slopes",
]

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from scipy import special

from sdsim.analytic.chunkchain import chain_rows
from sdsim.analytic.work import RequestWork
from sdsim.costs.step import StepCostModel, StepShape, step_times

FloatArray = npt.NDArray[np.float64]

# Largest number of prefill chunks in one step the chain tracks. The chain's mean is
# lambda_c t / (1 - lambda_c c_chunk) (about 2-3 near saturation on the shipped scenarios), so 32
# leaves a Poisson tail far below 1e-9.
MAX_CHUNKS = 32


class PromptLaw(NamedTuple):
    """The law of what a request prefills, binned: ``lengths[i]`` tokens prefilled with
    probability ``weights[i]``, after ``cached[i]`` tokens already in the KV cache (a prefix-cache
    hit), which every prefilled token attends to."""

    lengths: npt.NDArray[np.int64]
    weights: FloatArray
    cached: FloatArray


def slopes(values: FloatArray) -> FloatArray:
    """Slope of a per-batch curve at every n >= 1 (central differences; index 0 copies index 1).

    ``n = 0`` (an empty step: overhead only) is left out, as the first decoding request brings
    the weight reads with it and no slope through that jump is meaningful.
    """
    v = np.asarray(values, dtype=np.float64)
    out = np.zeros_like(v)
    if v.shape[0] >= 3:
        out[1:] = np.gradient(v[1:])
        out[0] = out[1]
    return out


def mean_context(prompt_mean: float, work: RequestWork) -> float:
    """Step-weighted mean KV length of a decoding request: ``E[prompt] + E[S g] / (2 E[S])``."""
    s_mean = np.array([float(np.arange(r.shape[0]) @ r) for r in work.steps_pmf], dtype=np.float64)
    w = work.g_probs * s_mean
    if w.sum() <= 0:
        return prompt_mean + work.mean_output / 2
    return prompt_mean + float((w * work.g_values).sum() / w.sum()) / 2


@dataclass(frozen=True)
class LocalSteps:
    """The real steps around ``n`` others in system, at one arrival rate: what the TTFT model
    reads (:func:`sdsim.analytic.operating.local_steps` builds it).

    Attributes
    ----------
    pq
        ``pq[n, q]``: the chunk chain's stationary law of ``q`` chunks in a step of decode batch
        ``n``.
    mixed, prompt_shift, prompt_w
        As :class:`StepCurve`'s.
    frac
        Decoding share of the requests in system (``E[S] / nu``): ``n`` others put about
        ``n frac`` requests in the decode batch.
    chunk_cap
        Most prefill chunks one step takes (the token budget over the chunk).
    chunk_cv2
        Squared CV of a prefill chunk's cost over the prompt-length law
        (:attr:`StepCurve.chunk_cost_cv2`).
    """

    pq: FloatArray
    mixed: FloatArray
    prompt_shift: FloatArray
    prompt_w: FloatArray
    frac: float
    chunk_cap: float = math.inf
    chunk_cv2: float = 0.0

    def rows(self, n: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """The decode-batch row nearest ``n frac`` for each ``n`` others."""
        x = np.rint(np.asarray(n, dtype=np.float64) * self.frac)
        return np.clip(x, 0, self.mixed.shape[0] - 1).astype(np.int64)


@dataclass
class StepCurve:
    """Step times of one replica at one draft length, for every decode batch ``0..n_max``.

    Attributes
    ----------
    k, ctx, n_max
        Draft length, mean context per decoding request (tokens), concurrency cap.
    chunk, chunks_per_request
        Prefill tokens per chunk (the mean prompt cut at the token budget) and chunks per prompt.
    decode, verify, draft
        Decode-only step total and its verify and draft parts (seconds), index ``n``.
    overhead
        CPU overhead per step (seconds).
    mixed
        ``mixed[n, q]``: a step with ``n`` decoding requests and ``q`` prefill chunks.
    prompt_w, prompt_shift
        The prompt-length law in bins (probabilities) and, per decode batch ``n`` and bin,
        how much longer a step with one (first) chunk of that bin's length is than one with a
        mean chunk (``prompt_shift[n, i]``; one zero column for a fixed length).
    chunk_cap
        Most chunks one step takes (the token budget over the chunk).
    budget, prefill_mean, prompt_len
        ``max_num_batched_tokens`` (0: not known), the mean tokens a request prefills and the
        prefilled lengths of ``prompt_w``'s bins (the mean alone for a fixed length).
    alone
        Mean prefill-only time of one prompt on an idle engine (its chunks' steps, seconds).
    """

    k: int
    ctx: float
    n_max: int
    chunk: int
    chunks_per_request: int
    decode: FloatArray
    verify: FloatArray
    draft: FloatArray
    overhead: float
    mixed: FloatArray
    prompt_w: FloatArray = field(default_factory=lambda: np.ones(1))
    prompt_shift: FloatArray = field(default_factory=lambda: np.zeros((1, 1)))
    chunk_cap: float = math.inf
    budget: int = 0
    prefill_mean: float = 0.0
    prompt_len: FloatArray = field(default_factory=lambda: np.zeros(1))
    alone: float = 0.0
    _cache: dict[float, tuple[FloatArray, FloatArray]] = field(default_factory=dict, repr=False)
    _slopes: dict[str, FloatArray] = field(default_factory=dict, repr=False)
    # chunk rate -> (pq, t, solved): rows of the chunk law solved so far (see solve_rows)
    _rows: dict[float, tuple[FloatArray, FloatArray, npt.NDArray[np.bool_]]] = field(
        default_factory=dict, repr=False
    )
    # (chunk rate, kind) -> what sdsim.analytic.operating assembled from the solved rows
    _assembled: dict[tuple[float, bool], tuple[FloatArray, FloatArray]] = field(
        default_factory=dict, repr=False
    )
    # the latest chunk laws (the arrays themselves) and their chunk costs
    _costs: list[tuple[tuple[FloatArray, FloatArray], FloatArray]] = field(
        default_factory=list, repr=False
    )

    def slopes_of(self, name: str) -> FloatArray:
        """:func:`slopes` of ``decode``, ``verify`` or ``draft``, computed once per curve."""
        got = self._slopes.get(name)
        if got is None:
            got = slopes(getattr(self, name))
            self._slopes[name] = got
        return got

    def chunk_law(self, chunk_rate: float) -> tuple[FloatArray, FloatArray]:
        """Stationary law of the chunks per step given ``n`` and the mean step it gives.

        Parameters
        ----------
        chunk_rate
            Prefill chunks arriving per second (``lambda x chunks_per_request``).

        Returns
        -------
        pq, t
            ``pq[n, q]`` = P(q chunks in a step with n decoding), ``t[n]`` the mean step time.
        """
        key = float(chunk_rate)
        got = self._cache.get(key)
        if got is not None:
            return got
        out = _chain(self.mixed, chunk_rate)
        if len(self._cache) > 64:
            self._cache.clear()
        self._cache[key] = out
        return out

    def prime(self, chunk_rates: npt.ArrayLike) -> None:
        """Solve the chunk law at many chunk rates in one batch and cache them (the same floats
        as :meth:`chunk_law` at each rate: rows are solved independently)."""
        rates = [float(r) for r in np.unique(np.asarray(chunk_rates, dtype=np.float64))]
        rates = [r for r in rates if r not in self._cache]
        if not rates:
            return
        rows = self.mixed.shape[0]
        pq, t = _chain_rows(np.tile(self.mixed, (len(rates), 1)), np.repeat(rates, rows))
        if len(self._cache) + len(rates) > 64:
            self._cache.clear()
        for i, r in enumerate(rates):
            self._cache[r] = (pq[i * rows : (i + 1) * rows], t[i * rows : (i + 1) * rows])

    def forget_laws(self) -> None:
        """Drop every cached chunk law (full or by rows) to free memory."""
        self._cache.clear()
        self._rows.clear()
        self._assembled.clear()

    def solve_rows(self, wanted: Sequence[tuple[float, npt.NDArray[np.int64]]]) -> None:
        """Solve the chunk law exactly at the given rows for each given chunk rate, all in one
        batch, keeping what was solved before (:meth:`rows_solved` reads them back).

        Rows are independent (:func:`_chain_rows`): a row solved here has the same floats as in
        :meth:`chunk_law`'s full solve.
        """
        ns, nq = self.mixed.shape
        mats: list[FloatArray] = []
        rates: list[FloatArray] = []
        where: list[tuple[float, npt.NDArray[np.int64]]] = []
        new = {float(r) for r, _ in wanted} - set(self._rows)
        if new and len(self._rows) + len(new) > 64:
            self._rows.clear()  # (before this call's rates are registered, never among them)
        for rate, rows in wanted:
            key = float(rate)
            st = self._rows.get(key)
            if st is None:
                st = (np.zeros((ns, nq)), np.zeros(ns), np.zeros(ns, dtype=bool))
                full = self._cache.get(key)
                if full is not None:
                    st[0][:] = full[0]
                    st[1][:] = full[1]
                    st[2][:] = True
                self._rows[key] = st
            r = np.unique(np.asarray(rows, dtype=np.int64))
            r = r[~st[2][r]]
            if r.shape[0]:
                mats.append(self.mixed[r])
                rates.append(np.full(r.shape[0], key))
                where.append((key, r))
        if not mats:
            return
        pq, t = _chain_rows(np.concatenate(mats), np.concatenate(rates))
        i = 0
        for key, r in where:
            st = self._rows[key]
            st[0][r] = pq[i : i + r.shape[0]]
            st[1][r] = t[i : i + r.shape[0]]
            st[2][r] = True
            i += r.shape[0]

    def rows_solved(
        self, chunk_rate: float
    ) -> tuple[FloatArray, FloatArray, npt.NDArray[np.bool_]]:
        """``(pq, t, solved)``: the rows :meth:`solve_rows` solved at this chunk rate (others 0)."""
        return self._rows[float(chunk_rate)]

    def chunk_cost_from(self, pq: FloatArray, t: FloatArray) -> FloatArray:
        """:meth:`chunk_cost` from a given chunk law ``(pq, t)`` (the last few laws' results
        are kept: an operating point reads its law's chunk cost three times)."""
        for law, cost in self._costs:
            if law[0] is pq and law[1] is t:
                return cost
        q = np.arange(self.mixed.shape[1], dtype=np.float64)
        eq = pq @ q
        extra = t - self.decode
        first = self.mixed[:, 1] - self.mixed[:, 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            per = np.where(eq > 1e-9, extra / np.where(eq > 1e-9, eq, 1.0), first)
        out = np.asarray(per, dtype=np.float64)
        self._costs.insert(0, ((pq, t), out))
        del self._costs[4:]
        return out

    @property
    def chunk_cost_cv2(self) -> float:
        """Squared CV of one first chunk's cost over the prompt-length law (0 for a fixed
        length), at the middle decode batch: the prefill chunk is compute-bound on its own, so
        its spread barely moves with the batch (within 1-2% from 1 to 120 decoding on the
        shipped lognormal-prompt scenarios)."""
        if self.prompt_w.shape[0] < 2:
            return 0.0
        r = self.n_max // 2
        cost = self.mixed[r, 1] - self.mixed[r, 0] + self.prompt_shift[r]
        m = float(self.prompt_w @ cost)
        v = float(self.prompt_w @ (cost - m) ** 2)
        return v / (m * m) if m > 0 else 0.0

    def step_time_at(self, n: float, chunk_rate: float) -> float:
        """``t(n)`` at one (fractional) decode batch, without solving every row."""
        lo = int(min(max(math.floor(n), 0), self.n_max))
        hi = min(lo + 1, self.n_max)
        _, t = _chain_rows(self.mixed[[lo, hi]], np.full(2, float(chunk_rate)), ladder=False)
        f = min(max(n - lo, 0.0), 1.0)
        return float(t[0] + (t[1] - t[0]) * f)

    def step_time(self, chunk_rate: float) -> FloatArray:
        """``t(n)``: mean step time with ``n`` decoding requests and Poisson prefill chunks."""
        return self.chunk_law(chunk_rate)[1]

    def chunk_cost(self, chunk_rate: float) -> FloatArray:
        """Mean time one prefill chunk adds to a step with ``n`` decoding requests."""
        return self.chunk_cost_from(*self.chunk_law(chunk_rate))

    def room(self, n: int) -> int:
        """Prefill tokens a step can take beside ``n`` decoding requests: the budget less the
        ``k + 1`` tokens each of them takes (at least 1)."""
        r = int(min(max(n, 0), self.n_max))
        return max(self.budget - r * (self.k + 1), 1)

    def share_longer(self, tokens: int) -> float:
        """Probability that a request prefills more than ``tokens`` tokens."""
        return float(self.prompt_w[self.prompt_len > tokens].sum())

    def budget_share(self, rate: float, n: int) -> float:
        """Share of a step's token budget the prompts arriving during it take, at ``rate``
        (req/s) beside ``n`` decoding requests: ``rate x t(n) x E[prefill] / room``, the room
        being the budget less the ``k + 1`` tokens each decoding request takes, ``t(n)`` the
        chunk chain's mean step. ``0`` when the budget is unknown.

        The engine fills the budget first come first served and spreads a prompt longer than
        the room over several steps, so once this share is sizeable an arrival often waits
        behind earlier prompts' chunks; the chunk chain prices spilled chunks but keeps every
        arrival's first token in the step after it arrives.
        """
        if self.budget <= 0 or rate <= 0 or self.prefill_mean <= 0:
            return 0.0
        r = int(min(max(n, 1), self.n_max))
        t = self.step_time_at(r, rate * self.chunks_per_request)  # two rows, not the whole law
        return float(rate * t * self.prefill_mean / self.room(r))

    def stable(self, chunk_rate: float) -> bool:
        """Whether prefill alone leaves time to decode: ``chunk_rate x`` marginal chunk cost < 1."""
        if chunk_rate <= 0:
            return True
        top = self.mixed[:, -1] - self.mixed[:, -2]
        return bool(chunk_rate * float(top.max()) < 1.0)


def poisson_pmf(q: npt.ArrayLike, mu: npt.ArrayLike) -> FloatArray:
    """Poisson pmf by scipy.stats.poisson's own formula (``exp(xlogy(q, mu) - gammaln(q + 1) -
    mu)``, the same floats) without its per-call argument handling, which costs more than the
    arithmetic on the arrays used here."""
    qa = np.asarray(q, dtype=np.float64)
    return np.asarray(np.exp(special.xlogy(qa, mu) - special.gammaln(qa + 1) - mu))


# Chain sizes tried in turn (states 0..Q-1, the last absorbing the tail): a row keeps the first
# size whose stationary mass in that last state is below _TAIL_MASS (the full chain otherwise).
# The mass the truncation moves is then below 1e-15, which moves t(n) by under 1e-13 relative
# (3e-14 seen on default.yaml over k 1..10, alpha 0.5..0.95, 5..45 req/s) and costs a third of
# the full 33-state solve on average over that grid (the solve is O(Q^3)).
_RUNGS = (8, 12, 16, 20, 24, 28)
_TAIL_MASS = 1e-15
# a shorter size is tried only where it can pass: from its last state the next step's chance to
# leave it is not already large
_GATE = 1e-6


def _chain_rows(
    mixed: FloatArray, rates: FloatArray, ladder: bool = True
) -> tuple[FloatArray, FloatArray]:
    """Stationary chunk law of each row of ``mixed`` at its own chunk rate ``rates[r]``
    (``ladder=False``: the full chain at once, for a row or two where the shorter tries cost
    more calls than they save).

    Returns ``pq`` (rows x chunk states) and the mean step ``t`` per row. Each row's result
    depends on that row alone (a compiled loop over rows, :func:`sdsim.analytic.chunkchain.
    chain_rows`: GTH state reduction), so solving many rows (or rates) at once gives the same
    floats as solving them one by one.
    """
    nq = mixed.shape[1]
    sizes = tuple(r for r in _RUNGS if r < nq) if ladder else ()
    return chain_rows(mixed, rates, sizes, _TAIL_MASS, _GATE)


def _chain(mixed: FloatArray, chunk_rate: float) -> tuple[FloatArray, FloatArray]:
    """Stationary chunk law per row of ``mixed`` (see :meth:`StepCurve.chunk_law`): the
    number of chunks in a step with ``n`` decoding is a Markov chain ``q -> q' ~
    Poisson(chunk_rate mixed[n, q])``."""
    return _chain_rows(mixed, np.full(mixed.shape[0], float(chunk_rate)))


def prompt_chunks(length: int, budget: int, cached: int = 0) -> list[tuple[int, int]]:
    """The chunks a prompt of ``length`` new tokens (after ``cached`` ones already in the KV
    cache) is prefilled in, a budget's worth at a time: ``(tokens, attended context)`` each, the
    context being the cached tokens and the prompt up to the chunk's end. Beside running
    requests the engine's chunk is the budget less their decode tokens (``k + 1`` each), a
    difference of a few per cent at the default 8,192-token budget that the curve leaves out."""
    return [
        (min(budget, length - start), cached + min(length, start + budget))
        for start in range(0, max(length, 1), budget)
    ]


def _whole_prompt_cost(
    model: StepCostModel,
    n: npt.NDArray[np.int64],
    dctx: npt.NDArray[np.int64],
    k: int,
    law: PromptLaw,
    budget: int,
) -> tuple[FloatArray, FloatArray]:
    """``(cost[n, i], alone[i])``: the time prefilling bin ``i`` of the law adds to steps with
    ``n`` decoding requests (contexts ``dctx``), every chunk (:func:`prompt_chunks`) priced at
    its attended context; and the steps it takes on an idle engine, chunk after chunk."""
    chunks = [
        (i, tok, ctx)
        for i, (x, c) in enumerate(
            zip(law.lengths.tolist(), np.rint(law.cached).astype(np.int64).tolist(), strict=True)
        )
        for tok, ctx in prompt_chunks(int(x), budget, int(c))
    ]
    owner = np.array([c[0] for c in chunks], dtype=np.int64)
    tok = np.array([c[1] for c in chunks], dtype=np.int64)[None, :]
    ctx = np.array([c[2] for c in chunks], dtype=np.int64)[None, :]
    base = step_times(model, n, dctx, k).total
    full = np.asarray(step_times(model, n[:, None], dctx[:, None], k, tok, ctx, 1).total)
    cost = np.zeros((n.shape[0], law.lengths.shape[0]))
    np.add.at(cost.T, owner, (full - base[:, None]).T)
    # (summed in chunk order from zero, the same floats as pricing them one by one)
    alone = np.zeros(law.lengths.shape[0])
    np.add.at(alone, owner, full[0])
    return cost, alone


def build_step_curve(
    model: StepCostModel,
    k: int,
    ctx: float,
    prompt: float,
    budget: int,
    n_max: int,
    prompt_law: PromptLaw | None = None,
) -> StepCurve:
    """Price every decode batch ``0..n_max`` and ``0..MAX_CHUNKS`` prefill chunks per step.

    Parameters
    ----------
    model
        The scenario's StepCostModel.
    k
        Draft length.
    ctx
        Mean context per decoding request (tokens).
    prompt
        Mean prompt length (tokens).
    budget
        ``max_num_batched_tokens`` (prompts longer than it are prefilled in chunks).
    n_max
        Concurrency cap.
    prompt_law
        What a request prefills (binned), to price a chunk of each length beside every decode
        batch; ``None``: every prompt prefills the mean length from scratch.

    Returns
    -------
    StepCurve
    """
    p = max(1, round(prompt))
    chunk = max(1, min(p, budget))
    nchunks = max(1, math.ceil(p / chunk))
    # mean attended context of a chunk: cached tokens before it plus the chunk itself
    pf_ctx = float(np.mean([min(p, (i + 1) * chunk) for i in range(nchunks)]))
    ns = n_max + 1
    overhead = model.step(StepShape(0, 0, k)).overhead
    # every shape at once through the model's vectorised ``steps`` (bit-identical to ``step``);
    # round() and np.rint both round half to even
    n = np.arange(ns, dtype=np.int64)
    dctx = np.rint(n * ctx).astype(np.int64)
    q = np.arange(1, MAX_CHUNKS + 1, dtype=np.int64)
    pf_ctx_q = np.rint(q * pf_ctx).astype(np.int64)
    st = step_times(model, n, dctx, k)
    mixed = np.empty((ns, MAX_CHUNKS + 1))
    mixed[:, 0] = st.total
    mixed[:, 1:] = step_times(
        model, n[:, None], dctx[:, None], k, (q * chunk)[None, :], pf_ctx_q[None, :], q[None, :]
    ).total
    dec = np.array(st.total, dtype=np.float64)
    ver = np.array(st.verify, dtype=np.float64)
    dra = np.array(st.draft, dtype=np.float64)
    random = prompt_law is not None and prompt_law.lengths.shape[0] > 1
    law = prompt_law if random and prompt_law is not None else PromptLaw(
        np.array([p], dtype=np.int64), np.ones(1), np.zeros(1)
    )
    pw = np.asarray(law.weights, dtype=np.float64)
    whole, alone = _whole_prompt_cost(model, n, dctx, k, law, budget)
    # a prefill costs more than its tokens at the mean prompt's rate: attention grows with the
    # attended context (quadratic in a chunk's length) and a long prompt's later chunks attend to
    # its earlier ones, so a chunk of the curve is priced at the law's mean cost per chunk,
    # E[cost of a whole prompt] / chunks per prompt (on the open twin of multi-turn-chat,
    # lognormal prompts of mean 1,600 and CV 1.2 on the 8B model, 6.5% above the mean-length
    # chunk's cost at 20 decoding). For a fixed length that fits the budget the two agree (zero
    # excess); one longer than the budget is not a whole number of full chunks.
    excess = whole @ pw / nchunks - (mixed[:, 1] - mixed[:, 0])
    mixed[:, 1:] += excess[:, None] * q[None, :]
    shift = np.zeros((ns, 1))
    if random:
        # a step with one first chunk of each bin's length (cut at the budget, as the engine
        # cuts it) against one with a mean chunk
        xs = np.minimum(law.lengths, budget)
        xc = xs + np.rint(law.cached).astype(np.int64)
        one = step_times(model, n[:, None], dctx[:, None], k, xs[None, :], xc[None, :], 1).total
        shift = np.asarray(one, dtype=np.float64) - mixed[:, 1:2]
    return StepCurve(k, ctx, n_max, chunk, nchunks, dec, ver, dra, overhead, mixed, pw, shift,
                     float(max(1, budget // chunk)), budget, float(prompt),
                     law.lengths.astype(np.float64), float(pw @ alone))
