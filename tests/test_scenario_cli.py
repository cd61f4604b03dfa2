"""Scenario loading/overrides and the CLI contract (files written, exit code 2 on bad input)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sdsim import ScenarioError, load_scenario
from sdsim.cli import main
from tests.conftest import ROOT


def test_default_scenario_loads_and_overrides() -> None:
    scn = load_scenario(ROOT / "scenarios/default.yaml", {"workload.rate": 4.0, "spec.k": 3})
    assert scn.workload.rate == 4.0 and scn.spec.k == 3
    assert scn.target == "llama-3.1-8b"
    # frozen
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        scn.spec.k = 2  # type: ignore[misc]


def test_override_expands_shorthand_length() -> None:
    scn = load_scenario(
        ROOT / "scenarios/default.yaml",
        {"workload.output_tokens": {"dist": "lognormal", "mean": 200, "cv": 0.5}},
    )
    assert scn.workload.output_tokens.dist == "lognormal"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"workload.rate": -1}, "workload.rate"),
        ({"workload.rat": 3}, "workload.rat"),
        ({"acceptance.alpha": 1.5}, "acceptance.alpha"),
        ({"spec.k": -1}, "spec.k"),
        ({"spec.k": 99}, "spec.k"),
        ({"workload.output_tokens": 0}, "workload.output_tokens"),
        ({"workload.rate": "fast"}, "workload.rate"),
        ({"workload.rate": float("nan")}, "workload.rate"),
    ],
)
def test_bad_values_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ScenarioError) as exc:
        load_scenario(ROOT / "scenarios/default.yaml", overrides)
    assert str(exc.value).startswith(field), str(exc.value)
    assert "\n" not in str(exc.value)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sdsim.cli", *args], capture_output=True, text=True, cwd=ROOT
    )


def test_cli_run_writes_four_files(tmp_path: Path) -> None:
    out = tmp_path / "run1"
    main(
        [
            "run",
            str(ROOT / "scenarios/default.yaml"),
            "--set",
            "workload.num_requests=300",
            "--set",
            "warmup_requests=20",
            "--seed",
            "3",
            "--out",
            str(out),
        ]
    )
    for name in ("requests.csv", "steps.csv", "summary.json", "scenario.yaml"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seed"] == 3 and summary["completed"] == 300
    again = load_scenario(out / "scenario.yaml")
    assert again.workload.num_requests == 300


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "scenarios/default.yaml", "--set", "workload.rate=-2"], "workload.rate"),
        (["run", "scenarios/default.yaml", "--set", "spec.kk=2"], "spec.kk"),
        (["run", "no/such/file.yaml"], "no/such/file.yaml"),
        (["run", "scenarios/default.yaml", "--set", "novalue"], "--set"),
    ],
)
def test_cli_bad_input_exit_2_one_line(args: list[str], needle: str) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr


def test_cli_invalid_yaml_and_empty(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("workload: [unclosed\n")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    for f, needle in ((bad, "invalid YAML"), (empty, "empty")):
        proc = run_cli("run", str(f))
        assert proc.returncode == 2
        assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_schema_command_prints_json() -> None:
    proc = run_cli("schema")
    assert proc.returncode == 0
    schema = json.loads(proc.stdout)
    assert "workload" in schema["properties"]
