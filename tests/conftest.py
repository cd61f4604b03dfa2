"""Shared fixtures: small fast scenarios."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sdsim.scenario import Scenario, scenario_from_dict

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def small(**over: Any) -> Scenario:
    """A small scenario (hundreds of requests) with dotted overrides."""
    from sdsim.scenario import apply_overrides

    base: dict[str, Any] = {
        "name": "small",
        "spec": {"k": 4},
        "acceptance": {"alpha": 0.7},
        "workload": {
            "arrival": "poisson",
            "rate": 20.0,
            "num_requests": 300,
            "prompt_tokens": 128,
            "output_tokens": 64,
        },
        "costs": {"source": "linear"},  # pinned: tests compare against the linear formulas
        # pinned: reference formulas (queueing oracles, analytic model) know no KV limit; tests
        # of the KV cache set server.num_gpu_blocks themselves
        "server": {"num_gpu_blocks": "unlimited"},
        "warmup_requests": 20,
        "seed": 1,
    }
    return scenario_from_dict(apply_overrides(base, over))


@pytest.fixture
def small_scenario() -> Scenario:
    return small()
