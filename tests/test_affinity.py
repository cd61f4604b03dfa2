"""The prefix-affinity router (sdsim/engine/router.py): keys, stickiness, the imbalance fallback,
one replica equal to the single engine, bad settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sdsim import simulate
from sdsim.cli import main
from sdsim.engine.router import Router, affinity_keys
from sdsim.workload import generate_workload
from tests.conftest import small

SHARED = {
    "workload.shared_prefix": {
        "prompts": 8,
        "tokens": {"dist": "uniform", "low": 100, "high": 400},
        "popularity": "zipf",
        "zipf_s": 1.1,
    },
    "server.num_gpu_blocks": 400,
}
SESSIONS = {
    "workload.shared_prefix": {"prompts": 1, "tokens": 64},
    "workload.sessions": {
        "turns": {"dist": "geometric", "mean": 3.0, "max": 8},
        "think_time_s": {"dist": "exponential", "mean": 2.0},
    },
    "workload.num_requests": 200,
}


def test_keys_name_the_blocks_the_cache_shares() -> None:
    # rows: prefix 2 (one full block and more), prefix 5 shorter than a block (nothing shared to
    # route by), no prefix, a conversation (its key wins over its system prompt's)
    group = np.array([2, 5, -1, 2], dtype=np.int64)
    plen = np.array([40, 10, 0, 40], dtype=np.int64)
    conv = np.array([-1, -1, -1, 7], dtype=np.int64)
    keys = affinity_keys(group, plen, conv, 16, 4)
    np.testing.assert_array_equal(keys, [8, -1, -1, 29])
    np.testing.assert_array_equal(affinity_keys(None, None, None, 16, 3), [-1, -1, -1])


def test_sticky_and_deterministic_when_balanced() -> None:
    keys = np.arange(64, dtype=np.int64) * 4  # 64 shared prefixes, each asked 5 times
    rows = np.tile(np.arange(64), 5)
    r = Router("prefix-affinity", 4, 320, keys=keys[rows], imbalance=0)
    again = Router("prefix-affinity", 4, 320, keys=keys[rows], imbalance=0, seed=99)
    picks = [r.choose(i) for i in range(320)]  # outstanding all 0: balanced
    assert picks == [again.choose(i) for i in range(320)]  # no seed, no state: the same
    home = np.array(picks[:64])
    np.testing.assert_array_equal(np.array(picks).reshape(5, 64), np.tile(home, (5, 1)))
    # the hash spreads 64 keys over the 4 replicas (each Binomial(64, 1/4): 16 +- 3.5)
    assert (np.bincount(home, minlength=4) >= 6).all()


def test_falls_back_to_least_outstanding_beyond_the_bound() -> None:
    keys = np.array([4 * 3, -1], dtype=np.int64)
    r = Router("prefix-affinity", 4, 2, keys=keys, imbalance=2)
    home = r.choose(0)
    least = (home + 1) % 4
    r.outstanding[:] = 5
    r.outstanding[least] = 3
    assert r.choose(0) == home  # 5 - 3 = 2: within the bound, stays home
    r.outstanding[home] = 6
    assert r.choose(0) == least  # 6 - 3 = 3 > 2: the emptiest replica
    assert r.choose(1) == least  # no key: least-outstanding
    r.outstanding[:] = 0
    assert r.choose(1) == 0  # ties to the lowest index, as least-outstanding


def test_shared_prefixes_stay_on_their_replica_in_a_run() -> None:
    # With an unreachable bound every request of a prefix lands on one replica and hits there.
    over = {**SHARED, "server.replicas": 4, "server.router": "prefix-affinity"}
    scn = small(**over, **{"server.affinity_imbalance": 1_000_000})
    res = simulate(scn, seed=3)
    wl = generate_workload(scn, 3)
    assert wl.prefix_group is not None
    df = res.requests.assign(group=wl.prefix_group)
    assert (df.groupby("group")["replica"].nunique() == 1).all()
    assert df["replica"].nunique() > 1
    pd.testing.assert_frame_equal(res.requests, simulate(scn, seed=3).requests)
    # the default bound (16) moves some requests off their home under the Zipf-skewed load,
    # and hits more of the prompt than round-robin (each prompt cached on one replica)
    rr = simulate(small(**SHARED, **{"server.replicas": 4}), seed=3).summary
    assert res.summary["prefix_hit_rate"] > rr["prefix_hit_rate"]


def test_conversations_stay_on_their_replica() -> None:
    over = {**SESSIONS, "server.replicas": 3, "server.router": "prefix-affinity"}
    res = simulate(small(**over, **{"server.affinity_imbalance": 1_000_000}), seed=2)
    df = res.requests
    assert (df.groupby("session")["replica"].nunique() == 1).all()
    assert df["replica"].nunique() == 3
    assert res.summary["completed"] == 200


@pytest.mark.parametrize("over", [SHARED, SESSIONS], ids=["shared-prefix", "sessions"])
def test_one_replica_is_the_single_engine(over: dict[str, object]) -> None:
    base = simulate(small(**over), seed=4)
    for router in ("least-outstanding", "prefix-affinity"):
        one = simulate(small(**over, **{"server.replicas": 1, "server.router": router}), seed=4)
        pd.testing.assert_frame_equal(base.requests, one.requests)
        pd.testing.assert_frame_equal(base.steps, one.steps)


@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ("server.affinity_imbalance=-1", "server.affinity_imbalance"),
        ("server.affinity_imbalance=lots", "server.affinity_imbalance"),
        ("server.router=prefix", "server.router"),
    ],
)
def test_bad_settings_exit_2_with_one_line(
    setting: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    default = str(Path(__file__).resolve().parents[1] / "scenarios" / "default.yaml")
    with pytest.raises(SystemExit) as exc:
        main(["run", default, "--set", "workload.num_requests=20", "--set", setting])
    assert exc.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], lines
