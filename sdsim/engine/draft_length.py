"""Draft-length policies: how many tokens to draft in the next engine step.

``spec.policy: fixed`` drafts ``spec.k`` tokens every step. ``spec.policy: adaptive`` picks k in
``0..spec.k_max`` before each step to maximise the expected tokens emitted per second of step time
(goodput-driven speculation control, in the spirit of SmartSpec / "goodput" schedulers):

* the acceptance rate is *observed*, never read from the scenario: an exponentially weighted
  maximum-likelihood estimate of the i.i.d. acceptance probability from the verification outcomes
  (``alpha_hat = accepted / (accepted + rejections)``, the MLE of a geometric law truncated at k),
  with weights that halve every ``spec.alpha_halflife_tokens`` drafted tokens;
* each candidate k is priced with the step-cost model's own ``step()`` for the current decode
  batch (the batch capped by the token budget, since k + 1 tokens per request count against it),
  and scored ``batch(k) * E[X](alpha_hat, k) / step_time(k)`` with
  ``E[X] = (1 - alpha^(k+1)) / (1 - alpha)`` tokens per request per step.

The estimate starts from an uninformative prior (alpha = 0.5 with the weight of two draft tokens),
so the first steps explore; when k = 0 is chosen no acceptance is observed, so one step in
``PROBE_EVERY`` drafts one token to keep the estimate alive.
"""

from __future__ import annotations

__all__ = ["CONTEXT_BUCKET", "PROBE_EVERY", "AdaptiveDraftLength", "expected_tokens"]

import numpy as np
import numpy.typing as npt

from sdsim.costs.step import StepCostModel, StepShape

# With k = 0 chosen, draft one token every this many decode steps so acceptance stays observed.
PROBE_EVERY = 32
# Mean-context bucket (tokens) of the memoised candidate prices.
CONTEXT_BUCKET = 16


def expected_tokens(alpha: float, ks: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """Expected tokens emitted per request per step, ``(1 - alpha^(k+1)) / (1 - alpha)``."""
    ks = np.asarray(ks, dtype=np.int64)
    if alpha >= 1.0:
        return (ks + 1).astype(np.float64)
    return np.asarray((1.0 - alpha ** (ks + 1)) / (1.0 - alpha), dtype=np.float64)


class AdaptiveDraftLength:
    """Chooses k per step from the observed acceptance and the current batch.

    Parameters
    ----------
    cost
        Step-cost model used to price each candidate k.
    k_max
        Largest k tried (candidates are ``0..k_max``).
    k_init
        k used until a decode batch exists to price (and for steps without decodes).
    token_budget
        ``max_num_batched_tokens``: a decode takes k + 1 of it.
    halflife_tokens
        Drafted tokens over which an observation's weight halves.
    """

    def __init__(
        self,
        cost: StepCostModel,
        k_max: int,
        k_init: int,
        token_budget: int,
        halflife_tokens: float,
    ) -> None:
        if k_max < 1:
            raise ValueError(f"k_max must be >= 1, got {k_max}")
        if halflife_tokens <= 0:
            raise ValueError(f"halflife_tokens must be > 0, got {halflife_tokens}")
        self.cost = cost
        self.k_max = int(k_max)
        self.k = int(min(k_init, k_max))
        self.budget = int(token_budget)
        self.halflife = float(halflife_tokens)
        self.ks = np.arange(self.k_max + 1, dtype=np.int64)
        # exponentially weighted counts of accepted draft tokens and of rejections (prior 1 + 1)
        self.acc_w = 1.0
        self.rej_w = 1.0
        self._since_probe = 0
        self._memo: dict[tuple[int, int], tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]]
        self._memo = {}

    @property
    def alpha_hat(self) -> float:
        """Current acceptance estimate."""
        return self.acc_w / (self.acc_w + self.rej_w)

    def choose(self, decode_seqs: int, decode_context: int) -> int:
        """The k for the next step.

        Parameters
        ----------
        decode_seqs
            Running requests that will decode (before the token budget caps them).
        decode_context
            Their KV tokens in total.
        """
        if decode_seqs <= 0:
            return self.k
        batch, times = self._priced(decode_seqs, decode_context)
        alpha = self.alpha_hat
        score = batch * expected_tokens(alpha, self.ks) / times
        # argmax takes the first maximum: ties go to the shorter draft (less KV, less waste)
        best_k = int(np.argmax(score))
        if best_k == 0:
            self._since_probe += 1
            if self._since_probe >= PROBE_EVERY:
                self._since_probe = 0
                best_k = 1
        self.k = best_k
        return best_k

    def _priced(
        self, decode_seqs: int, decode_context: int
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Decode batch and step time for every candidate k, memoised.

        The memo key is the batch size and the mean context in buckets of
        :data:`CONTEXT_BUCKET` tokens: step time moves by well under 0.1% within a bucket, and
        pricing nine candidates through the cost model every step would cost more than the
        step's own simulation.
        """
        key = (decode_seqs, decode_context // (decode_seqs * CONTEXT_BUCKET))
        got = self._memo.get(key)
        if got is not None:
            return got
        if len(self._memo) > 8192:
            self._memo.clear()
        batch = np.minimum(decode_seqs, self.budget // (self.ks + 1)).astype(np.float64)
        times = np.full(self.ks.shape[0], np.inf)
        for kk in range(self.k_max + 1):
            b = int(batch[kk])
            if b <= 0:
                break  # the token budget cannot hold one request with this many drafts
            ctx = decode_context * b // decode_seqs
            times[kk] = self.cost.step(StepShape(b, ctx, kk)).total
        times = np.where(times > 0, times, np.finfo(np.float64).tiny)
        self._memo[key] = (batch, times)
        return batch, times

    def observe(self, k: int, accepted: npt.NDArray[np.int64]) -> None:
        """Update the estimate with one step's verification outcomes.

        Parameters
        ----------
        k
            Draft length of the step.
        accepted
            Accepted draft tokens per decoding request (0..k), before any cut at the request's
            end: the verifier sees every draft token's outcome.
        """
        n = accepted.shape[0]
        if k <= 0 or n == 0:
            return
        self.observe_counts(k, float(accepted.sum()), float((accepted < k).sum()))

    def observe_counts(self, k: int, a: float, r: float) -> None:
        """:meth:`observe` from the step's totals: ``a`` accepted draft tokens and ``r``
        rejections (requests with fewer than k accepted) over a non-empty batch."""
        if k <= 0:
            return
        trials = a + r  # draft tokens actually tested (those after a rejection are not)
        decay = 0.5 ** (trials / self.halflife)
        self.acc_w = self.acc_w * decay + a
        self.rej_w = self.rej_w * decay + r
