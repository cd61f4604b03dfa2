"""Hostile inputs, one test (or a few) per case: each must exit 2 naming the field, or be handled
correctly, never hang, print a traceback, lose or mix outputs, resume stale results or give
silently wrong numbers.

The numbers in the test names and section rules are the rows of `notes/testing.md`'s table of
hostile inputs (what each did without its check, and what it does with it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from sdsim import ScenarioError, load_scenario
from sdsim.cli import main
from tests.conftest import ROOT
from tests.test_bad_input import one_error_line

DEFAULT = str(ROOT / "scenarios/default.yaml")
SMALL = ["--set", "workload.num_requests=50", "--set", "warmup_requests=5"]
GUIDELLM = ROOT / "tests/fixtures/guidellm_small.json"
VLLM = ROOT / "tests/fixtures/vllm_small.json"


def no_simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a command simulates: the refusal must come before any simulation."""

    def refuse(*a: Any, **k: Any) -> Any:
        raise AssertionError("simulated before checking the input")

    import sdsim.analytic.validation as validation
    import sdsim.cli.run as run
    import sdsim.reports.compare as compare

    monkeypatch.setattr(run, "simulate", refuse)
    monkeypatch.setattr(validation, "simulate", refuse, raising=False)
    monkeypatch.setattr(compare, "simulate", refuse, raising=False)


# --------------------------------------------------------------------------- 1: alias bomb


def _bomb(leaf: str) -> str:
    """Ten nested anchors of ten aliases each: ~500 bytes of YAML that stand for 10**10 values."""
    nested = f"&a0 [{', '.join([leaf] * 10)}]"
    for i in range(1, 10):
        nested = f"&a{i} [" + ", ".join([nested] + [f"*a{i - 1}"] * 9) + "]"
    return nested


def test_1_yaml_alias_bomb_is_refused_in_bounded_time_and_memory(tmp_path: Path) -> None:
    # A subprocess with a memory cap and a timeout: before the fix the error message's repr()
    # walked all 10**10 values (1.9 GB and no end).
    files = {
        "name": tmp_path / "name.yaml",
        "acceptance.alpha": tmp_path / "alpha.yaml",
    }
    files["name"].write_text(f"name: {_bomb('x')}\n")
    files["acceptance.alpha"].write_text(f"acceptance:\n  alpha: {_bomb('0.5')}\n")
    assert all(len(f.read_text()) < 600 for f in files.values())
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
        "from sdsim import ScenarioError, load_scenario\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        load_scenario(path)\n"
        "    except ScenarioError as exc:\n"
        "        print(exc.field)\n"
    )
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-c", code, *map(str, files.values())],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split() == list(files), p.stdout
    assert time.monotonic() - t0 < 60


def test_1_deep_nesting_is_refused() -> None:
    from sdsim.inputs import load_json, load_yaml
    from sdsim.scenario import parse_set_options

    with pytest.raises(ScenarioError, match="nested deeper than 64") as exc:
        parse_set_options(["description=" + "[" * 100 + "]" * 100])
    assert exc.value.field == "description"
    with pytest.raises(ScenarioError, match=r"nested deeper|invalid YAML"):
        load_yaml("a: " + "[" * 100_000 + "]" * 100_000, "f.yaml")
    with pytest.raises(ScenarioError, match="nested deeper"):
        load_json("[" * 100_000 + "]" * 100_000, "f.json")


# --------------------------------------------------------------------------- 2-5: numeric fields


