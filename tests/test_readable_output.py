"""What a person reads: tables laid out for 100 columns with units, `predict --rates`, the limiting
resource of saturation, labelled figures, and the sdsim version and seed in every output file."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from sdsim import load_scenario
from sdsim._version import __version__
from sdsim.cli.tables import Column, render_table, time_cells
from sdsim.labels import field_label, metric_label, time_unit
from tests.conftest import ROOT, small

DEFAULT = str(ROOT / "scenarios/default.yaml")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a user pipes it (not a terminal: laid out for 100 columns)."""
    return subprocess.run(
        [sys.executable, "-m", "sdsim.cli", *args], capture_output=True, text=True, cwd=ROOT
    )


def fits(text: str, width: int = 100) -> bool:
    return all(len(line) <= width for line in text.splitlines())


# --------------------------------------------------------------------------- units and layout


@pytest.mark.parametrize(
    ("values", "unit", "cells"),
    [
        ([12.2, 4.451, 0.9], "s", ["12.2", "4.45", "0.90"]),
        ([0.0326, 0.0645, 0.00519], "ms", ["32.6", "64.5", "5.19"]),
        ([5.49e-5, 1.86e-6], "µs", ["54.9", "1.86"]),
        ([0.5, math.inf, math.nan], "ms", ["500", "∞", "-"]),
    ],
)
def test_time_cells_choose_one_unit_per_column(values: list[float], unit: str, cells: list[str]):
    assert time_cells(values) == (unit, cells)
    assert time_unit(values)[0] == unit


def render(columns: list[Column], rows: list[list], width: int = 100) -> str:
    buf = io.StringIO()
    render_table("title", columns, rows, console=Console(file=buf, width=width))
    return buf.getvalue()


def test_wide_tables_switch_layout_and_never_wrap_a_row() -> None:
    cols = [Column("rate", "label", "req/s"), *(Column(f"metric {i}", "time") for i in range(14))]
    rows = [[f"{r}", *(0.0123 * (i + 1) * r for i in range(14))] for r in (1, 2, 5)]
    text = render(cols, rows)
    assert fits(text)
    # every row is on one line of each column group, each group starts with the row label
    for r in ("1", "2", "5"):
        lines = [ln for ln in text.splitlines() if ln.startswith(f"{r} ")]
        assert len(lines) >= 2  # split into groups: 15 columns do not fit 100
    assert "(ms)" in text and "e-0" not in text
    narrow = render(cols[:4], rows)
    assert fits(narrow)
    assert [ln.split()[0] for ln in narrow.splitlines() if ln[:2] in ("1 ", "2 ", "5 ")] == [
        "1",
        "2",
        "5",
    ]


# --------------------------------------------------------------------------- commands


def test_predict_rates_one_sorted_row_per_rate_with_units() -> None:
    res = cli("predict", DEFAULT, "--rates", "30,5,20,5")
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert fits(text), [ln for ln in text.splitlines() if len(ln) > 100]
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("by rate"))
    body = [ln.split()[0] for ln in lines[start + 4 : start + 7]]
    assert body == ["5", "20", "30"]  # sorted, duplicates merged, each row labelled by its rate
    for head in ("e2e mean", "e2e p99", "TTFT mean", "TTFT p99", "TPOT mean", "TPOT p99"):
        assert head in text
    assert "(ms)" in text or "(s)" in text
    assert "1.222e+04" not in text and "e+0" not in text
    assert "saturation rate" in text and "(GPU)" in text
    assert "none below saturation" in text  # the default scenario gains at every load
    assert "tail model" in text and "birth-death" in text and "mean-field" in text


