"""The price cache: decode-only step prices at a fixed draft length, read by the compiled step.

A run of steps ahead of the SimPy clock (:func:`sdsim.engine.step.advance`) cannot call the cost
model (Python); decode-only steps, most of a run, are priced from this cache instead: per batch
size, the cost model's prices over a range of context totals, from the costs API's vectorised
:func:`~sdsim.costs.step.step_times` (bit-identical to ``cost.step``). It is filled lazily: a
batch the cache has no price for goes back to Python, which prices it with ``cost.step`` and
extends the cache around it (doubling the range per batch size), so each batch size is priced a
few times per simulation.
"""

from __future__ import annotations

__all__ = ["DecodePrices", "cached_price"]

from typing import Any

import numpy as np
import numpy.typing as npt

from sdsim._jit import jit
from sdsim.costs.step import StepCostModel, step_times
from sdsim.engine.schema import PRICE, PRICE_SPAN, names


@jit(callee=True)
def cached_price(prices: Any, spans: Any, decodes: int, context: int) -> int:
    """Row of ``prices`` holding the decode-only step of ``decodes`` requests at ``context``
    tokens in total, or -1 when the cache has none."""
    if decodes >= spans.shape[0]:
        return -1
    span = spans[decodes]
    j = context - span["first"]
    if j < 0 or j >= span["count"]:
        return -1
    return int(span["offset"] + j)


class DecodePrices:
    """Decode-only step prices at draft length ``k``: ``rows`` (PRICE records) and ``spans``
    (PRICE_SPAN per batch size: where its prices lie and from which context total).

    Parameters
    ----------
    cost
        The step-cost model.
    k
        The draft length (fixed).
    """

    def __init__(self, cost: StepCostModel, k: int) -> None:
        self.cost = cost
        self.k = k
        self.rows = np.zeros(1 << 12, dtype=PRICE)
        self.spans = np.zeros(1, dtype=PRICE_SPAN)
        self._top = 0  # spans are appended; a grown span is written anew at the end

    def extend(self, decodes: int, context: int) -> None:
        """Price batches of ``decodes`` requests around context total ``context``."""
        reach = decodes * (self.k + 1) * 16 + 256
        if decodes >= self.spans.shape[0]:
            spans = np.zeros(max(decodes + 1, 2 * self.spans.shape[0]), dtype=PRICE_SPAN)
            spans[: self.spans.shape[0]] = self.spans
            self.spans = spans
        span = self.spans[decodes]
        off, lo0, n0 = int(span["offset"]), int(span["first"]), int(span["count"])
        # (copies go through float64 views: numpy copies record arrays field by field)
        if n0 == 0:
            lo = max(0, context - reach)
            vals = self._price(decodes, lo, context + reach)
        else:
            vals = _floats(self.rows)[off : off + n0]
            hi0 = lo0 + n0
            grow = max(reach, n0)
            lo = lo0
            if context < lo0:
                lo = max(0, min(context - reach, lo0 - grow))
                vals = np.concatenate([self._price(decodes, lo, lo0), vals])
            if context >= hi0:
                hi = max(context + reach, hi0 + grow)
                vals = np.concatenate([vals, self._price(decodes, hi0, hi)])
        n = vals.shape[0]
        if self._top + n > self.rows.shape[0]:
            size = self.rows.shape[0]
            while size < 2 * (self._top + n):
                size *= 2
            rows = np.zeros(size, dtype=PRICE)
            _floats(rows)[: self._top] = _floats(self.rows)[: self._top]
            self.rows = rows
        _floats(self.rows)[self._top : self._top + n] = vals
        self.spans[decodes] = (self._top, lo, n)
        self._top += n

    def _price(self, decodes: int, lo: int, hi: int) -> npt.NDArray[np.float64]:
        """Prices of contexts ``lo .. hi - 1`` as rows of PRICE's fields."""
        st = step_times(self.cost, decodes, np.arange(lo, hi, dtype=np.int64), self.k)
        out = np.empty((hi - lo, len(_FIELDS)))
        for i, name in enumerate(_FIELDS):
            out[:, i] = getattr(st, name)
        return out


_FIELDS = names(PRICE)


def _floats(rows: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """PRICE records as rows of float64 (every field is one)."""
    return rows.view(np.float64).reshape(rows.shape[0], len(_FIELDS))