@pytest.mark.parametrize(
    ("sets", "field"),
    [
        (["server.max_num_seqs=9223372036854775808"], "server.max_num_seqs"),
        (["server.max_num_batched_tokens=9223372036854775808"], "server.max_num_batched_tokens"),
        (["server.num_gpu_blocks=9223372036854775808"], "server.num_gpu_blocks"),
        (["workload.arrival=gamma", "workload.cv=1e-170"], "workload.cv"),
        (["workload.rate=5e-324"], "workload.rate"),
        (["workload.rate=1e-20"], "workload.rate"),
        (["server.tp=3"], "server.tp"),
        (["server.api_delay_s=1e308"], "server.api_delay_s"),
        (["costs.linear.verify_fixed_s=1e308", "costs.source=linear"], "costs.linear"),
        (["server.block_size=4"], "server.block_size"),
    ],
    ids=lambda v: v if isinstance(v, str) else "+".join(v),
)
def test_2_to_5_numeric_extremes_exit_2_naming_the_field(
    sets: list[str], field: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # cases 2 (OverflowError in the compiled engine), 3 (ZeroDivisionError), 4 (inf arrivals,
    # zero latencies), 5 (a tensor-parallel size vLLM refuses), and huge overheads (inf results)
    no_simulation(monkeypatch)
    argv = ["run", DEFAULT, *SMALL]
    for s in sets:
        argv += ["--set", s]
    line = one_error_line(argv, capsys)
    assert line.startswith(f"error: {field}"), line


def test_5_tensor_parallel_follows_vllm() -> None:
    # 32 heads and 8 KV heads: tp 16 replicates each KV head on two GPUs (allowed by vLLM),
    # tp 3 splits nothing evenly, tp 64 exceeds the heads
    assert load_scenario(DEFAULT, {"server.tp": 16}).server.tp == 16
    for tp in (3, 6, 64):
        with pytest.raises(ScenarioError, match="allowed: 1, 2, 4, 8, 16, 32") as exc:
            load_scenario(DEFAULT, {"server.tp": tp})
        assert exc.value.field == "server.tp"
    # a separate draft model is split over its own GPUs: Qwen3-1.7B has 16 heads
    with pytest.raises(ScenarioError, match=r"drafter\.model") as exc:
        load_scenario(
            DEFAULT,
            {"drafter.tp": 32, "drafter.kind": "model", "drafter.model": "qwen3-1.7b"},
        )
    assert exc.value.field == "drafter.tp"


# --------------------------------------------------------------------------- 6: --out paths


def _loop(t: Path) -> Path:
    link = t / "loop"
    link.symlink_to(link)
    return link


def _dir_summary(t: Path) -> Path:
    d = t / "withdir"
    (d / "summary.json").mkdir(parents=True)
    return d


OUT_COMMANDS = {
    "run": lambda o: ["run", DEFAULT, *SMALL, "--out", str(o)],
    "validate": lambda o: [
        *("validate", DEFAULT, *SMALL, "--rates", "5", "--reps", "1", "--jobs", "1"),
        *("--out", str(o)),
    ],
    "compare": lambda o: ["compare", str(GUIDELLM), "--out", str(o)],
}


@pytest.mark.parametrize("cmd", list(OUT_COMMANDS))
def test_6_symlink_loop_out_is_refused_before_simulating(
    cmd: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    no_simulation(monkeypatch)
    line = one_error_line(OUT_COMMANDS[cmd](_loop(tmp_path)), capsys)
    assert line.startswith("error: --out: ") and "loop" in line


def test_6_fit_out_through_a_loop_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = one_error_line(["fit", str(GUIDELLM), "--out", str(_loop(tmp_path) / "f.yaml")], capsys)
    assert line.startswith("error: --out: ") and "loop" in line


def test_6_directory_named_like_an_output_is_refused_before_simulating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    no_simulation(monkeypatch)
    d = _dir_summary(tmp_path)
    line = one_error_line(OUT_COMMANDS["run"](d), capsys)
    assert "summary.json" in line and "directory" in line
    assert sorted(p.name for p in d.iterdir()) == ["summary.json"]  # nothing partial written


def test_6_dangling_symlink_out_is_written_through(tmp_path: Path) -> None:
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "target")
    main(["run", DEFAULT, *SMALL, "--summary-only", "--out", str(link)])
    assert (tmp_path / "target" / "summary.json").is_file()


# --------------------------------------------------------------------------- 7: --plot FILE


def test_7_plot_without_extension_writes_that_file_as_png(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "steps"
    main(["costs", DEFAULT, "--plot", str(target)])
    assert target.is_file() and target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "steps.png").exists()
    assert f"wrote {target} (PNG)" in capsys.readouterr().out
    line = one_error_line(["costs", DEFAULT, "--plot", str(tmp_path / "x.xyz")], capsys)
    assert line.startswith("error: --plot: ") and ".png" in line


# --------------------------------------------------------------------------- 8-10: sweeps


def _sweep(tmp: Path, grid: dict[str, Any], base: dict[str, Any] | None = None) -> Path:
    b = tmp / "base.yaml"
    b.write_text(
        yaml.safe_dump(
            base
            or {
                "costs": {"source": "linear"},
                "server": {"num_gpu_blocks": "unlimited"},
                "workload": {"num_requests": 60, "rate": 5.0},
                "warmup_requests": 5,
            }
        )
    )
    s = tmp / "sweep.yaml"
    s.write_text(yaml.safe_dump({"base": str(b), "grid": grid}))
    return s


@pytest.mark.parametrize("damage", ["truncated", "empty", "random bytes", "edited row"])
def test_8_damaged_result_file_is_redone_and_reported(
    damage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sdsim.sweep import load_sweep, plan_sweep, run_sweep

    path = _sweep(tmp_path, {"spec.k": [0, 2]})
    plan = plan_sweep(load_sweep(path), path)
    out = tmp_path / "o"
    first = run_sweep(plan, out)
    victim = out / "results" / f"{plan.tasks[0].run_key}.parquet"
    raw = victim.read_bytes()
    if damage == "truncated":
        victim.write_bytes(raw[: len(raw) // 2])
    elif damage == "empty":
        victim.write_bytes(b"")
    elif damage == "random bytes":
        victim.write_bytes(np.random.default_rng(0).bytes(len(raw)))
    else:  # a valid parquet file whose numbers were changed
        df = pd.read_parquet(victim)
        df["e2e_mean"] = 123.0
        df.to_parquet(victim)
    main(["sweep", str(path), "--out", str(out), "--workers", "1", "--quiet"])
    err = capsys.readouterr().err
    assert "redid 1 run(s)" in err and plan.tasks[0].run_key in err, err
    again = pd.read_csv(out / "summary.csv")
    pd.testing.assert_frame_equal(again, first.summary.reset_index(drop=True), check_dtype=False)
    # `sdsim plot` on a damaged directory warns and draws the rest, no traceback
    victim.write_bytes(b"junk")
    main(["plot", str(out)])
    assert "left out 1 result file" in capsys.readouterr().err


def test_9_editing_a_trace_reruns_its_points(tmp_path: Path) -> None:
    from sdsim.sweep import load_sweep, plan_sweep, run_sweep

    trace = tmp_path / "trace.csv"
    trace.write_text("arrival,prompt_tokens,output_tokens\n" + "".join(
        f"{i * 0.5},100,20\n" for i in range(30)))
    base = {
        "costs": {"source": "linear"},
        "server": {"num_gpu_blocks": "unlimited"},
        "workload": {"arrival": "trace", "trace": str(trace), "num_requests": 30},
        "warmup_requests": 2,
    }
    path = _sweep(tmp_path, {"spec.k": [0, 2]}, base)
    out = tmp_path / "o"
    a = run_sweep(plan_sweep(load_sweep(path), path), out)
    trace.write_text("arrival,prompt_tokens,output_tokens\n" + "".join(
        f"{i * 0.5},100,200\n" for i in range(30)))
    b = run_sweep(plan_sweep(load_sweep(path), path), out)
    assert b.skipped == 0 and b.done == 2  # nothing resumed from the old trace's results
    assert (b.summary["e2e_mean"] > 3 * a.summary["e2e_mean"]).all()


def test_10_second_sweep_into_a_locked_out_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sdsim.outputs import DirectoryLock
    from sdsim.sweep_store import LOCK_FILE

    path = _sweep(tmp_path, {"spec.k": [0, 1]})
    out = tmp_path / "o"
    with DirectoryLock(out, LOCK_FILE):  # a live sweep (this process) holds it
        line = one_error_line(["sweep", str(path), "--out", str(out), "--quiet"], capsys)
        assert "in use by another sweep" in line and f"pid {os.getpid()}" in line
    assert not (out / "sweep.json").exists()


def test_10_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    from sdsim.outputs import DirectoryLock

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    out = tmp_path / "o"
    out.mkdir()
    (out / ".l").write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename}))
    with DirectoryLock(out, ".l") as lock:
        assert lock.took_over is not None and lock.took_over["pid"] == int(dead.stdout)
        assert json.loads((out / ".l").read_text())["pid"] == os.getpid()
    assert not (out / ".l").exists()


def test_10_summary_is_built_from_the_sweeps_own_results(tmp_path: Path) -> None:
    # Another sweep's sweep.json in the directory (what a concurrent second sweep wrote before
    # the lock) must not leak into this sweep's summary.
    from sdsim.sweep import finish_sweep, load_sweep, plan_sweep, run_sweep

    a_path = _sweep(tmp_path / "a" if (tmp_path / "a").mkdir() is None else tmp_path,
                    {"spec.k": [0, 1]})
    b_path = _sweep(tmp_path / "b" if (tmp_path / "b").mkdir() is None else tmp_path,
                    {"workload.rate": [2.0, 3.0, 4.0]})
    out = tmp_path / "o"
    plan_a = plan_sweep(load_sweep(a_path), a_path)
    first = run_sweep(plan_a, out)
    run_sweep(plan_sweep(load_sweep(b_path), b_path), out)  # rewrites sweep.json
    res = finish_sweep(plan_a, out, False, 2, 0, 0, 0.0)
    assert list(res.summary["spec.k"]) == [0, 1] and "workload.rate" not in res.summary
    pd.testing.assert_frame_equal(res.summary, first.summary)


# --------------------------------------------------------------------------- 11: reports


def _guidellm(tmp: Path, edit: Any) -> Path:
    d = json.loads(GUIDELLM.read_text())
    edit(d)
    p = tmp / "report.json"
    p.write_text(json.dumps(d))
    return p


def _vllm(tmp: Path, edit: Any) -> Path:
    d = json.loads(VLLM.read_text())
    edit(d)
    p = tmp / "vllm.json"
    p.write_text(json.dumps(d))
    return p


def _req(d: dict[str, Any]) -> dict[str, Any]:
    r: dict[str, Any] = d["benchmarks"][0]["requests"]["successful"][1]
    return r


def _swap(d: dict[str, Any]) -> None:
    t = _req(d)["info"]["timings"]
    t["request_start"], t["request_end"] = t["request_end"], t["request_start"]


REPORT_CASES: list[tuple[str, Any, str]] = [
    ("output_tokens abc", lambda t: _guidellm(t, lambda d: _req(d).update(output_tokens="abc")),
     "report.benchmarks[0].requests.successful[1].output_tokens"),
    ("output_tokens NaN", lambda t: _guidellm(t, lambda d: _req(d).update(output_tokens=np.nan)),
     "report.benchmarks[0].requests.successful[1].output_tokens"),
    ("output_tokens 1e30", lambda t: _guidellm(t, lambda d: _req(d).update(output_tokens=1e30)),
     "report.benchmarks[0].requests.successful[1].output_tokens"),
    ("negative output", lambda t: _guidellm(t, lambda d: _req(d).update(output_tokens=-3)),
     "report.benchmarks[0].requests.successful[1].output_tokens"),
    ("benchmarks of ints", lambda t: _guidellm(t, lambda d: d.update(benchmarks=[1, 2])),
     "report.benchmarks[0]"),
    ("successful {}", lambda t: _guidellm(
        t, lambda d: d["benchmarks"][0]["requests"].update(successful={})),
     "report.benchmarks[0].requests.successful"),
    ("swapped start/end", lambda t: _guidellm(t, _swap),
     "report.benchmarks[0].requests.successful[1].info.timings"),
    ("vLLM itls of strings", lambda t: _vllm(t, lambda d: d.update(itls=[["a"]] * 4)),
     "report.itls[0][0]"),
    ("vLLM ttft huge", lambda t: _vllm(t, lambda d: d.update(ttfts=[1e30] * 4)),
     "report.ttfts[0]"),
    ("vLLM lengths differ", lambda t: _vllm(t, lambda d: d.update(output_lens=[5])),
     "report.output_lens"),
]


@pytest.mark.parametrize("cmd", ["fit", "compare"])
@pytest.mark.parametrize(("name", "make", "field"), REPORT_CASES, ids=[c[0] for c in REPORT_CASES])
def test_11_malformed_reports_exit_2_naming_the_field(
    cmd: str,
    name: str,
    make: Any,
    field: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    no_simulation(monkeypatch)
    argv = [cmd, str(make(tmp_path))]
    if cmd == "compare":
        argv += ["--out", str(tmp_path / "cmp")]
    line = one_error_line(argv, capsys)
    assert line.startswith(f"error: {field}"), line


# --------------------------------------------------------------------------- 12: config.json


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("num_key_value_heads", "Infinity"),
        ("max_position_embeddings", "Infinity"),
        ("head_dim", "-128"),
        ("hidden_size", "NaN"),
        ("vocab_size", '"many"'),
        ("num_key_value_heads", "5"),  # 32 heads are not a multiple of 5 KV heads
    ],
)
def test_12_bad_config_json_exits_2_naming_the_key(
    key: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = {
        "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256,
        "max_position_embeddings": 131072, "model_type": "llama",
    }
    text = json.dumps({**cfg, key: "@@"}).replace('"@@"', value)
    p = tmp_path / "config.json"
    p.write_text(text)
    line = one_error_line(["costs", DEFAULT, "--set", f"target={p}"], capsys)
    assert line.startswith("error: target: ") and key in line, line


# --------------------------------------------------------------------------- 15: stability


def test_15_short_light_run_is_not_called_unstable(capsys: pytest.CaptureFixture[str]) -> None:
    main(["run", DEFAULT, *SMALL, "--set", "workload.rate=5", "--json"])
    err = capsys.readouterr().err
    assert "exceeds" not in err and "not stable" not in err
    assert "not enough data to judge" in err


def test_15_time_limited_light_run_is_not_called_unstable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    main(["run", DEFAULT, "--set", "workload.rate=0.01", "--set", "limits.max_sim_time_s=400",
          "--set", "warmup_requests=1", "--json"])
    out, err = capsys.readouterr()
    assert json.loads(out)["stable"] is None
    assert "exceeds" not in err and "not enough data to judge" in err


# --------------------------------------------------------------------------- also


def test_also_too_many_recorded_requests_refused_at_once() -> None:
    # 100,000,000 requests used to allocate 3.5 GB and run for many minutes; the record-keeping
    # limit and the schema's maximum now refuse them before any allocation
    code = (
        "import resource\n"
        "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
        "from sdsim.cli import main\n"
        "main(['run', 'scenarios/default.yaml', '--set', 'workload.num_requests=%d'])\n"
    )
    for n, field in ((100_000_000, "workload.num_requests"), (5_000_000, "workload.num_requests")):
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-c", code % n], capture_output=True, text=True,
                           cwd=ROOT, timeout=120)
        assert p.returncode == 2 and p.stderr.startswith(f"error: {field}"), p.stderr[-500:]
        assert time.monotonic() - t0 < 60