@pytest.mark.parametrize(
    ("scenario", "overrides", "limit"),
    [
        ("scenarios/default.yaml", {}, "GPU"),
        ("scenarios/kv-pressure.yaml", {}, "KV cache"),
        # 16 running requests: a step at the cap is mostly its fixed cost (weights read once), so
        # the cap, not the GPU, limits throughput
        ("scenarios/default.yaml", {"server.max_num_seqs": 16}, "admission cap"),
    ],
)
def test_saturation_names_its_limiting_resource(scenario: str, overrides: dict, limit: str):
    from sdsim import predict

    p = predict(load_scenario(ROOT / scenario, overrides), rates=[])
    assert p.saturation_limit == limit
    assert p.to_dict()["saturation_limit"] == limit
    if limit == "KV cache":
        assert p.kv_saturation_rate < p.gpu_saturation_rate


def test_advise_and_predict_show_the_same_mean() -> None:
    # one meaning per number: advise's "e2e mean at best k" is predict's e2e mean at that k
    from sdsim import predict
    from sdsim.cli.predict import best_k

    scn = load_scenario(DEFAULT)
    ((k, means),) = best_k(scn, [20.0])
    assert k is not None and means[k] == min(means.values())
    p = predict(scn.with_overrides({"workload.rate": 20.0, "spec.k": k}), rates=[], k_values=[k])
    assert means[k] == pytest.approx(p.summary["e2e_mean"], rel=1e-12)


VLLM = (
    "vllm serve meta-llama/Llama-3.1-70B-Instruct --tensor-parallel-size 4 --max-num-seqs 128 "
    "--speculative-config '{\"method\": \"eagle\", \"model\": "
    "\"yuhuili/EAGLE-LLaMA3.1-Instruct-70B\", \"num_speculative_tokens\": 3}' "
    "--enable-prefix-caching --port 8000 --frobnicate 3"
)


def test_from_vllm_lists_every_flag_in_100_columns() -> None:
    res = cli("from-vllm", VLLM, "--hardware", "h100-sxm")
    assert res.returncode == 0, res.stderr
    text = res.stdout
    table = text.split("\nnote: ")[0]  # the notes after the table are prose
    assert fits(table), [ln for ln in table.splitlines() if len(ln) > 100]
    rows = {ln.split()[0]: ln for ln in table.splitlines() if ln.startswith(("--", "  "))}
    assert "server.tp" in rows["--tensor-parallel-size"]
    assert "spec.k" in rows["num_speculative_tokens"]  # a key of --speculative-config, indented
    assert "yuhuili/EAGLE-LLaMA3.1-Instruct-70B" in rows["model"]
    assert "server.prefix_caching" in rows["--enable-prefix-caching"]
    assert "ignored [1]" in rows["--port"] and "unknown" in rows["--frobnicate"]
    assert "[1] --port: network address" in text  # the reason, numbered


def test_plan_tables_fit_100_columns(tmp_path: Path) -> None:
    res = cli("plan", DEFAULT, "--rate", "60", "--slo", "e2e_p99=2.5", "--slo", "ttft_p99=200ms",
              "--search", "server.replicas=1..4", "--search", "spec.k=2,4", "--confirm", "0",
              "--out", str(tmp_path / "p"))
    assert res.returncode == 0, res.stderr
    assert fits(res.stdout), [ln for ln in res.stdout.splitlines() if len(ln) > 100]
    for head in ("e2e p99", "≤ 2.5 s", "TTFT p99", "≤ 200 ms", "$/Mtok", "verdict"):
        assert head in res.stdout
    ranks = [ln.split()[0] for ln in res.stdout.splitlines() if ln[:2] in ("1 ", "2 ")]
    assert ranks[:2] == ["1", "2"]  # rows labelled by rank
    res = cli("plan", DEFAULT, "--max-rate", "--slo", "e2e_p99=2.5", "--confirm", "0",
              "--out", str(tmp_path / "m"))
    assert res.returncode == 0 and "model max rate" in res.stdout


@pytest.mark.parametrize("args", [(), ("acceptance",)])
def test_no_arguments_prints_help_and_exits_cleanly(args: tuple[str, ...]) -> None:
    res = cli(*args)
    assert res.returncode == 0, res.stderr
    assert "Usage:" in res.stdout and "Commands" in res.stdout
    assert res.stderr == ""  # no error line, no traceback


