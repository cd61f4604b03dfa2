"""The shipped table of public serving measurements is well formed and complete."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from sdsim.hardware import gpu_names
from tests.conftest import ROOT, SHARED

TABLE = ROOT / "sdsim" / "data" / "calibration" / "public-measurements.csv"
BATCH1 = SHARED / "data" / "calibration" / "spec-decode-batch1-h100.csv"

COLUMNS = [
    "source", "gpu", "engine", "engine_version", "target", "drafter", "tp", "dtype", "dataset",
    "prompt_tokens", "output_tokens", "concurrency", "request_rate", "k", "acceptance_length",
    "metric", "value", "notes",
]
# the README documents each of these
METRICS = {
    "step_ms", "tpot_ms", "itl_ms", "ttft_ms", "e2e_s", "output_tok_per_s", "request_tok_per_s",
    "request_per_s", "throughput_speedup",
}


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return pd.read_csv(TABLE)


def test_columns_and_vocabularies(table: pd.DataFrame) -> None:
    assert list(table.columns) == COLUMNS
    assert set(table.metric) <= METRICS
    assert set(table.gpu) <= set(gpu_names())
    assert set(table.engine) <= {"vllm", "sglang"}
    fixed = {"none", "eagle-1", "eagle-3", "ngram", "mtp"}
    assert all(d in fixed or d.startswith("model:") for d in table.drafter)
    assert table.source.str.len().min() > 0
    assert table.notes.str.match(r"(fit|check): ").all()
    assert (table.value > 0).all()
    # a row without speculation never has k > 0, a row with it never has k == 0
    assert not (table.drafter.eq("none") & table.k.gt(0)).any()
    assert not (table.drafter.ne("none") & table.k.eq(0)).any()


def test_load_columns_parse(table: pd.DataFrame) -> None:
    rates = table.request_rate.dropna().astype(str)
    assert all(r == "inf" or float(r) > 0 for r in rates)
    conc = table.concurrency.dropna()
    assert ((conc >= 1) & (conc == conc.round())).all()
    al = table.acceptance_length.dropna()
    assert ((al >= 1.0) & (al <= table.loc[al.index, "k"] + 1)).all()


def test_derived_steps_are_tpot_times_acceptance(table: pd.DataFrame) -> None:
    steps = table[table.metric.eq("step_ms") & table.notes.str.contains("derived")]
    assert len(steps) >= 13
    for _, s in steps.iterrows():
        tpot = table[
            table.metric.eq("tpot_ms") & table.source.eq(s.source) & table.drafter.eq(s.drafter)
            & table.k.eq(s.k)
        ]
        assert len(tpot) == 1
        assert math.isclose(s.value, tpot.value.iloc[0] * s.acceptance_length, abs_tol=0.006)


@pytest.mark.skipif(not BATCH1.exists(), reason="shared calibration data absent")
def test_batch1_rows_are_all_carried_over(table: pd.DataFrame) -> None:
    old = pd.read_csv(BATCH1)
    for _, r in old.iterrows():
        if pd.notna(r.tpot_ms):
            metric, value = "tpot_ms", r.tpot_ms
        else:
            metric, value = "output_tok_per_s", r.output_tok_per_s
        hit = table[
            table.source.str.startswith(r.source) & table.drafter.eq(r.drafter) & table.k.eq(r.k)
            & table.metric.eq(metric) & table.value.eq(value)
        ]
        assert len(hit) == 1, r.to_dict()
        if pd.notna(r.acceptance_length):
            assert hit.acceptance_length.iloc[0] == r.acceptance_length