def test_also_one_request_explains_its_undefined_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["run", DEFAULT, "--set", "workload.num_requests=1", "--set", "warmup_requests=0",
          "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert "undefined (NaN)" in err and "two or more measured requests" in err
    text = (tmp_path / "o" / "summary.json").read_text()
    assert "NaN" not in text
    assert json.loads(text)["batch_mean"] is None  # strict JSON: null, not a bare NaN


def test_also_summary_only_rerun_leaves_no_stale_csvs(tmp_path: Path) -> None:
    out = tmp_path / "d"
    main(["run", DEFAULT, *SMALL, "--out", str(out)])
    assert (out / "requests.csv").is_file()
    main(["run", DEFAULT, *SMALL, "--summary-only", "--out", str(out)])
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "scenario.yaml",
        "summary.json",
    ]


def test_also_unattributed_stale_outputs_refuse_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # output files no manifest accounts for are not deleted: the run is refused, naming them
    no_simulation(monkeypatch)
    out = tmp_path / "d"
    out.mkdir()
    (out / "requests.csv").write_text("mine\n")
    line = one_error_line(["run", DEFAULT, *SMALL, "--summary-only", "--out", str(out)], capsys)
    assert "requests.csv" in line and "earlier run" in line
    assert (out / "requests.csv").read_text() == "mine\n"


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"acceptance.alpha": [1.5, 0.2]}, "acceptance.alpha[0]"),
        ({"acceptance.alpha": {"dist": "beta", "mean": 2, "concentration": 1}},
         "acceptance.alpha.mean"),
        ({"server.max_num_batched_tokens": 2}, "server.max_num_batched_tokens"),
        ({"workload.prompt_tokens": {"dist": "lognormal", "mean": 9, "cv": -1}},
         "workload.prompt_tokens.cv"),
        ({"workload.output_tokens": {"dist": "uniform", "low": 9, "high": 3}},
         "workload.output_tokens.high"),
        ({"hardware": {"bf16_tflops": -1, "hbm_gb": 80, "hbm_tbps": 3}}, "hardware.bf16_tflops"),
        ({"drafter.kind": "model"}, "drafter.model"),
    ],
)
def test_also_error_names_the_field_not_pydantic_internals(
    over: dict[str, Any], field: str
) -> None:
    with pytest.raises(ScenarioError) as exc:
        load_scenario(DEFAULT, over)
    assert exc.value.field == field, str(exc.value)
    assert "constrained" not in str(exc.value) and "function-" not in str(exc.value)


@pytest.mark.parametrize("value", ["x" * 5000, "a\0b", "dir/" + "y" * 300])
@pytest.mark.parametrize("field", ["costs.profile", "workload.trace", "target"])
def test_fuzz_found_unusable_paths_name_their_field(field: str, value: str) -> None:
    # found by tests/test_fuzz.py: stat() of such a name raises (File name too long, embedded NUL)
    with pytest.raises(ScenarioError) as exc:
        load_scenario(DEFAULT, {field: value})
    assert exc.value.field == field and "file path" in exc.value.message


def test_fuzz_found_vanishing_efficiency_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # found by tests/test_fuzz.py: gemm_compute = 5e-324 priced steps at ~1e300 s; the run said
    # "completed" with nothing completed
    no_simulation(monkeypatch)
    line = one_error_line(["run", DEFAULT, *SMALL, "--set", "costs.roofline.gemm_compute=5e-324"],
                          capsys)
    assert line.startswith("error: costs.roofline.gemm_compute: ")
