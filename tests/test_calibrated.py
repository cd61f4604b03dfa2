"""The calibrated step-cost model: each term on hand-computed cases, step/steps identity,
monotonicity over the registry, and the shipped calibration against its own fit data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import sdsim
from sdsim.costs.build import build_cost_model
from sdsim.costs.calibrated import (
    CalibratedOps,
    CalibratedStepCost,
    capture_sizes,
    gemm_time,
)
from sdsim.costs.calibration import (
    AllReduceTerms,
    AttentionTerms,
    Calibration,
    GemmTerms,
    ResolvedGPU,
    shipped_calibration,
)
from sdsim.costs.fit import anchor_of, predict_anchors
from sdsim.costs.step import StepShape, step_times
from sdsim.hardware import GPUS, get_gpu
from sdsim.models import MODELS, eagle3_head, eagle_head, resolve_drafter

ROOT = Path(__file__).resolve().parents[1]

GEMM = GemmTerms(memory_eff=0.8, compute_eff=0.5, ridge_dip=0.5, ridge_width=1.0,
                 ridge_shift=0.0, floor_s=1e-6)
ATT = AttentionTerms(decode_memory=0.5, verify_memory=0.25, prefill_compute=0.5, floor_s=2e-6)
AR = AllReduceTerms(latency_s=1e-5, link_eff=0.5)
TERMS = ResolvedGPU("h100-sxm", GEMM, ATT, AR, ())


def _engine(**kw: float) -> object:
    base = shipped_calibration().engine.model_dump()
    base.update(kw)
    return type(shipped_calibration().engine).model_validate(base)


# --------------------------------------------------------------------------- kernel terms


def test_gemm_time_hand_computed() -> None:
    peak, bw = 1e15, 1e12
    # memory-bound far from the ridge: bytes / (bw x 0.8) + floor (the bump is e^-64)
    t = gemm_time(GEMM, 2.0 * 2**-8 * 1e12, 1e9, peak, bw)  # c / a = 2^-8 * 2 * 0.8 / 0.5 ...
    a = 1e9 / (bw * 0.8)
    c = 2.0 * 2**-8 * 1e12 / (peak * 0.5)
    x = math.log2(c / a)
    want = max(a, c) * (1 + 0.5 * math.exp(-(x**2))) + 1e-6
    assert float(t) == pytest.approx(want, rel=1e-12)
    # at the ridge point (c == a) the bump is whole: 1.5 x a + floor
    flops = 1e9 / (bw * 0.8) * peak * 0.5
    assert float(gemm_time(GEMM, flops, 1e9, peak, bw)) == pytest.approx(1.5 * a + 1e-6)
    # compute-bound far above it: c + floor
    big = 2**10 * flops
    assert float(gemm_time(GEMM, big, 1e9, peak, bw)) == pytest.approx(
        big / (peak * 0.5) + 1e-6, rel=1e-12
    )


def test_capture_sizes_and_padding() -> None:
    s = capture_sizes(512).tolist()
    assert s[:5] == [1, 2, 4, 8, 16] and 256 in s and 272 in s and s[-1] == 512
    assert all(b - a == 16 for a, b in zip(s[s.index(256):-1], s[s.index(256) + 1:], strict=True))
    assert capture_sizes(100).tolist()[-1] == 100
    ops = CalibratedOps(MODELS["llama-3.1-8b"], get_gpu("h100-sxm"), 1, "bf16", TERMS,
                        _engine(graph_max_tokens=512))
    assert ops.padded(np.array([1.0, 3, 5, 9, 250, 257, 512, 513, 900])).tolist() == [
        1, 4, 8, 16, 256, 272, 512, 513, 900]


def test_ops_pad_gemms_not_logits_and_eager_floor() -> None:
    ops = CalibratedOps(MODELS["llama-3.1-8b"], get_gpu("h100-sxm"), 1, "bf16", TERMS,
                        _engine(graph_max_tokens=512, eager_launch_s=5e-5))
    # a layer GEMM at 3 tokens runs as the 4-token graph
    w4 = ops.work("qkv", np.array([4.0]))
    assert ops.op("qkv", 3) == pytest.approx(float(gemm_time(GEMM, w4.flops, w4.bytes, ops.peak,
                                                             ops.bw)[0]))
    # the LM head runs on exactly the rows that need logits
    w3 = ops.work("lm_head", np.array([3.0]))
    assert ops.op("lm_head", 3) == pytest.approx(float(gemm_time(GEMM, w3.flops, w3.bytes,
                                                                 ops.peak, ops.bw)[0]))
    # an element-wise kernel above the largest graph waits for an eager launch (50 us here)
    assert ops.op("rope", 600) == pytest.approx(5e-5)
    assert ops.op("rope", 500) < 5e-5


def test_allreduce_latency_floor() -> None:
    gpu = get_gpu("h100-sxm")
    ops = CalibratedOps(MODELS["llama-3.1-70b"], gpu, 4, "bf16", TERMS, _engine())
    t = 16.0
    ring = 2 * 3 / 4 * t * 8192 * 2
    want = 2.5e-6 + 1e-5 + ring / (gpu.link_bytes_per_s * 0.5)
    assert ops.op("allreduce", t) == pytest.approx(want)


def test_attention_decode_verify_prefill() -> None:
    gpu = get_gpu("h100-sxm")
    m = MODELS["llama-3.1-8b"]
    ops = CalibratedOps(m, gpu, 1, "bf16", TERMS, _engine())
    b, kv = 64, 2000.0
    kvd = m.kv_heads * m.head_dim
    per_layer_bytes = b * (2 * kv * kvd * 2 + 2 * 1 * kvd * 2 + 2 * 1 * m.heads * m.head_dim * 2)
    assert ops.decode_attention(b, 1, kv) == pytest.approx(
        m.layers * per_layer_bytes / (gpu.mem_bytes_per_s * 0.5))
    q = 5
    per_layer_q = b * (2 * kv * kvd * 2 + 2 * q * kvd * 2 + 2 * q * m.heads * m.head_dim * 2)
    assert ops.decode_attention(b, q, kv) == pytest.approx(
        m.layers * per_layer_q / (gpu.mem_bytes_per_s * 0.25))
    # prefill of a 4096-token chunk is compute-bound: 4 h d q (q/2) FLOPs per layer
    pf = ops.prefill_attention(1, 4096, 0)
    flops = 4.0 * m.heads * m.head_dim * 4096 * (4096 - 2048)
    assert pf == pytest.approx(m.layers * flops / (gpu.flops_per_s() * 0.5))
    arr = ops.decode_attention_arr(np.array([b, b]), np.array([1, q]), np.array([kv, kv]))
    assert arr.tolist() == [ops.decode_attention(b, 1, kv), ops.decode_attention(b, q, kv)]


# --------------------------------------------------------------------------- step terms


def _model(kind: str = "eagle", draft: str | None = None, **eng: float) -> CalibratedStepCost:
    gpu = get_gpu("h100-sxm")
    target = MODELS["llama-3.1-8b"]
    drafter = resolve_drafter(kind, draft, target)
    e = _engine(**eng)
    v = CalibratedOps(target, gpu, 1, "bf16", TERMS, e)
    d = CalibratedOps(drafter.model, gpu, 1, "bf16", TERMS, e) if drafter.model else None
    return CalibratedStepCost(v, drafter, d, e)


def test_host_terms_hand_computed() -> None:
    m = _model(step_s=1e-3, per_seq_s=2e-5, per_token_s=3e-6,
               spec_step_s={"eagle": 4e-4, "eagle3": 0, "model": 0, "ngram": 0},
               draft_pass_s={"eagle": 5e-5, "eagle3": 0, "model": 0, "ngram": 0},
               piecewise_layer_s=7e-6)
    p = {n: float(v) for n, v in m.parts(16, 16 * 500, 3, 300, 300, 2).items()}
    assert p["host_step"] == 1e-3
    assert p["verify_host"] == pytest.approx(2e-5 * 16 + 3e-6 * 16 * 4)
    assert p["spec_fixed"] == 4e-4
    assert p["draft_host"] == pytest.approx(3 * 5e-5)
    assert p["prefill_host"] == pytest.approx(7e-6 * 32 + 2e-5 * 2)
    st = m.step(StepShape(16, 16 * 500, 3, 300, 300, 2))
    assert st.overhead == 1e-3
    assert st.total == pytest.approx(sum(p.values()))
    # an empty step costs the host's per-step time only
    assert m.step(StepShape(0, 0, 3)) == (1e-3, 0.0, 0.0, 0.0, 1e-3)


def test_drafter_passes_structure() -> None:
    m = _model("eagle")
    d = m.d
    assert d is not None
    b, k, ctx = 8, 4, 8 * 300
    p = m.parts(b, ctx, k)
    # pass 1 runs the head over every verified token (b (k + 1) rows), LM head on b rows
    a1 = m.dops.decode_attention(b, k + 1, ctx / b + k + 1)
    assert float(p["draft_first"]) == pytest.approx(d.dense(b * (k + 1)) + a1 + d.head(b))
    # passes 2..k: one token per request
    a2 = m.dops.decode_attention(b, 1, ctx / b + (k + 2) / 2 + 1)
    assert float(p["draft_later"]) == pytest.approx((k - 1) * (d.dense(b) + a2 + d.head(b)))
    # k = 1 has the first pass only
    assert float(m.parts(b, ctx, 1)["draft_later"]) == 0.0


def test_eagle3_fuses_in_the_first_pass_only() -> None:
    m = _model("eagle3")
    d = m.d
    assert d is not None and d.ops.first_ops == ("eagle3_fc",)
    head = eagle3_head(MODELS["llama-3.1-8b"])
    assert head.vocab == 32000 and head.qkv_in == 2 * head.hidden
    assert head.first_pass_fc == 3 * head.hidden and head.input_fc == 0
    b, k = 4, 3
    p = m.parts(b, b * 200, k)
    fc = d.first(b * (k + 1))
    assert fc > 0
    a1 = m.dops.decode_attention(b, k + 1, 200 + k + 1)
    assert float(p["draft_first"]) == pytest.approx(d.dense(b * (k + 1)) + fc + a1 + d.head(b))
    # its LM head is over the 32k draft vocabulary: cheaper than EAGLE-1's full-vocabulary one
    e1 = _model("eagle")
    assert d.head(b) < e1.d.head(b)  # type: ignore[union-attr]
    # EAGLE-1's fusion runs in every pass
    assert eagle_head(MODELS["llama-3.1-8b"]).input_fc == 2 * 4096


def test_draft_model_first_pass_extra_slot_and_ngram_cpu() -> None:
    m = _model("model", "llama-3.2-1b")
    b, k = 8, 2
    d = m.d
    assert d is not None
    a1 = m.dops.decode_attention(b, k + 2, 300 + k + 1)
    p = m.parts(b, b * 300, k)
    assert float(p["draft_first"]) == pytest.approx(d.dense(b * (k + 1) + b) + a1 + d.head(b))
    ng = _model("ngram", ngram_context_token_s=2e-10)
    p = ng.parts(8, 8000, 4)
    assert float(p["draft_host"]) == pytest.approx(8 * ng.drafter.cpu_s_per_seq + 2e-10 * 8000)
    assert float(p["draft_first"]) == 0.0


# --------------------------------------------------------------------------- whole model


def _monotone(a: np.ndarray, axis: int) -> bool:
    return bool(np.all(np.diff(a, axis=axis) >= -1e-15))


@pytest.mark.parametrize("gpu", sorted(GPUS))
def test_monotone_over_the_registry(gpu: str) -> None:
    """Step time is non-decreasing in batch, context, prefill tokens and k, for every registry
    model with each drafter kind (a draft model: the smallest registry model)."""
    bs = np.array([1, 2, 3, 7, 8, 9, 31, 64, 100, 101, 102, 103, 128, 200, 256, 300, 513])
    ctxs = np.array([0, 1, 100, 1000, 4000, 20000])
    ks = np.arange(0, 9)
    pfs = np.array([0, 1, 16, 255, 256, 511, 512, 513, 2048, 8192])
    for target in sorted(MODELS):
        for drafter in ({"kind": "eagle"}, {"kind": "eagle3"}, {"kind": "ngram"},
                        {"kind": "model", "model": "llama-3.2-1b"}):
            scn = sdsim.scenario.Scenario.model_validate(
                {"hardware": gpu, "target": target, "drafter": drafter,
                 "costs": {"source": "calibrated"}})
            m = build_cost_model(scn)
            B, C, K = np.meshgrid(bs, ctxs, ks, indexing="ij")
            t = step_times(m, B, B * C, K).total
            assert _monotone(t, 0) and _monotone(t, 1) and _monotone(t, 2), (target, drafter)
            B, P, K = np.meshgrid(np.array([0, 1, 8, 64]), pfs, np.array([0, 1, 4]),
                                  indexing="ij")
            t = step_times(m, B, B * 500, K, P, P, np.where(P > 0, 1, 0)).total
            assert _monotone(t, 1), (target, drafter)


def test_calibrated_is_dearer_than_the_roofline_under_load() -> None:
    scn = sdsim.load_scenario(ROOT / "scenarios" / "default.yaml", {"costs.source": "calibrated"})
    cal = build_cost_model(scn)
    roof = build_cost_model(scn.with_overrides({"costs.source": "roofline"}))
    assert type(cal).__name__ == "CalibratedStepCost"
    assert type(roof).__name__ == "KernelStepCost"
    # the calibrated step is dearer, and more so at a large batch
    small = cal.step(StepShape(1, 700, 4)).total / roof.step(StepShape(1, 700, 4)).total
    large = cal.step(StepShape(128, 128 * 700, 4)).total / roof.step(
        StepShape(128, 128 * 700, 4)).total
    assert 1.0 < small < large


def test_overrides_reach_the_model() -> None:
    base = sdsim.load_scenario(None, {"costs.source": "calibrated"})
    m = build_cost_model(base.with_overrides({"costs.calibrated.step_s": 3e-3,
                                              "costs.calibrated.draft_pass_s": 1e-3}))
    assert m.step(StepShape(0, 0, 4)).overhead == 3e-3
    assert float(m.parts(1, 500, 4)["draft_host"]) == pytest.approx(4e-3)
    m2 = build_cost_model(base.with_overrides({"costs.overhead_s": 2e-3}))
    assert m2.step(StepShape(0, 0, 4)).overhead == 2e-3


# --------------------------------------------------------------------------- shipped calibration


def test_shipped_calibration_reproduces_its_fit_data() -> None:
    """Every anchor the shipped calibration was fitted to (and every held-out one) priced again
    from its recorded shape gives the recorded prediction (1e-5: the record rounds the shapes to
    six decimals), and the fitted anchors sit within the stated residuals: each within 5% of its
    measurement, their rms the recorded fit error."""
    cal = shipped_calibration()
    rec = cal.fit
    assert rec is not None and rec.anchors
    anchors = [anchor_of(r) for r in rec.anchors]
    pred = predict_anchors(anchors, cal) * 1e3
    for r, p in zip(rec.anchors, pred, strict=True):
        assert p == pytest.approx(r.predicted_ms, rel=1e-5), r.id
    fit = [r for r in rec.anchors if r.role == "fit"]
    errs = np.array([p / r.measured_ms - 1 for r, p in zip(rec.anchors, pred, strict=True)
                     if r.role == "fit"])
    assert len(fit) >= 10
    assert np.max(np.abs(errs)) <= 0.05
    assert math.sqrt(float(np.mean(errs**2))) == pytest.approx(rec.fit_rms_error, abs=1e-5)


def test_shipped_calibration_is_complete() -> None:
    cal = shipped_calibration()
    assert isinstance(cal, Calibration)
    for g in GPUS:
        r = cal.gpu(g)
        assert r.gemm.memory_eff > 0 and r.attention.decode_memory > 0
    # the measured GPUs have their own curves; the H200 borrows the H100's compute die
    assert not cal.gpu("h100-sxm").borrowed[:1] or "gemm" not in cal.gpu("h100-sxm").borrowed[0]
    assert cal.gpu("h200").gemm == cal.gpu("h100-sxm").gemm
    for term in ("engine.step_s", "gpus.h100-sxm.gemm", "gpus.a100-80gb.gemm",
                 "engine.ngram_context_token_s", "gpus.default.attention"):
        assert term in cal.sources, term
