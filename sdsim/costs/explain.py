"""Where a step's time goes: the calibrated model's step split into its terms.

:func:`explain_steps` prices decode steps of a scenario at a few batch sizes and draft lengths and
returns one row per (batch, k, part): host costs per step, per request and logits row, per
speculative step and per draft pass; the verifier's weight GEMMs, other layer kernels (norms,
rotary, activation, embedding), all-reduce, attention and logits/sampling; the drafter's first
pass and its later passes. The parts sum to the step time :meth:`step` gives (the table says so
in its ``total_ms`` column); ``sdsim costs SCENARIO --explain`` prints it and
:func:`sdsim.plots.explain_figure` stacks it.
"""

from __future__ import annotations

__all__ = ["EXPLAIN_PARTS", "explain_steps"]

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from sdsim.costs.build import build_cost_model
from sdsim.costs.calibrated import CalibratedStepCost
from sdsim.errors import ScenarioError

# (part, group, label, short label) in display order
EXPLAIN_PARTS: tuple[tuple[str, str, str, str], ...] = (
    ("host_step", "host", "host: per step", "host/step"),
    ("verify_host", "host", "host: per request and logits row", "host/request"),
    ("spec_fixed", "host", "host: speculative step (rejection, metadata)", "host/spec"),
    ("draft_host", "host", "host: draft passes", "host/draft"),
    ("verify_gemm", "verifier", "verifier: weight GEMMs", "GEMMs"),
    ("verify_other", "verifier", "verifier: norms, rotary, activation, embedding", "other"),
    ("verify_allreduce", "verifier", "verifier: all-reduce", "all-reduce"),
    ("verify_attention", "verifier", "verifier: attention", "attention"),
    ("verify_logits", "verifier", "verifier: LM head and sampling", "logits"),
    ("draft_first", "drafter", "drafter: first pass (over every verified token)", "draft 1"),
    ("draft_later", "drafter", "drafter: passes 2..k", "draft 2..k"),
)


def _split_dense(ops: Any, tokens: int) -> tuple[float, float, float]:
    """(GEMMs, other kernels, all-reduce) of one forward pass over ``tokens`` rows, from the
    operator costs (the same per-operator times the pass table sums)."""
    if tokens <= 0:
        return 0.0, 0.0, 0.0
    t = np.array([float(tokens)])
    gemm = other = ar = 0.0
    for name, calls in ops.layer_ops:
        v = calls * ops.layers * float(ops.op_vec(name, t)[0])
        if name == "allreduce":
            ar += v
        elif ops.work(name, ops.padded(t)).gemm:
            gemm += v
        else:
            other += v
    for name in (*ops.once_ops, *getattr(ops, "first_ops", ())):
        v = float(ops.op_vec(name, t)[0])
        if ops.work(name, ops.padded(t)).gemm:
            gemm += v
        else:
            other += v
    return gemm, other, ar


def explain_steps(
    scn: Any,
    batches: Sequence[int] | None = None,
    ks: Sequence[int] | None = None,
    context: float | None = None,
) -> pd.DataFrame:
    """Decode steps of ``scn`` split into their terms.

    Parameters
    ----------
    scn
        A scenario whose costs are the calibrated model (``costs.source`` auto or calibrated).
    batches
        Decoding requests per step (default 1, 8, 32, 128 and ``server.max_num_seqs``).
    ks
        Draft lengths (default 0 and ``spec.k``).
    context
        KV tokens per request (default: prompt + output / 2 of the workload's means).

    Returns
    -------
    pandas.DataFrame
        Columns ``batch, k, part, group, label, short, ms, share, total_ms``.

    Raises
    ------
    ScenarioError
        ``costs.source`` is not the calibrated model; a batch below 1 or k below 0.
    """
    model = build_cost_model(scn)
    if not isinstance(model, CalibratedStepCost):
        raise ScenarioError("costs.source", f"--explain splits the calibrated model's step; "
                            f"this scenario uses {scn.costs.resolved_source!r} (use auto or "
                            "calibrated)")
    wl = scn.workload
    ctx = float(wl.prompt_tokens.mean + wl.output_tokens.mean / 2) if context is None else context
    top = int(scn.server.max_num_seqs)
    bs = sorted({b for b in (1, 8, 32, 128, top) if b <= top}) if batches is None else batches
    kk = sorted({0, int(scn.spec.k)}) if ks is None else ks
    if any(int(b) < 1 for b in bs):
        raise ScenarioError("--batches", "batch sizes must be >= 1")
    if any(int(k) < 0 for k in kk):
        raise ScenarioError("--k", "draft lengths must be >= 0")
    rows = []
    for k in kk:
        for b in bs:
            b, k = int(b), int(k)
            dctx = round(b * ctx)
            p = {n: float(v) for n, v in model.parts(b, dctx, k).items()}
            total = float(model.steps(b, dctx, k).total)
            gemm, other, ar = _split_dense(model.vops, b * (k + 1))
            dense = p["verify_dense"]
            # the pass table is a running maximum over token counts: what it adds goes to GEMMs
            gemm += dense - (gemm + other + ar)
            vals = {**p, "verify_gemm": gemm, "verify_other": other, "verify_allreduce": ar}
            for part, group, label, short in EXPLAIN_PARTS:
                ms = vals.get(part, 0.0) * 1e3
                rows.append({"batch": b, "k": k, "part": part, "group": group, "label": label,
                             "short": short, "ms": ms, "share": ms / (total * 1e3),
                             "total_ms": total * 1e3})
    return pd.DataFrame(rows)
