"""Sweeps: planning, seeds, executors (in process, pool, Dask), storage, resume, failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from sdsim.errors import ScenarioError
from sdsim.steadystate import pool_runs
from sdsim.sweep import SweepSpec, load_sweep, plan_sweep, run_sweep
from sdsim.sweep_store import load_sweep_dir, read_runs
from sdsim.sweep_summary import speedup_table, summarize_runs
from tests.conftest import ROOT

# A tiny base scenario: each run simulates in well under a second.
BASE: dict[str, Any] = {
    "name": "tiny",
    "spec": {"k": 2},
    "acceptance": {"alpha": 0.7},
    "costs": {"source": "linear"},
    "workload": {
        "arrival": "poisson",
        "rate": 10.0,
        "num_requests": 60,
        "prompt_tokens": 64,
        "output_tokens": 24,
    },
    "warmup_requests": 10,
    "seed": 7,
}


def write_sweep(tmp: Path, sweep: dict[str, Any], base: dict[str, Any] | None = None) -> Path:
    (tmp / "base.yaml").write_text(yaml.safe_dump(base or BASE))
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", **sweep}, sort_keys=False))
    return path


def plan_of(path: Path, **kw: Any) -> Any:
    return plan_sweep(load_sweep(path), path, **kw)


def runs_without_timing(out: Path) -> pd.DataFrame:
    _, runs = load_sweep_dir(out)
    return runs.drop(columns=["wall_s"]).reset_index(drop=True)


# --------------------------------------------------------------------------- planning


def test_grid_is_a_product_and_zip_groups_vary_together(tmp_path: Path) -> None:
    path = write_sweep(
        tmp_path,
        {
            "grid": {"spec.k": [0, 2], "workload.rate": [5, 10, 15]},
            "zip": {"acceptance.alpha": [0.6, 0.8], "workload.output_tokens": [16, 32]},
            "replications": 2,
        },
    )
    plan = plan_of(path)
    assert plan.fields == ["spec.k", "workload.rate", "acceptance.alpha", "workload.output_tokens"]
    assert len(plan.points) == 2 * 3 * 2 and len(plan.tasks) == 24
    pairs = {
        (p.overrides["acceptance.alpha"], p.overrides["workload.output_tokens"])
        for p in plan.points
    }
    assert pairs == {(0.6, 16), (0.8, 32)}  # zipped, not crossed
    scn = plan.points[-1].scenario
    assert (scn.spec.k, scn.workload.rate, scn.acceptance.alpha) == (2, 15, 0.8)
    assert len({t.seed for t in plan.tasks}) == 24
    assert len({t.run_key for t in plan.tasks}) == 24


def test_seed_depends_on_point_and_replication_not_on_order(tmp_path: Path) -> None:
    a = plan_of(write_sweep(tmp_path, {"grid": {"spec.k": [0, 2, 4], "workload.rate": [5, 10]}}))
    b_dir = tmp_path / "b"
    b_dir.mkdir()
    b = plan_of(write_sweep(b_dir, {"grid": {"workload.rate": [10, 5], "spec.k": [4, 2, 0]}}))
    seeds_a = {json.dumps(t.overrides, sort_keys=True): t.seed for t in a.tasks}
    seeds_b = {json.dumps(t.overrides, sort_keys=True): t.seed for t in b.tasks}
    assert seeds_a == seeds_b  # same point -> same seed, whatever the enumeration order
    assert {t.run_key for t in a.tasks} == {t.run_key for t in b.tasks}


def test_common_random_numbers_share_seeds_across_the_named_field(tmp_path: Path) -> None:
    path = write_sweep(
        tmp_path,
        {
            "grid": {"spec.k": [0, 2, 4], "workload.rate": [5, 10]},
            "replications": 2,
            "common_random_numbers": ["spec.k"],
        },
    )
    plan = plan_of(path)
    by_rate: dict[tuple[float, int], set[int]] = {}
    for t in plan.tasks:
        by_rate.setdefault((t.overrides["workload.rate"], t.replication), set()).add(t.seed)
    assert all(len(s) == 1 for s in by_rate.values())  # k does not change the seed
    assert len({next(iter(s)) for s in by_rate.values()}) == 4  # rate and replication do


@pytest.mark.parametrize(
    ("sweep", "field"),
    [
        ({"grid": {"workload.rat": [1, 2]}}, "workload.rat"),
        ({"grid": {"spec.kk": [1]}}, "spec.kk"),
        ({"grid": {"spec.k": [0, 99]}}, "spec.k"),
        ({"grid": {"spec.k": []}}, "grid"),
        ({"zip": {"spec.k": [0, 1], "workload.rate": [1]}}, "zip"),
        ({"grid": {"spec.k": [1]}, "metrics": ["e2e_mean", "latency"]}, "metrics"),
        ({"grid": {"spec.k": [1]}, "replication": 3}, "replication"),
        ({"grid": {"spec.k": [1]}, "set": {"spec.k": 2}}, "spec.k"),
        ({"grid": {"seed": [1, 2]}}, "grid.seed"),
        ({"grid": {"spec.k": [1]}, "common_random_numbers": ["workload.rate"]}, "common_random"),
    ],
)
def test_bad_sweeps_name_the_field(tmp_path: Path, sweep: dict[str, Any], field: str) -> None:
    path = write_sweep(tmp_path, sweep)
    with pytest.raises(ScenarioError) as exc:
        plan_of(path)
    assert exc.value.field.startswith(field), str(exc.value)
    assert "\n" not in str(exc.value)


def test_cli_unknown_grid_field_exits_2_with_one_line(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, {"grid": {"workload.rat": [1, 2]}})
    proc = subprocess.run(
        [sys.executable, "-m", "sdsim.cli", "sweep", str(path), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "workload.rat" in lines[0] and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- executors


SMALL = {
    "grid": {"spec.k": [0, 3], "acceptance.alpha": [0.6, 0.8]},
    "replications": 2,
    "metrics": ["e2e_mean", "e2e_p99", "ttft_mean"],
}


def test_process_pool_matches_in_process_bit_for_bit(tmp_path: Path) -> None:
    plan = plan_of(write_sweep(tmp_path, SMALL))
    a = run_sweep(plan, tmp_path / "one", workers=1)
    b = run_sweep(plan, tmp_path / "two", workers=2)
    assert a.done == b.done == 8 and a.failed == b.failed == 0
    pd.testing.assert_frame_equal(
        runs_without_timing(tmp_path / "one"),
        runs_without_timing(tmp_path / "two"),
        check_exact=True,
    )
    pd.testing.assert_frame_equal(a.summary, b.summary, check_exact=True)


def test_dask_local_cluster_gives_the_same_table(tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    sweep = {**SMALL, "replications": 1}
    plan = plan_of(write_sweep(tmp_path, sweep))
    a = run_sweep(plan, tmp_path / "local", workers=1)
    b = run_sweep(plan, tmp_path / "dask", workers=2, dask="local")
    assert b.done == 4 and b.failed == 0
    pd.testing.assert_frame_equal(
        runs_without_timing(tmp_path / "local"),
        runs_without_timing(tmp_path / "dask"),
        check_exact=True,
    )
    pd.testing.assert_frame_equal(a.summary, b.summary, check_exact=True)


def test_runs_match_direct_simulation(tmp_path: Path) -> None:
    """A sweep row is exactly what `simulate(point scenario, seed=row seed)` gives."""
    from sdsim.simulation import simulate

    plan = plan_of(write_sweep(tmp_path, {"grid": {"spec.k": [0, 3]}}))
    res = run_sweep(plan, tmp_path / "o", workers=1)
    for p, (_, row) in zip(plan.points, res.runs.iterrows(), strict=True):
        direct = simulate(p.scenario, seed=int(row["seed"])).summary
        assert row["e2e_mean"] == direct["e2e_mean"] and row["completed"] == direct["completed"]
        assert row["scenario_hash"] == p.scenario_hash


# --------------------------------------------------------------------------- results


def test_summary_pools_replications_with_intervals_in_range(tmp_path: Path) -> None:
    plan = plan_of(write_sweep(tmp_path, {"grid": {"spec.k": [0, 2]}, "replications": 3}))
    res = run_sweep(plan, tmp_path / "o", workers=1)
    assert len(res.runs) == 6 and len(res.summary) == 2
    files = sorted((tmp_path / "o" / "results").glob("*.parquet"))
    assert len(files) == 6  # one parquet file per point x replication
    for _, srow in res.summary.iterrows():
        r = res.runs[res.runs["spec.k"] == srow["spec.k"]]
        vals = r["e2e_mean"].to_numpy()
        assert vals.size == 3 and len(set(vals)) == 3  # replications differ
        # the latency estimate: the runs' steady-state (MSER-cut) means, averaged; the interval
        # from their within-run batch-means standard errors, on the log scale
        mean, lo, hi = pool_runs(r["e2e_mean_ss"], r["e2e_mean_ss_se"], r["e2e_mean_ss_batches"])
        assert srow["e2e_mean"] == mean
        assert (srow["e2e_mean_ci_low"], srow["e2e_mean_ci_high"]) == (lo, hi)
        assert 0 < lo < mean < hi
        assert srow["e2e_mean_std"] == pytest.approx(np.std(vals, ddof=1), rel=1e-12)
        assert srow["runs"] == 3 and srow["failed"] == 0
        # the stable fraction is over the runs the stability test could judge (True or False;
        # None: too short to judge), with a Wilson interval inside [0, 1]; none judged: NaN
        judged = [bool(v) for v in r["stable"] if v is not None and v == v]
        if judged:
            assert srow["stable"] == np.mean(judged)
            assert 0 <= srow["stable_ci_low"] <= srow["stable"] <= srow["stable_ci_high"] <= 1
        else:
            assert np.isnan(srow["stable"]) and np.isnan(srow["stable_ci_low"])
    on_disk = pd.read_csv(tmp_path / "o" / "summary.csv")
    assert list(on_disk["spec.k"]) == [0, 2]
    assert pd.read_parquet(tmp_path / "o" / "summary.parquet").shape == res.summary.shape


def test_intervals_respect_the_range_with_two_replications() -> None:
    # two replications whose p99 differ a lot and one unstable run: a t-interval over two values
    # reaches below zero (t = 12.7) and gives "stable 0.5 +- 6.4"; pooled within-run errors on
    # the log scale and a Wilson interval do not
    meta = {"points": [{"point": 0, "point_key": "a", "overrides": {}}], "fields": [],
            "metrics": ["e2e_p99", "stable", "throughput_rps"]}
    runs = pd.DataFrame(
        {
            "point_key": ["a", "a"],
            "error": [None, None],
            "e2e_p99": [1.0, 3.0],
            "e2e_p99_ss": [1.0, 3.0],
            "e2e_p99_ss_se": [0.05, 0.4],
            "e2e_p99_ss_batches": [20, 20],
            "stable": [True, False],
            "throughput_rps": [10.0, 9.0],
        }
    )
    row = summarize_runs(runs, meta).iloc[0]
    assert 0 < row["e2e_p99_ci_low"] < 2.0 < row["e2e_p99_ci_high"]
    assert row["stable"] == 0.5 and 0 <= row["stable_ci_low"] < 0.5 < row["stable_ci_high"] <= 1
    assert 0 < row["throughput_rps_ci_low"] < 9.5 < row["throughput_rps_ci_high"]


def test_failing_point_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    pd.DataFrame({"arrival": np.arange(40) * 0.1, "prompt_tokens": 64, "output_tokens": 16}).to_csv(
        good, index=False
    )
    bad = tmp_path / "bad.csv"
    bad.write_text("arrival,prompt_tokens,output_tokens\n0.0,64,16\n0.5,64,0\n")  # 0 tokens
    base = {**BASE, "workload": {**BASE["workload"], "arrival": "trace", "trace": str(good)}}
    path = write_sweep(
        tmp_path,
        {"grid": {"workload.trace": [str(good), str(bad)], "spec.k": [0, 2]}, "replications": 2},
        base,
    )
    plan = plan_of(path)
    res = run_sweep(plan, tmp_path / "o", workers=2)
    assert (res.done, res.failed) == (4, 4)
    bad_rows = res.runs[res.runs["workload.trace"] == str(bad)]
    assert bad_rows["error"].str.contains("output_tokens").all()
    assert res.runs.loc[res.runs["workload.trace"] == str(good), "error"].isna().all()
    assert (tmp_path / "o" / "failures.csv").is_file()
    assert list(res.summary["failed"]) == [0, 0, 2, 2]
    # Resuming retries only the failed runs (they fail again, deterministically).
    again = run_sweep(plan, tmp_path / "o", workers=1)
    assert (again.skipped, again.done, again.failed) == (4, 0, 4)
    assert len(read_runs(tmp_path / "o")) == 8  # replaced, not duplicated
    # The CLI reports the failures with exit code 1 and still writes the summary.
    proc = subprocess.run(
        [sys.executable, "-m", "sdsim.cli", "sweep", str(path), "--out", str(tmp_path / "c"),
         "--workers", "1", "--quiet"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert proc.returncode == 1 and "failures.csv" in proc.stderr, proc.stderr
    assert (tmp_path / "c" / "summary.csv").is_file()


def test_kill_and_resume_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    base = {**BASE, "workload": {**BASE["workload"], "num_requests": 150}}
    path = write_sweep(
        tmp_path,
        {"grid": {"spec.k": [0, 1, 2, 3, 4, 5], "workload.rate": [5, 10]}, "replications": 2},
        base,
    )
    plan = plan_of(path)
    total = len(plan.tasks)
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sdsim.cli", "sweep", str(path), "--out", str(out), "--workers",
         "1", "--quiet"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    results = out / "results"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            done = [f for f in results.glob("*.parquet") if not f.name.startswith(".")]
            if results.is_dir() and len(done) >= 3:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the sweep finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)  # the harshest stop: no cleanup at all
    finally:
        proc.wait(timeout=30)
    before = read_runs(out)
    assert 3 <= len(before) < total
    res = run_sweep(plan, out, workers=1)
    assert res.skipped == len(before) and res.done == total - len(before) and res.failed == 0
    after = runs_without_timing(out)
    assert len(after) == total and after["run_key"].is_unique
    assert set(after["run_key"]) == {t.run_key for t in plan.tasks}
    assert not list(results.glob(".*.tmp*"))
    # Identical to an uninterrupted sweep, bit for bit.
    run_sweep(plan, tmp_path / "clean", workers=1)
    pd.testing.assert_frame_equal(after, runs_without_timing(tmp_path / "clean"), check_exact=True)


def test_changed_base_reruns_and_ignores_stale_rows(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, {"grid": {"spec.k": [0, 2]}})
    run_sweep(plan_of(path), tmp_path / "o", workers=1)
    changed = {**BASE, "acceptance": {"alpha": 0.5}}
    path = write_sweep(tmp_path, {"grid": {"spec.k": [0, 2]}}, changed)
    res = run_sweep(plan_of(path), tmp_path / "o", workers=1)
    assert res.skipped == 0 and res.done == 2
    assert len(read_runs(tmp_path / "o")) == 4 and len(res.runs) == 2  # old rows kept, not used


# --------------------------------------------------------------------------- analytic


def test_with_analytic_uses_the_real_model(tmp_path: Path) -> None:
    """`--with-analytic` puts `sdsim.predict`'s numbers beside the simulated ones.

    Seed 7, 2 replications of 400 requests (40 warm-up) per point, linear costs: at 5 and
    20 req/s (well under the model's saturation) the analytic mean e2e must be within 10% of the
    simulated mean, the model's own 5% target plus the sampling noise of 720 measured requests.
    A rate far past saturation must come out unstable in both columns, not as a number.
    """
    import sdsim

    sweep = {
        "grid": {"spec.k": [0, 2], "workload.rate": [5.0, 20.0, 5000.0]},
        "set": {"workload.num_requests": 400, "warmup_requests": 40},
        "replications": 2,
        "metrics": ["e2e_mean", "ttft_mean", "stable"],
    }
    plan = plan_of(write_sweep(tmp_path, sweep))
    res = run_sweep(plan, tmp_path / "o", workers=1, with_analytic=True)
    s = res.summary
    assert s["analytic_error"].isna().all()
    for p in plan.points:
        row = s[s["point_key"] == p.key].iloc[0]
        pred = sdsim.predict(p.scenario).summary
        assert row["e2e_mean_analytic"] == pred["e2e_mean"]  # exactly what the model says
        if row["workload.rate"] < 1000:
            assert row["stable_analytic"] == 1.0
            assert abs(row["e2e_mean_analytic"] / row["e2e_mean"] - 1) < 0.10, row.to_dict()
        else:
            assert row["stable_analytic"] == 0.0 and row["stable"] == 0.0
            assert not np.isfinite(row["e2e_mean_analytic"])
    assert "e2e_mean_analytic" in pd.read_csv(tmp_path / "o" / "summary.csv").columns


def test_with_analytic_without_the_model_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # as in an installation without the analytic package: importing it fails
    monkeypatch.setitem(sys.modules, "sdsim.analytic", None)
    monkeypatch.setitem(sys.modules, "sdsim.analytic.prediction", None)
    plan = plan_of(write_sweep(tmp_path, {"grid": {"spec.k": [0, 2]}}))
    with pytest.raises(ScenarioError) as exc:
        run_sweep(plan, tmp_path / "o", workers=1, with_analytic=True)
    assert exc.value.field == "--with-analytic" and "sdsim.analytic" in str(exc.value)
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").rglob("*.parquet"))


def test_with_analytic_puts_predictions_beside_simulated_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def predict(scenario: Any) -> Any:
        calls.append(scenario.spec.k)
        if scenario.spec.k == 3:
            raise ValueError("unstable")
        return types.SimpleNamespace(summary={"e2e_mean": 1.0 + scenario.spec.k, "ttft_mean": 0.5})

    from sdsim.analytic import prediction

    monkeypatch.setattr(prediction, "predict", predict)
    sweep = {"grid": {"spec.k": [0, 2, 3]}, "replications": 2, "metrics": ["e2e_mean", "e2e_p99"]}
    plan = plan_of(write_sweep(tmp_path, sweep))
    res = run_sweep(plan, tmp_path / "o", workers=1, with_analytic=True)
    assert sorted(calls) == [0, 2, 3]  # once per point, not per replication
    s = res.summary
    assert list(s["e2e_mean_analytic"][:2]) == [1.0, 3.0] and np.isnan(s["e2e_mean_analytic"][2])
    assert s["e2e_p99_analytic"].isna().all()  # the model did not predict it
    assert "unstable" in s["analytic_error"][2]
    assert "e2e_mean_analytic" in pd.read_csv(tmp_path / "o" / "summary.csv").columns


# --------------------------------------------------------------------------- speedup and plots


def test_speedup_is_the_paired_ratio_to_the_baseline(tmp_path: Path) -> None:
    path = write_sweep(
        tmp_path,
        {
            "grid": {"spec.k": [0, 3], "workload.rate": [5, 20]},
            "replications": 2,
            "common_random_numbers": ["spec.k"],
        },
    )
    plan = plan_of(path)
    res = run_sweep(plan, tmp_path / "o", workers=1)
    meta, runs = load_sweep_dir(tmp_path / "o")
    table = speedup_table(runs, meta, {"spec.k": 0})
    assert list(table["spec.k"]) == [3, 3] and list(table["pairs"]) == [2, 2]
    for _, row in table.iterrows():
        r = runs[runs["workload.rate"] == row["workload.rate"]]
        base = r[r["spec.k"] == 0].sort_values("replication")["e2e_mean"].to_numpy()
        spec = r[r["spec.k"] == 3].sort_values("replication")["e2e_mean"].to_numpy()
        # the geometric mean of the paired ratios, its interval on the log ratios (positive)
        assert row["speedup"] == pytest.approx(float(np.exp(np.log(base / spec).mean())),
                                               rel=1e-12)
        assert 0 < row["speedup_ci_low"] <= row["speedup"] <= row["speedup_ci_high"]
    with pytest.raises(ScenarioError, match="--speedup-vs"):
        speedup_table(runs, meta, {"spec.k": 1})
    with pytest.raises(ScenarioError, match="--speedup-vs"):
        speedup_table(runs, meta, {"acceptance.alpha": 0.7})
    assert res.failed == 0


def test_plot_command_writes_pngs(tmp_path: Path) -> None:
    path = write_sweep(
        tmp_path,
        {
            "grid": {"spec.k": [0, 2], "workload.rate": [5, 10]},
            "replications": 2,
            "metrics": ["e2e_mean", "ttft_p99"],
        },
    )
    run_sweep(plan_of(path), tmp_path / "o", workers=1)
    from sdsim.cli import main

    main(["plot", str(tmp_path / "o"), "--target", "ttft_p99=200ms"])
    main(["plot", str(tmp_path / "o"), "--speedup-vs", "spec.k=0"])
    plots = tmp_path / "o" / "plots"
    # every output records the sdsim version (and the base seed runs derive from)
    from PIL import Image

    from sdsim._version import __version__

    assert json.loads((tmp_path / "o" / "sweep.json").read_text())["sdsim_version"] == __version__
    side = json.loads((tmp_path / "o" / "summary.csv.meta.json").read_text())
    assert side["sdsim_version"] == __version__ and side["seed"] is not None
    assert Image.open(plots / "ttft_p99.png").info["Software"] == f"sdsim {__version__}"
    with pytest.raises(SystemExit) as exc:  # a target for a metric the sweep did not keep
        main(["plot", str(tmp_path / "o"), "--target", "tpot_p99=0.01"])
    assert exc.value.code == 2
    names = {p.name for p in plots.glob("*.png")}
    assert names == {
        "e2e_mean.png",
        "ttft_p99.png",
        "e2e_mean_heatmap.png",
        "ttft_p99_heatmap.png",
        "speedup_e2e_mean.png",
    }
    for p in plots.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    with pytest.raises(SystemExit) as exc:
        main(["plot", str(tmp_path / "o"), "--x", "workload.cv"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["plot", str(tmp_path)])  # not a sweep directory
    assert exc.value.code == 2


def test_sweep_spec_accepts_a_list_of_zip_groups() -> None:
    spec = SweepSpec.model_validate(
        {"base": "x.yaml", "zip": [{"spec.k": [0, 1]}, {"workload.rate": [1, 2, 3]}]}
    )
    assert [list(a) for a in spec.axes()] == [["spec.k"], ["workload.rate"]]
