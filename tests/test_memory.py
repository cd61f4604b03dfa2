"""KV capacity derived from the registries (sdsim.memory): the start-up sum of a real engine."""

from __future__ import annotations

import warnings

import pytest

from sdsim import ScenarioError, load_scenario, simulate
from sdsim.memory import kv_capacity
from tests.conftest import ROOT, small

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's TestClient deprecation note
    from starlette.testclient import TestClient

SCN = ROOT / "scenarios"


def _blocks(free_bytes: float, per_token: float, block: int = 16) -> int:
    return int(free_bytes // (per_token * block))


def test_default_scenario_capacity_by_hand() -> None:
    """Llama-3.1-8B + EAGLE head on an H100 (80 GB x 0.9, 2 GB reserve), bf16.

    Parameters written out from the architecture: per layer 4096 x (4096 + 2 x 1024) QKV +
    4096 x 4096 O + 3 x 4096 x 14336 MLP + 2 x 4096 norms; 32 layers, untied 128256 x 4096
    embedding and LM head, final norm. The EAGLE head: one such layer, a 8192 -> 4096 fusion and
    a norm (its embedding and LM head are the verifier's). KV per token: 2 (K, V) x layers x
    8 heads x 128 x 2 bytes for the verifier (32 layers) and the head (1 layer).
    """
    layer = 4096 * (4096 + 2 * 1024) + 4096 * 4096 + 3 * 4096 * 14336 + 2 * 4096
    verifier = 32 * layer + 2 * 128256 * 4096 + 4096
    head = layer + 2 * 4096 * 4096 + 4096
    weights = 2.0 * (verifier + head)
    per_token = 2 * 32 * 8 * 128 * 2 + 2 * 1 * 8 * 128 * 2
    cap = kv_capacity(load_scenario(SCN / "default.yaml"))
    assert cap.source == "derived"
    assert cap.weight_bytes == pytest.approx(weights, rel=1e-12)
    assert cap.kv_bytes_per_token == per_token
    assert cap.blocks == _blocks(80e9 * 0.9 - weights - 2e9, per_token)
    # plain decoding loads no drafter: more memory, fewer bytes per token
    plain = kv_capacity(load_scenario(SCN / "plain.yaml"))
    assert plain.blocks == _blocks(80e9 * 0.9 - 2.0 * verifier - 2e9, 2 * 32 * 8 * 128 * 2)


def test_tensor_parallel_shards_and_unsharded_drafter() -> None:
    """70B at TP 4 with a separate 8B drafter (run at TP 1, whole on one GPU, as it is priced)."""
    scn = load_scenario(SCN / "llama70b-tp4-a100.yaml")
    cap = kv_capacity(scn)
    from sdsim.models import get_model

    w70 = 2.0 * get_model("llama-3.1-70b").param_count()
    w8 = 2.0 * get_model("llama-3.1-8b").param_count()
    assert cap.weight_bytes == pytest.approx(w70 / 4 + w8, rel=1e-12)
    # KV heads split over the 4 shards (8 -> 2 per GPU); the drafter keeps all 8
    assert cap.kv_bytes_per_token == 2 * 80 * 2 * 128 * 2 + 2 * 32 * 8 * 128 * 2
    # more shards leave more room per GPU
    assert kv_capacity(scn.with_overrides({"server.tp": 8})).blocks > cap.blocks


def test_precision_reserve_and_utilisation_move_capacity_the_right_way() -> None:
    base = load_scenario(SCN / "default.yaml")
    b0 = kv_capacity(base).blocks
    assert b0 is not None
    fp8 = kv_capacity(base.with_overrides({"costs.dtype": "fp8"})).blocks
    assert fp8 is not None and fp8 > 2 * b0  # half the KV bytes and half the weights
    assert kv_capacity(base.with_overrides({"server.activation_reserve_gb": 10})).blocks < b0
    assert kv_capacity(base.with_overrides({"server.gpu_memory_utilization": 0.5})).blocks < b0
    assert kv_capacity(base.with_overrides({"hardware": "h200"})).blocks > b0
    # given and unlimited capacities bypass the registries
    assert kv_capacity(base.with_overrides({"server.num_gpu_blocks": 123})).blocks == 123
    unl = kv_capacity(base.with_overrides({"server.num_gpu_blocks": "unlimited"}))
    assert unl.source == "unlimited" and unl.blocks is None


@pytest.mark.parametrize(
    ("path", "over", "field"),
    [
        ("llama70b-tp4-a100.yaml", {"server.tp": 1}, "hardware"),  # 141 GB on an 80 GB GPU
        ("default.yaml", {"hardware": "l40s", "target": "qwen3-32b"}, "hardware"),
        ("default.yaml", {"server.activation_reserve_gb": 60}, "server.num_gpu_blocks"),
        # 61 GB of MoE weights and a 6 GB reserve leave ~1.7 GB (~16k tokens): one 38k-token
        # request does not fit
        ("moe-qwen3-30b-a3b.yaml",
         {"workload.prompt_tokens": 30000, "workload.output_tokens": 8000,
          "server.activation_reserve_gb": 6}, "server.num_gpu_blocks"),
    ],
)
def test_scenarios_that_cannot_start_are_refused(path: str, over: dict, field: str) -> None:
    with pytest.raises(ScenarioError) as exc:
        load_scenario(SCN / path, over)
    assert exc.value.field == field


def test_a_smaller_gpu_runs_out_of_kv_memory() -> None:
    """The same load on a 21 GB card: the derived cache holds ~12 requests, so the engine
    preempts; with the limit switched off it never does. The summary reports the capacity."""
    hw = {"name": "h100-21gb", "bf16_tflops": 989.4, "hbm_gb": 21.0, "hbm_tbps": 3.35}
    tight = small(**{"hardware": hw, "server.num_gpu_blocks": None, "workload.rate": 40.0})
    cap = kv_capacity(tight)
    assert cap.source == "derived" and cap.blocks is not None and cap.blocks < 200
    s = simulate(tight).summary
    assert s["kv_blocks_total"] == cap.blocks and s["kv_capacity_source"] == "derived"
    assert s["preemptions"] > 0 and s["kv_peak_blocks"] <= cap.blocks
    free = simulate(tight.with_overrides({"server.num_gpu_blocks": "unlimited"})).summary
    assert free["preemptions"] == 0 and free["kv_blocks_total"] is None


def test_serve_refuses_a_request_the_kv_cache_cannot_hold() -> None:
    from sdsim.serve import create_app

    app = create_app(small(**{"server.num_gpu_blocks": 20}))  # 320 token slots
    with TestClient(app) as c:
        r = c.post("/v1/completions", json={"prompt": list(range(300)), "max_tokens": 50})
        assert r.status_code == 400 and "KV cache" in r.json()["error"]["message"]
        ok = c.post("/v1/completions", json={"prompt": list(range(100)), "max_tokens": 5})
        assert ok.status_code == 200
