"""Fit a GPU's kernel terms to measured kernels: the GEMM efficiency curve and all-reduce.

GEMMs: Vidur's ``mlp.csv`` files (``profiling/compute/<gpu>/<org>/<model>/mlp.csv``: one layer's
QKV, output, gate-up and down projections at 1 to 4096 (H100) or 32768 (A100) tokens and tensor
parallel degrees 1 to 8, median of repeated CUDA-event timings) or a profile bundle measured by
``sdsim bench``. The curve (:class:`~sdsim.costs.calibration.GemmTerms`) is fitted by least
squares on the log of each layer's GEMM time (the four projections summed, the unit a step
pays), so one badly shaped small matrix does not pull the curve; the report gives the
per-operator and per-layer errors by token range.

All-reduce: Vidur's ``profiling/network/<topology>/all_reduce.csv`` (``size`` bytes, world size,
milliseconds): ``t = latency + 2 (w - 1) / w x bytes / (link x link_eff)`` by least absolute
deviations (the timings have heavy upper tails) on messages up to 16 MB, the range a decode
step's activations (tokens x hidden x 2 bytes) fall in.
"""

from __future__ import annotations

__all__ = [
    "VIDUR_GPUS",
    "fit_allreduce",
    "fit_gemm",
    "gemm_rows_from_bundle",
    "gemm_rows_from_vidur",
]

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.optimize import least_squares, linprog

from sdsim.costs.calibrated import gemm_time
from sdsim.costs.calibration import AllReduceTerms, GemmTerms
from sdsim.costs.profile import ProfileBundle, read_vidur_all_reduce, read_vidur_mlp
from sdsim.errors import ScenarioError
from sdsim.hardware import GPUSpec

# Vidur's device folders -> registry GPUs (a40 has no registry entry, so it is not fitted)
VIDUR_GPUS = {"h100": "h100-sxm", "a100": "a100-80gb"}

_GEMM_OPS = ("qkv", "o", "gate_up", "down")


def _shapes(spec: dict[str, Any], tp: int) -> dict[str, tuple[float, float]]:
    """(K in, N out) per GEMM of one layer at tensor-parallel degree ``tp``."""
    h = float(spec["hidden"])
    heads, kvh, hd = float(spec["heads"]), float(spec["kv_heads"]), float(spec["head_dim"])
    ffn = float(spec["ffn"])
    mats = 2.0 if spec.get("gated_mlp", True) else 1.0
    return {
        "qkv": (h, (heads + 2 * kvh) * hd / tp),
        "o": (heads * hd / tp, h),
        "gate_up": (h, mats * ffn / tp),
        "down": (ffn / tp, h),
    }


def _rows(bundle: ProfileBundle, gpu: str, label: str) -> pd.DataFrame:
    out = []
    d = bundle.dense
    for model, spec in bundle.models.items():
        sub = d[(d["model"].astype(str) == model) & d["op"].isin(_GEMM_OPS)]
        for key, g in sub.groupby(["tp", "op"]):
            tp, op = int(str(key[0])), str(key[1])
            k_in, n_out = _shapes(spec, tp)[op]
            out.append(pd.DataFrame({
                "gpu": gpu, "source": label, "model": model, "tp": tp, "op": op,
                "M": g["tokens"].astype(float).to_numpy(), "K": k_in, "N": n_out,
                "t": g["median_us"].astype(float).to_numpy() * 1e-6,
            }))
    if not out:
        return pd.DataFrame(columns=["gpu", "source", "model", "tp", "op", "M", "K", "N", "t"])
    return pd.concat(out, ignore_index=True)


def gemm_rows_from_vidur(path: str | Path) -> pd.DataFrame:
    """GEMM timings of one Vidur ``mlp.csv`` as rows ``gpu, source, model, tp, op, M, K, N, t``
    (``gpu`` the registry name from the device folder; empty when it is not in the registry)."""
    p = Path(path)
    device = p.parent.parent.parent.name
    gpu = VIDUR_GPUS.get(device)
    if gpu is None:
        return _rows(ProfileBundle(meta={"models": {}}, dense=pd.DataFrame()), "", str(p))
    return _rows(read_vidur_mlp(p), gpu, f"vidur/{device}/{p.parent.name}")


def gemm_rows_from_bundle(bundle: ProfileBundle, gpu: str) -> pd.DataFrame:
    """GEMM timings of a profile bundle (``sdsim bench``) measured on registry GPU ``gpu``."""
    return _rows(bundle, gpu, str(bundle.path or "bundle"))


