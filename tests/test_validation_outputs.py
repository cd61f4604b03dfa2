"""What `sdsim validate` leaves on disk: one atomic run per directory (sdsim.outputs), the map
files beside the per-scenario directories with --all. Built from the committed map results
(notebooks/data/validation-all.csv), so no simulation runs here."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from sdsim.analytic.validation import (
    MAP_FILES,
    SCENARIO_FILES,
    report_layout,
    reports_from_csv,
    write_reports,
)
from sdsim.errors import ScenarioError
from sdsim.outputs import MANIFEST, output_dir
from sdsim.scenario import load_scenario
from tests.conftest import ROOT

MAP_CSV = ROOT / "notebooks" / "data" / "validation-all.csv"


def _two() -> tuple[list, list]:
    reports = [r for r in reports_from_csv(MAP_CSV) if r.scenario in ("default", "plain")]
    scns = [load_scenario(ROOT / "scenarios" / f"{r.scenario}.yaml") for r in reports]
    return reports, scns


def test_reports_from_csv_recover_the_saturation_rate() -> None:
    reports, _ = _two()
    assert [r.scenario for r in reports] == ["default", "plain"]
    for r in reports:
        assert (r.table["rate"] / r.saturation_rate).round(3).equals(r.table["fraction"].round(3))


def test_all_writes_the_map_beside_one_directory_per_scenario(tmp_path: Path) -> None:
    reports, scns = _two()
    layout = report_layout([s.name for s in scns], tmp_path)
    assert layout == {tmp_path: MAP_FILES, tmp_path / "default": SCENARIO_FILES,
                      tmp_path / "plain": SCENARIO_FILES}
    files = write_reports(reports, scns, tmp_path)
    assert sorted(f.relative_to(tmp_path).as_posix() for f in files) == sorted(
        [*MAP_FILES, *(f"{n}/{f}" for n in ("default", "plain") for f in SCENARIO_FILES)]
    )
    allt = pd.read_csv(tmp_path / "validation-all.csv")
    assert set(allt["scenario"]) == {"default", "plain"}
    assert len(allt) == sum(len(r.table) for r in reports)
    for d, names in layout.items():
        manifest = json.loads((d / MANIFEST).read_text())
        assert manifest["files"] == list(names)
        assert not list(d.glob(".*.tmp*"))  # atomic writes leave no temporaries
    meta = json.loads((tmp_path / "default" / "validation.csv.meta.json").read_text())
    assert meta["scenario"] == "default" and "units" in meta
    # a second run into the same directories is accounted for by the manifests
    for d, names in layout.items():
        output_dir(d, names)


def test_foreign_files_in_a_scenario_directory_are_refused_before_any_work(
    tmp_path: Path,
) -> None:
    # a run's output that no manifest accounts for (it would be mixed with this run's)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "requests.csv").write_text("someone else's\n")
    with pytest.raises(ScenarioError) as exc:
        for d, names in report_layout(["default", "plain"], tmp_path).items():
            output_dir(d, names, "--out")
    assert exc.value.field == "--out" and "requests.csv" in exc.value.message
