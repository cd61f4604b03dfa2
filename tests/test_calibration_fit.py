"""Calibration fitting: measurements to anchors, kernel fits, the engine-term fit, its refusals,
and calibration files that are malformed."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import sdsim
from sdsim.costs.anchors import normalise_drafter, normalise_gpu, normalise_model, read_measurements
from sdsim.costs.calibrated import gemm_time
from sdsim.costs.calibration import (
    GemmTerms,
    load_calibration,
    shipped_calibration,
    write_calibration,
)
from sdsim.costs.fit import CalibrationData, collect_data, fit_calibration, predict_anchors
from sdsim.costs.kernelfit import fit_allreduce, fit_gemm
from sdsim.errors import ScenarioError
from sdsim.hardware import get_gpu

ROOT = Path(__file__).resolve().parents[1]
COLS = ("source,gpu,engine,engine_version,target,drafter,tp,dtype,dataset,prompt_tokens,"
        "output_tokens,concurrency,request_rate,k,acceptance_length,metric,value,notes")


def _csv(tmp_path: Path, rows: list[str], name: str = "m.csv") -> Path:
    p = tmp_path / name
    p.write_text(COLS + "\n" + "\n".join(rows) + "\n")
    return p


# --------------------------------------------------------------------------- anchors


def test_names() -> None:
    assert normalise_gpu("NVIDIA H100 80GB HBM3") == "h100-sxm"
    assert normalise_gpu("A100-SXM4-80GB") == "a100-80gb"
    assert normalise_gpu("TPU v5e") is None
    assert normalise_model("meta-llama/Llama-3.1-8B-Instruct") == "llama-3.1-8b"
    assert normalise_model("llama-3-70b") == "llama-3.1-70b"
    assert normalise_model("Qwen/Qwen3-8B") == "qwen3-8b"
    assert normalise_drafter("EAGLE-3") == ("eagle3", None)
    assert normalise_drafter("eagle-1") == ("eagle", None)
    assert normalise_drafter("model:llama-3.2-1b") == ("model", "llama-3.2-1b")
    assert normalise_drafter("") == ("none", None)
    assert normalise_drafter("medusa") is None


def test_conversions_hand_computed(tmp_path: Path) -> None:
    p = _csv(tmp_path, [
        # TPOT x acceptance length; MT-Bench lengths from the dataset table
        "a,h100-sxm,vllm,,llama-3.1-8b,eagle-3,1,bf16,mt-bench,,,1,,3,2.5,tpot_ms,4.0,fit: x",
        # a closed-loop throughput at concurrency 4: steps = 1 + 99 / 1 = 100 per request
        "b,h100-sxm,vllm,,llama-3.1-8b,none,1,bf16,,300,100,4,,0,,output_tok_per_s,400,fit: y",
        # a request rate: Little's law gives the requests in the system
        "c,a100-80gb,vllm,,llama-3.1-8b,none,1,bf16,,300,101,,2.0,0,,tpot_ms,20,check: z",
        # the same run's throughput is not used twice
        "c,a100-80gb,vllm,,llama-3.1-8b,none,1,bf16,,300,101,,2.0,0,,output_tok_per_s,9,check: z",
        "d,h100-sxm,sglang,,llama-3.1-8b,none,1,bf16,,300,100,4,,0,,tpot_ms,7,fit: w",
        "e,h100-sxm,vllm,,llama-3.1-8b,none,1,bf16,,300,100,4,,0,,ttft_ms,70,fit: w",
    ])
    a = read_measurements(p)
    assert a[0].step_s == pytest.approx(0.004 * 2.5) and a[0].role == "fit"
    assert a[0].prompt_tokens == 90 and a[0].context == 90 + 150
    assert a[0].batch == 1 and a[0].prefill_per_step == 0
    assert a[1].step_s == pytest.approx(4 * 100 / (400 * 100))
    assert a[1].batch == pytest.approx(4 * 0.99) and a[1].prefill_per_step == pytest.approx(0.04)
    n = 1 + 100
    assert a[2].role == "held-out"
    assert a[2].step_s == pytest.approx(0.020)
    conc = 2.0 * n * 0.020
    assert a[2].batch == pytest.approx(1 + (conc - 1) * (1 - 1 / n))
    assert a[3].role == "unused" and "tpot_ms" in a[3].note
    assert a[4].role == "unused" and "sglang" in a[4].note
    assert a[5].role == "unused" and "queueing" in a[5].note


def test_step_table_needs_a_scenario(tmp_path: Path) -> None:
    p = tmp_path / "steps.csv"
    p.write_text("batch,context,k,step_ms\n1,500,0,7.1\n8,500,0,7.4\n")
    with pytest.raises(ScenarioError, match="needs a scenario"):
        read_measurements(p)
    scn = sdsim.load_scenario(None)
    a = read_measurements(p, scn)
    assert [x.batch for x in a] == [1.0, 8.0] and a[1].step_s == pytest.approx(0.0074)
    bad = tmp_path / "bad.csv"
    bad.write_text("batch,context,k,step_ms\n1,500,0,-1\n")
    with pytest.raises(ScenarioError, match="step_ms"):
        read_measurements(bad, scn)
    odd = tmp_path / "odd.csv"
    odd.write_text("x,y\n1,2\n")
    with pytest.raises(ScenarioError, match="unknown measurement format"):
        read_measurements(odd)


# --------------------------------------------------------------------------- kernel fits


def test_gemm_fit_recovers_a_known_curve() -> None:
    """Timings made by a known curve (no noise) are fitted back to it: the fit is an exact
    least-squares problem then, so 1% on each term is a loose bound on the optimiser."""
    gpu = get_gpu("h100-sxm")
    true = GemmTerms(memory_eff=0.9, compute_eff=0.7, ridge_dip=0.5, ridge_width=1.4,
                     ridge_shift=0.1, floor_s=5e-6)
    rows = []
    for model, (k, n) in {"a": (4096, 6144), "b": (8192, 10240), "c": (2048, 8192)}.items():
        for m in 2 ** np.arange(0, 14):
            rows.append({"gpu": gpu.name, "source": "synthetic", "model": model, "tp": 1,
                         "op": "qkv", "M": float(m), "K": k, "N": n})
    df = pd.DataFrame(rows)
    flops = 2 * df.M * df.K * df.N
    nbytes = 2 * (df.K * df.N + df.M * (df.K + df.N))
    df["t"] = gemm_time(true, flops, nbytes, gpu.flops_per_s(), gpu.mem_bytes_per_s)
    got, rep = fit_gemm(df, gpu)
    for name in ("memory_eff", "compute_eff", "ridge_dip", "ridge_width"):
        assert getattr(got, name) == pytest.approx(getattr(true, name), rel=0.01), name
    assert rep["rms_log_layer"] < 1e-3
    with pytest.raises(ScenarioError, match="need >= 12"):
        fit_gemm(df.iloc[:5], gpu)
    with pytest.raises(ScenarioError, match="ridge point"):
        fit_gemm(df[df.M <= 8], gpu)


def test_allreduce_fit_hand_made(tmp_path: Path) -> None:
    gpu = get_gpu("h100-sxm")
    sizes = np.array([2**i for i in range(11, 24)], dtype=float)
    rows = []
    for w in (2, 4, 8):
        t = 20e-6 + 2 * (w - 1) / w * sizes / (gpu.link_bytes_per_s * 0.8)
        for s, v in zip(sizes, t, strict=True):
            rows.append({"time_stats.all_reduce.median": v * 1e3, "num_workers": w, "size": s})
    p = tmp_path / "all_reduce.csv"
    pd.DataFrame(rows).to_csv(p)
    got, _ = fit_allreduce(p, gpu)
    assert got.latency_s == pytest.approx(20e-6, rel=1e-3)
    assert got.link_eff == pytest.approx(0.8, rel=1e-3)


# --------------------------------------------------------------------------- engine-term fit


def _anchors_csv(tmp_path: Path, terms: dict[str, float]) -> tuple[Path, list[str]]:
    """Measurements made by the shipped model with known engine terms: plain and EAGLE-1 at
    k = 2..5 on an H100, at concurrency 1, 2 and 8."""
    cal = shipped_calibration()
    from sdsim.costs.fit import set_term

    for t, v in terms.items():
        cal = set_term(cal, t, v)
    rows = []
    for conc in (1, 2, 8):
        for k in (0, 2, 3, 4, 5):
            dr = "none" if k == 0 else "eagle-1"
            rows.append(f"s,h100-sxm,vllm,,llama-3.1-8b,{dr},1,bf16,,200,300,{conc},,{k},"
                        f"{1.0 if k == 0 else 2.0},tpot_ms,1.0,fit: synthetic")
    p = _csv(tmp_path, rows)
    anchors = read_measurements(p)
    steps = predict_anchors(anchors, cal)
    vals = [s * 1e3 / a.acceptance_length for s, a in zip(steps, anchors, strict=True)]
    lines = [r.rsplit(",", 2)[0] + f",{float(v)!r},fit: synthetic" for r, v in zip(rows, vals,
                                                                             strict=True)]
    return _csv(tmp_path, lines, "made.csv"), list(terms)


def test_engine_fit_recovers_known_terms(tmp_path: Path) -> None:
    """Anchors priced by the model itself with known terms are fitted back to them: the model
    is linear in these terms, so the least-squares solution is exact (up to 4 significant
    digits of rounding in the fit and 17 in the CSV)."""
    want = {"step_s": 1.7e-3, "per_seq_s": 3.0e-5, "spec_step_s.eagle": 8e-4,
            "draft_pass_s.eagle": 2.5e-4}
    p, terms = _anchors_csv(tmp_path, want)
    fit = fit_calibration(collect_data([p]), shipped_calibration(), terms, command="test")
    for t, v in want.items():
        assert fit.terms[t] == pytest.approx(v, rel=1e-3), t
    assert fit.fit_rms_error < 1e-3
    assert math.isnan(fit.held_out_rms_error)
    # the written file reads back the same
    out = write_calibration(fit.calibration, tmp_path / "cal.yaml")
    back = load_calibration(out)
    assert back.engine == fit.calibration.engine and back.fit is not None
    scn = sdsim.load_scenario(None, {"costs.source": "calibrated", "costs.calibration": str(out)})
    from sdsim.costs.build import build_cost_model
    from sdsim.costs.step import StepShape

    assert build_cost_model(scn).step(StepShape(0, 0, 4)).overhead == pytest.approx(1.7e-3)


def test_fit_refuses_terms_the_data_cannot_identify(tmp_path: Path) -> None:
    p, _ = _anchors_csv(tmp_path, {})
    data = collect_data([p])
    base = shipped_calibration()
    plain = CalibrationData(anchors=[a for a in data.anchors if a.k == 0])
    with pytest.raises(ScenarioError) as e:
        fit_calibration(plain, base, ["step_s", "per_seq_s", "per_token_s"], command="t")
    # without speculation a request has one logits row: per-row and per-request costs coincide
    assert e.value.field in ("per_token_s", "per_seq_s")
    assert "cannot identify" in str(e.value)
    # with k varying at batch 8 they separate
    fit_calibration(data, base, ["step_s", "per_seq_s", "per_token_s"], command="t")
    with pytest.raises(ScenarioError, match="no fitted anchor depends") as e:
        fit_calibration(data, base, ["step_s", "draft_pass_s.eagle3"], command="t")
    assert e.value.field == "draft_pass_s.eagle3"
    with pytest.raises(ScenarioError, match="unknown term"):
        fit_calibration(data, base, ["warp_s"], command="t")
    few = collect_data([_csv(tmp_path, [
        "s,h100-sxm,vllm,,llama-3.1-8b,none,1,bf16,,200,300,1,,0,1,tpot_ms,7.0,fit: one"],
        "few.csv")])
    with pytest.raises(ScenarioError, match="need more anchors than terms"):
        fit_calibration(few, base, ["step_s"], command="t")


def test_held_out_sources_are_priced_not_fitted(tmp_path: Path) -> None:
    p, _ = _anchors_csv(tmp_path, {"step_s": 1.5e-3})
    with pytest.raises(ScenarioError, match="0 fitted anchors"):
        # every anchor has source "s": holding it out leaves nothing to fit
        fit_calibration(collect_data([p]), shipped_calibration(), ["step_s"], held_out=["s"],
                        command="t")
    data = collect_data([p])
    data.anchors = [a.with_role("held-out") if a.batch > 1.5 else a for a in data.anchors]
    fit2 = fit_calibration(data, shipped_calibration(), ["step_s"], command="t")
    assert fit2.terms["step_s"] == pytest.approx(1.5e-3, rel=1e-3)
    assert (fit2.anchors["role"] == "held-out").sum() == 10
    assert fit2.held_out_rms_error < 1e-3


def test_collect_data_rejects_unknown_paths(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="no such file"):
        collect_data([tmp_path / "missing"])
    odd = tmp_path / "notes.txt"
    odd.write_text("x")
    with pytest.raises(ScenarioError, match="not a measurement CSV"):
        collect_data([odd])
    assert isinstance(collect_data([tmp_path]), CalibrationData)


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "vidur").is_dir(),
                    reason="../shared/data absent")
def test_shipped_calibration_refits_from_its_data() -> None:
    """The fit command recorded in the shipped file, run again on the same data, gives the same
    terms (the fit is deterministic: fixed starting point, no sampling)."""
    cal = shipped_calibration()
    rec = cal.fit
    assert rec is not None
    data = collect_data([ROOT / "../shared/data/vidur", ROOT / "sdsim/data/calibration"])
    base = load_calibration(ROOT / "sdsim/data/calibration/priors.yaml")
    fit = fit_calibration(data, base, rec.terms, held_out=rec.held_out, command=rec.command)
    assert fit.calibration.engine == cal.engine
    for g in ("h100-sxm", "a100-80gb", "default"):
        assert fit.calibration.gpu(g) == cal.gpu(g), g


# --------------------------------------------------------------------------- bad files


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d["engine"].update(step_s=-1), "engine.step_s"),
        (lambda d: d["engine"].pop("per_seq_s"), "engine.per_seq_s"),
        (lambda d: d["engine"].update(warp_s=1), "engine.warp_s"),
        (lambda d: d["gpus"]["h100-sxm"]["gemm"].update(memory_eff=0), "memory_eff"),
        (lambda d: d["gpus"].update(h200={"like": "nowhere"}), "like"),
        (lambda d: d.update(format="other/1"), "format"),
        (lambda d: d["gpus"].pop("default"), "default"),
    ],
)
def test_malformed_calibration_file(tmp_path: Path, edit: object, field: str) -> None:
    import yaml

    data = yaml.safe_load((ROOT / "sdsim/data/calibration/shipped.yaml").read_text())
    edit(data)  # type: ignore[operator]
    p = tmp_path / "cal.yaml"
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(ScenarioError) as e:
        load_calibration(p)
    msg = str(e.value)
    assert msg.startswith("costs.calibration: ") and "\n" not in msg and field in msg
    scn = sdsim.load_scenario(None, {"costs.source": "calibrated", "costs.calibration": str(p)})
    from sdsim.costs.build import build_cost_model

    with pytest.raises(ScenarioError, match=r"costs\.calibration"):
        build_cost_model(scn)


# --------------------------------------------------------------------------- command line


def _exit2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    from sdsim.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


def test_cli_calibrate_and_explain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from sdsim.cli import main

    p, _ = _anchors_csv(tmp_path, {"step_s": 1.6e-3, "per_seq_s": 2e-5})
    out = tmp_path / "mine.yaml"
    main(["calibrate", str(p), "--terms", "step_s,per_seq_s", "--out", str(out)])
    text = capsys.readouterr().out
    assert "wrote" in text and "fit rms error" in text
    assert load_calibration(out).engine.step_s == pytest.approx(1.6e-3, rel=1e-3)
    default = str(ROOT / "scenarios/default.yaml")
    main(["costs", default, "--explain", "--json", "--batch", "1", "--batch", "64", "--k", "4",
          "--set", f"costs.calibration={out}", "--plot", str(tmp_path / "e.png")])
    data = json.loads(capsys.readouterr().out)
    rows = pd.DataFrame(data["rows"])
    sums = rows.groupby("batch").agg(ms=("ms", "sum"), total=("total_ms", "first"))
    assert np.allclose(sums["ms"], sums["total"]) and (tmp_path / "e.png").is_file()
    assert rows[rows.part == "host_step"]["ms"].iloc[0] == pytest.approx(1.6)
    # refusals: one line naming the term or the option
    line = _exit2(["calibrate", str(p), "--terms", "step_s,draft_pass_s.eagle3", "--out",
                   str(out)], capsys)
    assert line.startswith("error: draft_pass_s.eagle3:")
    assert "--k" in _exit2(["costs", default, "--k", "3"], capsys)
    assert "costs.source" in _exit2(["costs", default, "--explain", "--set",
                                     "costs.source=linear"], capsys)
    bad = tmp_path / "bad.yaml"
    bad.write_text(out.read_text().replace("step_s: 0.0016", "step_s: -1"))
    line = _exit2(["run", default, "--set", f"costs.calibration={bad}", "--summary-only"], capsys)
    assert "costs.calibration" in line and "step_s" in line


def test_reports_become_anchors() -> None:
    """A GuideLLM report: one anchor per benchmark (its mean concurrency, lengths and TPOT x the
    scenario's expected tokens per step); `sdsim calibrate REPORT --scenario S` fits from them."""
    scn = sdsim.load_scenario(None, {"spec.k": 0})
    data = collect_data([ROOT / "tests/fixtures/guidellm_small.json"], scn)
    assert len(data.anchors) == 2
    a = data.anchors[1]
    assert a.metric == "tpot_ms" and a.step_s == pytest.approx(0.09375)
    assert a.batch > 1 and a.role == "fit"
    fit = fit_calibration(data, shipped_calibration(), ["step_s"], command="t")
    assert fit.terms["step_s"] > 0
    with pytest.raises(ScenarioError, match="needs --scenario"):
        collect_data([ROOT / "tests/fixtures/guidellm_small.json"])


def test_profile_bundle_feeds_the_gemm_fit_of_its_gpu() -> None:
    """A bundle measured by `sdsim bench` is read as GEMM timings of the scenario's GPU (here an
    inline spec sheet); the committed quick CPU bundle has 5 layer timings, too few for the
    curve, and the fit says so in one line naming the term."""
    scn = sdsim.load_scenario(None, {
        "target": "llama-3.2-1b",
        "hardware": {"name": "epyc", "bf16_tflops": 1.0, "hbm_gb": 64, "hbm_tbps": 0.05},
    })
    data = collect_data([ROOT / "profiles/cpu-numpy-llama-3.2-1b"], scn)
    assert set(data.gemm_rows["gpu"]) == {"epyc"} and "epyc" in data.gpu_specs
    with pytest.raises(ScenarioError, match="need >= 12") as e:
        fit_calibration(data, shipped_calibration(), [], command="t")
    assert e.value.field == "gemm"
