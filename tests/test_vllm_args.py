"""`sdsim from-vllm`: a vllm serve command line as a scenario, every flag accounted for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdsim import ScenarioError, load_scenario
from sdsim.cli import main
from sdsim.models import hf_registry_name
from sdsim.vllm_args import parse_vllm_command

ISSUE = (
    "vllm serve meta-llama/Llama-3.1-70B-Instruct --tensor-parallel-size 4 --max-num-seqs 128 "
    "--max-num-batched-tokens 8192 --gpu-memory-utilization 0.9 --block-size 16 "
    '--speculative-config \'{"method": "eagle", "model": "yuhuili/EAGLE-LLaMA3.1-Instruct-70B", '
    '"num_speculative_tokens": 3}\' --enable-prefix-caching'
)


def all_flags(imp) -> list[str]:  # type: ignore[no-untyped-def]
    return (
        [f for f, _, _ in imp.carried]
        + [f for f, _, _ in imp.approximated]
        + [f for f, _, _ in imp.not_modelled]
        + [f for f, _, _ in imp.ignored]
        + [f for f, _ in imp.unknown]
    )


def test_the_issue_command() -> None:
    imp = parse_vllm_command(ISSUE)
    assert imp.overrides == {
        "target": "llama-3.1-70b",
        "server.tp": 4,
        "server.max_num_seqs": 128,
        "server.max_num_batched_tokens": 8192,
        "server.gpu_memory_utilization": 0.9,
        "server.block_size": 16,
        "drafter.kind": "eagle",
        "spec.k": 3,
        "spec.policy": "fixed",
        "server.prefix_caching": True,
    }
    assert ("--enable-prefix-caching", "", "server.prefix_caching") in imp.carried
    assert not imp.unknown
    scn = imp.scenario(load_scenario(None), "h100-sxm")
    assert (scn.target, scn.server.tp, scn.spec.k, scn.drafter.kind) == (
        "llama-3.1-70b",
        4,
        3,
        "eagle",
    )


def test_every_flag_is_accounted_for() -> None:
    cmd = (
        "python -m vllm.entrypoints.openai.api_server --model Qwen/Qwen3-8B -tp 2 "
        "--port=8000 --host 0.0.0.0 --served-model-name chat --kv-cache-dtype fp8 "
        "--max_num_seqs 64 --data-parallel-size 2 --no-enable-chunked-prefill --enforce-eager "
        '--speculative-config \'{"model": "ngram", "num_speculative_tokens": 4, '
        '"prompt_lookup_max": 4, "wibble": 1}\' --some-new-flag 7 --another-bool'
    )
    imp = parse_vllm_command(cmd)
    flags = all_flags(imp)
    for f in (
        "--tensor-parallel-size",
        "--port",
        "--host",
        "--served-model-name",
        "--kv-cache-dtype",
        "--max-num-seqs",
        "--data-parallel-size",
        "--no-enable-chunked-prefill",
        "--enforce-eager",
        "--some-new-flag",
        "--another-bool",
        "--speculative-config prompt_lookup_max",
        "--speculative-config wibble",
    ):
        assert f in flags, f
    assert ("--some-new-flag", "7") in imp.unknown
    assert ("--speculative-config wibble", "1") in imp.unknown
    o = imp.overrides
    assert o["target"] == "qwen3-8b" and o["server.tp"] == 2 and o["server.max_num_seqs"] == 64
    assert o["server.replicas"] == 2 and o["server.scheduler"] == "prefill-first"
    assert o["drafter.kind"] == "ngram" and o["spec.k"] == 4


def test_speculative_methods() -> None:
    def spec(cfg: dict[str, object]) -> dict[str, object]:
        return parse_vllm_command(
            ["vllm", "serve", "meta-llama/Llama-3.1-70B", "--speculative-config", json.dumps(cfg)]
        ).overrides

    assert spec({"model": "meta-llama/Llama-3.2-1B-Instruct", "num_speculative_tokens": 5}) == {
        "target": "llama-3.1-70b",
        "drafter.kind": "model",
        "drafter.model": "llama-3.2-1b",
        "spec.k": 5,
        "spec.policy": "fixed",
    }
    assert (
        spec({"method": "eagle3", "model": "x/EAGLE3", "num_speculative_tokens": 2})["drafter.kind"]
        == "eagle"
    )
    assert spec({"method": "ngram", "num_speculative_tokens": 3})["drafter.kind"] == "ngram"
    no_k = parse_vllm_command(
        ["vllm", "serve", "Qwen/Qwen3-8B", "--speculative-config", '{"method": "mtp"}']
    )
    assert "spec.k" not in no_k.overrides and no_k.approximated
    plain = parse_vllm_command("vllm serve Qwen/Qwen3-8B")
    assert plain.overrides["spec.k"] == 0


def test_hf_names() -> None:
    assert hf_registry_name("meta-llama/Meta-Llama-3.1-8B-Instruct") == "llama-3.1-8b"
    assert hf_registry_name("RedHatAI/Llama-3.3-70B-Instruct-FP8") == "llama-3.1-70b"
    assert hf_registry_name("Qwen/Qwen3-30B-A3B") == "qwen3-30b-a3b"
    assert hf_registry_name("mistralai/Mistral-7B-v0.1") is None
    fp8 = parse_vllm_command("vllm serve RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8")
    assert fp8.overrides["costs.dtype"] == "fp8"


@pytest.mark.parametrize(
    ("cmd", "needle"),
    [
        ("vllm serve", "no model"),
        ("vllm serve mistralai/Mistral-7B-v0.1", "not a model sdsim knows"),
        ("vllm serve Qwen/Qwen3-8B -tp four", "--tensor-parallel-size"),
        ("vllm serve Qwen/Qwen3-8B --speculative-config '{bad'", "--speculative-config"),
        ("vllm serve Qwen/Qwen3-8B --speculative-config '[1]'", "JSON object"),
        ("vllm serve 'Qwen/Qwen3-8B", "cannot split"),
    ],
)
def test_bad_commands(cmd: str, needle: str) -> None:
    with pytest.raises(ScenarioError, match=needle):
        parse_vllm_command(cmd)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "scenario.yaml"
    main(["from-vllm", ISSUE + " --frobnicate 3", "--hardware", "h100-sxm", "--out", str(out)])
    text = capsys.readouterr().out
    assert "--frobnicate" in text and "unknown" in text and "--enable-prefix-caching" in text
    scn = load_scenario(out)
    assert scn.hardware == "h100-sxm" and scn.server.tp == 4 and scn.spec.k == 3
    with pytest.raises(SystemExit) as exc:
        main(["from-vllm", "vllm serve Qwen/Qwen3-8B -tp x"])
    assert exc.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "--tensor-parallel-size" in err[0]
    # a deployment that cannot run (70B weights on one 80 GB GPU) is bad input, named
    with pytest.raises(SystemExit) as exc:
        main(["from-vllm", "vllm serve meta-llama/Llama-3.1-70B", "--hardware", "h100-sxm"])
    assert exc.value.code == 2