def fit_gemm(rows: pd.DataFrame, gpu: GPUSpec) -> tuple[GemmTerms, dict[str, Any]]:
    """Fit the GEMM curve of one GPU to its measured GEMM rows.

    Returns
    -------
    (GemmTerms, report)
        The report holds ``rows``, ``layers``, ``rms_log_op``, ``rms_log_layer`` and
        ``layer_error_by_tokens`` (median relative error of a layer's GEMMs per token range).

    Raises
    ------
    ScenarioError
        Fewer than 12 layer measurements, or token counts that do not span both sides of the
        GPU's ridge point (the curve is not identified).
    """
    r = rows.reset_index(drop=True)
    peak, bw = gpu.flops_per_s("bf16"), gpu.mem_bytes_per_s
    key = r.groupby(["source", "model", "tp", "M"]).ngroup().to_numpy()
    n_layers = int(key.max()) + 1 if len(r) else 0
    if n_layers < 12:
        raise ScenarioError("gemm", f"{gpu.name}: {n_layers} layer timings; need >= 12 to fit "
                            "the GEMM curve")
    m, kk, nn = (r[c].to_numpy(dtype=np.float64) for c in ("M", "K", "N"))
    flops = 2.0 * m * kk * nn
    nbytes = 2.0 * (kk * nn + m * (kk + nn))
    ratio = (flops / peak) / (nbytes / bw)
    if not (ratio.min() < 0.25 and ratio.max() > 4.0):
        raise ScenarioError("gemm", f"{gpu.name}: the token counts do not reach both sides of "
                            "the ridge point (memory- and compute-bound); the GEMM curve is not "
                            "identified")
    t_layer = np.bincount(key, weights=r["t"].to_numpy(dtype=np.float64))

    def curve(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        g = GemmTerms(memory_eff=x[0], compute_eff=x[1], ridge_dip=x[2], ridge_width=x[3],
                      ridge_shift=x[4], floor_s=x[5] * 1e-6)
        return gemm_time(g, flops, nbytes, peak, bw)

    def resid(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return np.log(np.bincount(key, weights=curve(x), minlength=n_layers)) - np.log(t_layer)

    fit = least_squares(resid, [0.8, 0.75, 0.5, 1.5, 0.0, 2.0],
                        bounds=([0.1, 0.1, 0.0, 0.3, -3.0, 0.0], [1.5, 1.5, 3.0, 6.0, 3.0, 50.0]),
                        x_scale=[0.1, 0.1, 0.1, 0.5, 0.5, 1.0], method="trf")
    x = fit.x
    terms = GemmTerms(memory_eff=round(float(x[0]), 4), compute_eff=round(float(x[1]), 4),
                      ridge_dip=round(float(x[2]), 4), ridge_width=round(float(x[3]), 4),
                      ridge_shift=round(float(x[4]), 4), floor_s=round(float(x[5]), 3) * 1e-6)
    pred_op = gemm_time(terms, flops, nbytes, peak, bw)
    e_op = np.log(pred_op) - np.log(r["t"].to_numpy(dtype=np.float64))
    pred_l = np.bincount(key, weights=pred_op, minlength=n_layers)
    e_l = pred_l / t_layer - 1.0
    lay = r.groupby(["source", "model", "tp", "M"]).size().reset_index()
    bins = [0, 2, 16, 64, 256, 1024, 4096, np.inf]
    labels = ["1", "2-15", "16-63", "64-255", "256-1023", "1024-4095", ">=4096"]
    lay["err"] = e_l
    lay["range"] = pd.cut(lay["M"], bins, right=False, labels=labels)
    by = lay.groupby("range", observed=True)["err"].median()
    report = {
        "rows": len(r),
        "layers": n_layers,
        "rms_log_op": float(np.sqrt(np.mean(e_op**2))),
        "rms_log_layer": float(np.sqrt(np.mean(np.log1p(e_l) ** 2))),
        "layer_error_by_tokens": {str(k): float(v) for k, v in by.items()},
        "sources": sorted(set(r["source"].astype(str))),
    }
    return terms, report


def fit_allreduce(path: str | Path, gpu: GPUSpec) -> tuple[AllReduceTerms, dict[str, Any]]:
    """Fit the all-reduce latency floor and link efficiency to Vidur's ``all_reduce.csv``.

    Raises
    ------
    ScenarioError
        Not an all_reduce.csv, or fewer than 8 messages up to 16 MB.
    """
    df = read_vidur_all_reduce(path)
    df = df[(df["bytes"] <= 16 * 2**20) & (df["world"] >= 2)]
    if len(df) < 8:
        raise ScenarioError("allreduce", f"{path}: fewer than 8 messages up to 16 MB")
    w = df["world"].to_numpy(dtype=np.float64)
    x = 2.0 * (w - 1.0) / w * df["bytes"].to_numpy(dtype=np.float64) / gpu.link_bytes_per_s
    y = df["median_us"].to_numpy(dtype=np.float64) * 1e-6
    # least absolute deviations as a linear programme: min sum(u + v), y = a + b x + u - v
    n = len(y)
    c = np.concatenate([[0.0, 0.0], np.ones(2 * n)])
    a_eq = np.hstack([np.ones((n, 1)), x[:, None], np.eye(n), -np.eye(n)])
    res = linprog(c, A_eq=a_eq, b_eq=y, bounds=[(0, None)] * (2 + 2 * n), method="highs")
    lat, slope = float(res.x[0]), float(res.x[1])
    eff = 1.0 / slope if slope > 0 else 1.0
    terms = AllReduceTerms(latency_s=round(lat, 7), link_eff=round(min(max(eff, 0.01), 1.0), 4))
    pred = terms.latency_s + x / terms.link_eff
    report = {
        "messages": n,
        "worlds": sorted(int(v) for v in set(w)),
        "median_abs_rel_error": float(np.median(np.abs(pred / y - 1.0))),
        "source": str(path),
    }
    return terms, report
