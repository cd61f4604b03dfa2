"""Hardware and model registries, config.json loading, and scenario validation of names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdsim import ScenarioError, load_scenario
from sdsim.hardware import GPUS, get_gpu
from sdsim.models import MODELS, eagle_head, load_hf_config, resolve_drafter, resolve_model
from tests.conftest import ROOT, small

REQUIRED_GPUS = {"a100-80gb", "h100-sxm", "h200", "b200", "l40s", "mi300x"}
REQUIRED_MODELS = {
    "llama-3.1-8b",
    "llama-3.1-70b",
    "llama-3.2-1b",
    "qwen3-1.7b",
    "qwen3-8b",
    "qwen3-14b",
    "qwen3-32b",
    "qwen3-30b-a3b",
    "gpt-oss-20b",
}


def test_registries_hold_the_design_names() -> None:
    assert REQUIRED_GPUS <= set(GPUS)
    assert REQUIRED_MODELS <= set(MODELS)


@pytest.mark.parametrize("name", sorted(REQUIRED_MODELS))
def test_parameter_count_matches_published_total(name: str) -> None:
    # Tolerance 2% (the registry's target): counts are derived from the architecture, not typed
    # in.
    m = MODELS[name]
    assert m.published_params is not None
    assert m.param_count() == pytest.approx(m.published_params, rel=0.02)


def test_moe_active_parameters() -> None:
    # Qwen's card: 3.3B activated of 30.5B; active counts only experts_per_token experts.
    q = MODELS["qwen3-30b-a3b"]
    assert q.active_param_count() == pytest.approx(3.3e9, rel=0.02)
    assert q.active_param_count() < q.param_count() / 8
    assert MODELS["llama-3.1-8b"].active_param_count() == MODELS["llama-3.1-8b"].param_count()


def test_gpu_specs_are_dense_peaks() -> None:
    h100 = get_gpu("h100-sxm")
    assert h100.bf16_tflops == pytest.approx(989.4)  # 1979 with sparsity, halved
    assert h100.mem_bytes_per_s == pytest.approx(3.35e12)
    assert get_gpu("H200").hbm_gb == 141
    assert get_gpu("a100-80gb").flops_per_s("fp8") == get_gpu("a100-80gb").flops_per_s("bf16")
    with pytest.raises(ScenarioError) as exc:
        get_gpu("h900")
    assert "h100-sxm" in str(exc.value) and str(exc.value).startswith("hardware")


def _write_config(tmp_path: Path, **over: object) -> Path:
    cfg = {
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": False,
        **over,
    }
    d = tmp_path / "my-llama"
    d.mkdir(exist_ok=True)
    p = d / "config.json"
    p.write_text(json.dumps(cfg))
    return p


def test_hf_config_loading_matches_registry(tmp_path: Path) -> None:
    p = _write_config(tmp_path)
    m = load_hf_config(p)
    assert m.name == "my-llama"
    assert m.head_dim == 128
    assert m.param_count() == MODELS["llama-3.1-8b"].param_count()
    assert resolve_model(str(p.parent)).param_count() == m.param_count()  # a folder works too


def test_hf_moe_config(tmp_path: Path) -> None:
    p = _write_config(
        tmp_path,
        model_type="qwen3_moe",
        hidden_size=2048,
        num_hidden_layers=48,
        num_key_value_heads=4,
        head_dim=128,
        moe_intermediate_size=768,
        intermediate_size=6144,
        num_experts=128,
        num_experts_per_tok=8,
        vocab_size=151936,
    )
    m = load_hf_config(p)
    assert (m.experts, m.experts_per_token, m.ffn, m.qk_norm) == (128, 8, 768, True)
    assert m.param_count() == pytest.approx(MODELS["qwen3-30b-a3b"].param_count(), rel=1e-6)


def test_bad_config_is_a_scenario_error(tmp_path: Path) -> None:
    p = _write_config(tmp_path, hidden_size="big")
    with pytest.raises(ScenarioError) as exc:
        load_hf_config(p)
    assert str(exc.value).startswith("target") and "hidden_size" in str(exc.value)
    with pytest.raises(ScenarioError, match="not found"):
        load_hf_config(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ScenarioError, match="JSON"):
        load_hf_config(bad)


def test_drafters() -> None:
    v = MODELS["llama-3.1-8b"]
    e = eagle_head(v)
    assert e.layers == 1 and e.input_fc == 2 * v.hidden and e.vocab == v.vocab
    assert resolve_drafter("eagle", None, v).prefills
    ng = resolve_drafter("ngram", None, v)
    assert ng.model is None and ng.cpu_s_per_seq > 0 and not ng.prefills
    assert resolve_drafter("model", "llama-3.2-1b", v).model == MODELS["llama-3.2-1b"]


@pytest.mark.parametrize(
    ("over", "field", "listed"),
    [
        ({"hardware": "h900"}, "hardware", "mi300x"),
        ({"target": "llama-9b"}, "target", "qwen3-8b"),
        ({"drafter": {"kind": "model", "model": "tiny-llama"}}, "drafter.model", "llama-3.2-1b"),
    ],
)
def test_unknown_names_list_known_ones(over: dict, field: str, listed: str) -> None:
    with pytest.raises(ScenarioError) as exc:
        small(**over)
    msg = str(exc.value)
    assert msg.startswith(field) and listed in msg and "\n" not in msg


def test_context_limit_is_checked() -> None:
    # Qwen3-8B accepts 40960 tokens: 40000 + 1000 is too long, 39000 + 1000 fits.
    with pytest.raises(ScenarioError) as exc:
        small(**{"target": "qwen3-8b", "workload.prompt_tokens": 40000,
                 "workload.output_tokens": 1000})
    assert str(exc.value).startswith("workload.output_tokens") and "40960" in str(exc.value)
    small(**{"target": "qwen3-8b", "workload.prompt_tokens": 39000, "workload.output_tokens": 1000})


def test_inline_hardware_and_config_target(tmp_path: Path) -> None:
    import sdsim

    cfg = _write_config(tmp_path)
    scn_file = tmp_path / "s.yaml"
    scn_file.write_text(
        "hardware: {name: my-gpu, bf16_tflops: 500, hbm_gb: 64, hbm_tbps: 2.0}\n"
        "target: my-llama/config.json\n"  # relative to the scenario file
        "costs: {source: auto}\n"
    )
    scn = load_scenario(scn_file)
    assert scn.target == str(cfg.resolve())
    slow = sdsim.step_time(scn, decode_seqs=1, context_tokens=100, k=0)
    fast = sdsim.step_time(scn.with_overrides({"hardware": "h100-sxm"}), 1, 100, k=0)
    # decode at batch 1 streams the weights: 2.0 TB/s vs 3.35 TB/s
    assert slow.verify / fast.verify == pytest.approx(3.35 / 2.0, rel=0.1)


def test_default_scenarios_use_the_calibrated_model() -> None:
    # `auto` is the calibrated model (the roofline prices steps too cheaply under load)
    for name in ("default", "plain"):
        scn = load_scenario(ROOT / "scenarios" / f"{name}.yaml")
        assert scn.costs.resolved_source == "calibrated"
    assert small().costs.source == "linear"
    assert load_scenario(None).costs.resolved_source == "calibrated"
