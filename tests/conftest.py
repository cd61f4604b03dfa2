"""Shared fixtures: small fast scenarios."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

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


# Hypothesis profiles: `ci` (default: few examples, derandomized so CI is deterministic and fast)
# and `thorough` (HYPOTHESIS_PROFILE=thorough: hundreds of random examples, for a nightly or a
# pre-release run). Tests that pin their own `@settings` keep them.
settings.register_profile(
    "ci",
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    print_blob=True,
)
settings.register_profile(
    "thorough",
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