def test_run_prints_within_100_columns_and_records_version_and_seed(tmp_path: Path) -> None:
    out = tmp_path / "r"
    res = cli("run", DEFAULT, "--set", "workload.num_requests=400", "--seed", "7", "--out",
              str(out))
    assert res.returncode == 0, res.stderr
    assert fits(res.stdout), [ln for ln in res.stdout.splitlines() if len(ln) > 100]
    assert "draft acceptance rate" in res.stdout and "sdsim version" in res.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sdsim_version"] == __version__ and summary["seed"] == 7
    assert "draft_acceptance_rate" in summary and "acceptance_rate" not in summary
    for name in ("requests.csv", "steps.csv"):
        meta = json.loads((out / f"{name}.meta.json").read_text())
        assert meta["sdsim_version"] == __version__ and meta["seed"] == 7
        assert meta["units"]["arrival" if name == "requests.csv" else "duration"] == "s"
        pd.read_csv(out / name)  # the CSV itself stays plain
    first = (out / "scenario.yaml").read_text().splitlines()[0]
    assert first.startswith(f"# sdsim {__version__}, seed 7")
    assert load_scenario(out / "scenario.yaml").seed == 7


# --------------------------------------------------------------------------- figures


def _line_df() -> pd.DataFrame:
    rows = []
    for k in (0, 2):
        for reps in (1, 2, 3, 4):
            v = 0.5 * reps + k
            rows.append(
                {"server.replicas": reps, "spec.k": k, "e2e_p99": v, "e2e_p99_ci_low": v * 0.9,
                 "e2e_p99_ci_high": v * 1.1, "e2e_p99_analytic": v * 1.05,
                 "stable": 1.0 if reps > 1 else 0.5}
            )
    return pd.DataFrame(rows)


def test_line_figure_legend_units_integer_ticks_and_target() -> None:
    from sdsim.plots import line_figure, parse_targets

    target = parse_targets(["e2e_p99=2500ms"])
    assert target == {"e2e_p99": pytest.approx(2.5)}
    fig = line_figure(_line_df(), "server.replicas", "e2e_p99", hue=["spec.k"],
                      low="e2e_p99_ci_low", high="e2e_p99_ci_high", analytic="e2e_p99_analytic",
                      target=target["e2e_p99"], target_metric="e2e_p99",
                      ylabel=metric_label("e2e_p99", "s"))
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("analytic" in lab for lab in labels)
    assert any(lab.startswith("target e2e_p99 = 2.5 s") for lab in labels)
    assert "95% CI" in labels and any("unstable" in lab for lab in labels)
    assert ax.get_xlabel() == "replicas" == field_label("server.replicas")
    assert ax.get_ylabel() == "e2e p99 (s)"
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if 1 <= t <= 4]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_heatmap_marks_unstable_points_and_labels_axes() -> None:
    from sdsim.plots import heatmap_figure

    fig = heatmap_figure(_line_df(), "server.replicas", "spec.k", "e2e_p99", scale=1.0)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "replicas" and ax.get_ylabel() == "draft length k (tokens)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["unstable (some replications)"]
    assert len(ax.collections[-1].get_offsets()) == 2  # replicas = 1 at k = 0 and k = 2


@pytest.mark.parametrize("bad", ["e2e_p99", "nope=3", "e2e_p99=fast", "e2e_p99=inf"])
def test_bad_targets_are_refused(bad: str) -> None:
    from sdsim.errors import ScenarioError
    from sdsim.plots import parse_targets

    with pytest.raises(ScenarioError, match="--target"):
        parse_targets([bad])


def test_small_scenario_predict_json_has_limit() -> None:
    scn = small()
    from sdsim import predict

    d = predict(scn, rates=[]).to_dict()
    assert d["saturation_limit"] in ("GPU", "KV cache", "admission cap")
