"""A deployment described the way users launch it: a ``vllm serve`` command line as a scenario.

Every flag of the command is accounted for in one of five lists (:class:`VllmImport`), never
dropped silently:

* **carried**: the flag sets a scenario field (``--tensor-parallel-size 4`` -> ``server.tp``);
* **approximated**: the flag maps to the nearest thing sdsim models, with a note saying how;
* **not modelled**: the flag changes serving in a way sdsim does not model (pipeline
  parallelism, CPU offload, ...);
* **ignored**: the flag has no effect on latency or capacity (host, port, API key, logging);
* **unknown**: a flag this importer does not know (listed with the value it appeared to take).

Flag names and the ``--speculative-config`` keys follow vLLM's own (``vllm/engine/arg_utils.py``
and ``vllm/config/speculative.py``): ``method`` (``eagle``, ``eagle3``, ``ngram``,
``draft_model``, ``mtp``, ``medusa``, ``mlp_speculator``, ``suffix``), ``model``,
``num_speculative_tokens``, ``draft_tensor_parallel_size``, ``prompt_lookup_max``/``_min``; a
``model`` without a ``method`` is a separate draft model (``ngram`` when the model is
``ngram``/``[ngram]``), as vLLM decides. The older flags (``--speculative-model``,
``--num-speculative-tokens``, ``--ngram-prompt-lookup-max``) are read too. Both ``--flag value``
and ``--flag=value`` forms are read; vLLM treats ``_`` and ``-`` in flag names alike, and so does
this importer. Hugging Face model names are mapped to the registry
(:func:`sdsim.models.hf_registry_name`).
"""

from __future__ import annotations

__all__ = ["VllmImport", "parse_vllm_command"]

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sdsim.errors import ScenarioError
from sdsim.models import hf_registry_name, model_names
from sdsim.scenario import Scenario

# Flags that take no value (store_true / BooleanOptionalAction in vLLM).
_BOOLEAN = {
    "enable-prefix-caching",
    "no-enable-prefix-caching",
    "enable-chunked-prefill",
    "no-enable-chunked-prefill",
    "enforce-eager",
    "no-enforce-eager",
    "trust-remote-code",
    "disable-log-requests",
    "disable-log-stats",
    "enable-log-requests",
    "disable-custom-all-reduce",
    "enable-auto-tool-choice",
    "enable-expert-parallel",
    "disable-sliding-window",
    "enable-lora",
    "enable-sleep-mode",
    "disable-frontend-multiprocessing",
    "enable-request-id-headers",
    "disable-fastapi-docs",
    "headless",
}

# Flags with no effect on latency or capacity in sdsim's model (and why).
_IGNORED = {
    "host": "network address",
    "port": "network address",
    "uds": "network address",
    "api-key": "authentication",
    "served-model-name": "API name",
    "trust-remote-code": "model loading",
    "download-dir": "model loading",
    "load-format": "model loading",
    "revision": "model version",
    "code-revision": "model version",
    "tokenizer": "tokenizer choice",
    "tokenizer-mode": "tokenizer choice",
    "tokenizer-revision": "tokenizer choice",
    "hf-token": "authentication",
    "disable-log-requests": "logging",
    "enable-log-requests": "logging",
    "disable-log-stats": "logging",
    "uvicorn-log-level": "logging",
    "chat-template": "prompt formatting",
    "response-role": "API behaviour",
    "enable-auto-tool-choice": "API behaviour",
    "tool-call-parser": "API behaviour",
    "reasoning-parser": "API behaviour",
    "generation-config": "sampling defaults",
    "seed": "sampling seed (sdsim's run seed is the scenario's)",
    "allowed-origins": "HTTP",
    "allowed-methods": "HTTP",
    "allowed-headers": "HTTP",
    "allow-credentials": "HTTP",
    "ssl-keyfile": "HTTP",
    "ssl-certfile": "HTTP",
    "root-path": "HTTP",
    "middleware": "HTTP",
    "disable-fastapi-docs": "HTTP",
    "enable-request-id-headers": "HTTP",
    "max-log-len": "logging",
    "guided-decoding-backend": "structured output (not used by the modelled requests)",
    "structured-outputs-config": "structured output (not used by the modelled requests)",
}

# Flags that change serving in ways sdsim does not model (and what is lost).
_NOT_MODELLED = {
    "max-model-len": "context cap (sdsim bounds requests by the model's context)",
    "kv-cache-dtype": "KV cache precision alone (sdsim's costs.dtype sets weights and KV together)",
    "pipeline-parallel-size": "pipeline parallelism",
    "cpu-offload-gb": "CPU weight offload",
    "swap-space": "CPU swap space (sdsim preempts by recomputation)",
    "enforce-eager": "eager mode (no CUDA graphs: more CPU time per step; set costs.overhead_s)",
    "no-enforce-eager": "CUDA graphs on: what sdsim's overhead assumes",
    "scheduling-policy": "priority scheduling (sdsim serves first come, first served)",
    "max-num-partial-prefills": "concurrent partial prefills",
    "max-long-partial-prefills": "concurrent partial prefills",
    "long-prefill-token-threshold": "long-prefill budget",
    "enable-expert-parallel": "expert parallelism",
    "compilation-config": "torch.compile settings",
    "cuda-graph-sizes": "CUDA graph sizes",
    "cudagraph-capture-sizes": "CUDA graph sizes",
    "disable-custom-all-reduce": "all-reduce kernel choice",
    "distributed-executor-backend": "executor backend",
    "attention-backend": "attention kernel choice",
    "enable-lora": "LoRA adapters",
    "max-loras": "LoRA adapters",
    "max-lora-rank": "LoRA adapters",
    "disable-sliding-window": "sliding-window attention off",
    "limit-mm-per-prompt": "multimodal inputs",
    "config": "arguments in a config file are not read: pass them on the command line",
    "hf-overrides": "model config overrides",
    "rope-scaling": "RoPE scaling",
    "enable-sleep-mode": "sleep mode",
    "async-scheduling": "asynchronous scheduling",
    "speculative-draft-tensor-parallel-size": "draft model tensor parallelism (sdsim runs "
    "separate draft models on one GPU)",
}

# --speculative-config methods sdsim prices as another drafter, and how.
_SPEC_APPROX = {
    "eagle3": ("eagle", "EAGLE-3 is priced as an EAGLE-style one-layer head"),
    "mtp": ("eagle", "an MTP module is priced as an EAGLE-style one-layer head"),
    "deepseek_mtp": ("eagle", "an MTP module is priced as an EAGLE-style one-layer head"),
    "medusa": (
        "eagle",
        "Medusa heads are priced as an EAGLE-style one-layer head (an upper "
        "bound: Medusa's heads are smaller)",
    ),
    "mlp_speculator": (
        "eagle",
        "an MLP speculator is priced as an EAGLE-style one-layer head (an upper bound)",
    ),
    "suffix": ("ngram", "suffix decoding is priced as n-gram lookup (a CPU-side proposer)"),
    "ngram_gpu": ("ngram", "GPU n-gram lookup is priced as CPU n-gram lookup"),
}
_SPEC_KEYS_NOT_MODELLED = {
    "draft_tensor_parallel_size": "draft model tensor parallelism (sdsim runs separate draft "
    "models on one GPU)",
    "prompt_lookup_max": "n-gram window (sdsim prices n-gram lookup per request, not per window)",
    "prompt_lookup_min": "n-gram window",
    "quantization": "draft model quantisation",
    "max_model_len": "draft context cap",
    "revision": "draft model version",
    "disable_padded_drafter_batch": "drafter batch padding",
    "rejection_sample_method": "rejection sampling method (acceptance comes from acceptance.alpha)",
    "draft_sample_method": "draft sampling method (acceptance comes from acceptance.alpha)",
    "num_speculative_tokens_per_batch_size": "batch-size schedule of k (sdsim: spec.policy "
    "adaptive picks k per step)",
    "parallel_drafting": "parallel drafting",
    "enforce_eager": "eager drafter",
}


@dataclass
class VllmImport:
    """What a ``vllm serve`` command says, as scenario overrides plus an account of every flag.

    Attributes
    ----------
    model
        The served model as given (a Hugging Face name or a path).
    overrides
        Dotted scenario field -> value.
    carried
        ``(flag, value, field)`` for every flag that set a field.
    approximated
        ``(flag, value, note)``.
    not_modelled
        ``(flag, value, what sdsim does not model)``.
    ignored
        ``(flag, value, why it does not matter)``.
    unknown
        ``(flag, value)`` for flags this importer does not know.
    notes
        Other things the user should know (defaults taken from the base scenario, ...).
    """

    model: str
    overrides: dict[str, Any] = field(default_factory=dict)
    carried: list[tuple[str, str, str]] = field(default_factory=list)
    approximated: list[tuple[str, str, str]] = field(default_factory=list)
    not_modelled: list[tuple[str, str, str]] = field(default_factory=list)
    ignored: list[tuple[str, str, str]] = field(default_factory=list)
    unknown: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def scenario(self, base: Scenario, hardware: str | None = None) -> Scenario:
        """``base`` with this command's overrides (and ``hardware``, the GPU the command runs
        on, which the command line itself does not say) applied and validated.

        Raises
        ------
        ScenarioError
            The deployment is not a valid scenario (weights that do not fit the GPU at that
            tensor parallelism, ...).
        """
        ov = dict(self.overrides)
        if hardware is not None:
            ov["hardware"] = hardware
        return base.with_overrides(ov)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (``sdsim from-vllm --json``)."""
        return {
            "model": self.model,
            "overrides": self.overrides,
            "carried": [{"flag": f, "value": v, "field": t} for f, v, t in self.carried],
            "approximated": [{"flag": f, "value": v, "note": n} for f, v, n in self.approximated],
            "not_modelled": [{"flag": f, "value": v, "what": n} for f, v, n in self.not_modelled],
            "ignored": [{"flag": f, "value": v, "why": n} for f, v, n in self.ignored],
            "unknown": [{"flag": f, "value": v} for f, v in self.unknown],
            "notes": self.notes,
        }


def _tokens(command: str | list[str]) -> list[str]:
    if isinstance(command, str):
        try:
            toks = shlex.split(command)
        except ValueError as exc:
            raise ScenarioError("command", f"cannot split the command line: {exc}") from None
    else:
        toks = list(command)
    # drop the launcher: `vllm serve`, `python -m vllm.entrypoints.openai.api_server`, ...
    for i, t in enumerate(toks):
        if t == "serve" and i > 0 and toks[i - 1].endswith("vllm"):
            return toks[i + 1 :]
        if "vllm.entrypoints" in t:
            return toks[i + 1 :]
    if toks and toks[0].endswith("vllm"):
        toks = toks[1:]
    if toks and toks[0] == "serve":
        toks = toks[1:]
    return toks


_SHORT = {
    "tp": "tensor-parallel-size",
    "pp": "pipeline-parallel-size",
    "dp": "data-parallel-size",
    "q": "quantization",
}


def _flags(tokens: list[str]) -> tuple[str | None, list[tuple[str, str | None]]]:
    """The positional model (if any) and ``(flag, value)`` pairs in order."""
    model: str | None = None
    out: list[tuple[str, str | None]] = []
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if not t.startswith("-") or t == "-":
            if model is None and not out:
                model = t
            else:
                out.append(("", t))  # a stray positional: reported as unknown
            i += 1
            continue
        name = t.lstrip("-")
        value: str | None = None
        if "=" in name:
            name, value = name.split("=", 1)
        name = name.replace("_", "-")
        name = _SHORT.get(name, name)
        if value is None and name not in _BOOLEAN and i + 1 < len(tokens):
            nxt = tokens[i + 1]
            if not nxt.startswith("--") and not (nxt.startswith("-") and nxt[1:2].isalpha()):
                value = nxt
                i += 1
        out.append((name, value))
        i += 1
    return model, out


def _int(flag: str, value: str | None) -> int:
    try:
        v = int(str(value))
    except ValueError:
        raise ScenarioError(f"--{flag}", f"expected a whole number, got {value!r}") from None
    return v


def _float(flag: str, value: str | None) -> float:
    try:
        return float(str(value))
    except ValueError:
        raise ScenarioError(f"--{flag}", f"expected a number, got {value!r}") from None


def _registry(ref: str, what: str, imp: VllmImport) -> str:
    """A model reference as the scenario names it: the registry name of a Hugging Face
    repository, or the reference itself (a local path to a config.json)."""
    name = hf_registry_name(ref)
    if name is not None:
        if name != ref:
            imp.notes.append(f"{what} {ref!r} is registry model {name!r}")
        return name
    if ref.endswith(".json") or ref.startswith(("/", ".")):
        return ref
    raise ScenarioError(
        what,
        f"{ref!r} is not a model sdsim knows; known: {', '.join(model_names())} (or give the path "
        "to its config.json)",
    )


def _speculative(raw: str | None, imp: VllmImport, flag: str = "speculative-config") -> None:
    try:
        cfg = json.loads(raw or "")
    except json.JSONDecodeError as exc:
        raise ScenarioError(f"--{flag}", f"is not valid JSON ({exc.msg})") from None
    if not isinstance(cfg, dict):
        raise ScenarioError(f"--{flag}", "must be a JSON object (method, model, ...)")
    shown = json.dumps(cfg, separators=(",", ":"))
    method = cfg.get("method")
    model = cfg.get("model")
    if method is None:
        method = "ngram" if model in ("ngram", "[ngram]") else "draft_model"
        if isinstance(model, str) and "eagle" in model.lower():
            imp.notes.append(
                f"speculative model {model!r} has no method: vLLM loads it as a draft model; "
                'add "method": "eagle" (or "eagle3") for an EAGLE head'
            )
    method = str(method)
    if method in ("ngram", "[ngram]"):
        imp.overrides["drafter.kind"] = "ngram"
        imp.carried.append((f"--{flag} method", method, "drafter.kind"))
    elif method == "eagle":
        imp.overrides["drafter.kind"] = "eagle"
        imp.carried.append((f"--{flag} method", method, "drafter.kind"))
    elif method == "draft_model":
        if not isinstance(model, str) or not model:
            raise ScenarioError(f"--{flag}", 'a draft model needs "model": its name or path')
        imp.overrides["drafter.kind"] = "model"
        imp.overrides["drafter.model"] = _registry(model, "drafter.model", imp)
        imp.carried.append((f"--{flag} model", model, "drafter.model"))
    elif method in _SPEC_APPROX:
        kind, note = _SPEC_APPROX[method]
        imp.overrides["drafter.kind"] = kind
        imp.approximated.append((f"--{flag} method", method, note))
    else:
        imp.unknown.append((f"--{flag} method", method))
        imp.notes.append(f"speculative method {method!r} is unknown: the drafter stays the base's")
    if method not in ("draft_model",) and isinstance(model, str) and model:
        imp.ignored.append((f"--{flag} model", model, "the head's weights (priced by shape)"))
    k = cfg.get("num_speculative_tokens")
    if k is not None:
        imp.overrides["spec.k"] = _int(f"{flag} num_speculative_tokens", str(k))
        imp.overrides["spec.policy"] = "fixed"
        imp.carried.append((f"--{flag} num_speculative_tokens", str(k), "spec.k"))
    else:
        imp.notes.append(
            f"--{flag} has no num_speculative_tokens (vLLM takes it from the draft model's "
            "config): spec.k stays the base's"
        )
    for key, v in cfg.items():
        if key in ("method", "model", "num_speculative_tokens"):
            continue
        what = _SPEC_KEYS_NOT_MODELLED.get(key)
        if what is not None:
            imp.not_modelled.append((f"--{flag} {key}", json.dumps(v), what))
        else:
            imp.unknown.append((f"--{flag} {key}", json.dumps(v)))
    imp.notes.append(f"speculative config {shown}: acceptance comes from acceptance.alpha")


def _dtype(flag: str, value: str | None, imp: VllmImport) -> None:
    v = (value or "").lower()
    if flag == "quantization":
        if v == "fp8":
            imp.overrides["costs.dtype"] = "fp8"
            imp.approximated.append(
                (
                    "--quantization",
                    v,
                    "costs.dtype fp8: sdsim's fp8 also stores the KV cache "
                    "in fp8 (add --kv-cache-dtype fp8 to match exactly)",
                )
            )
        else:
            imp.not_modelled.append(("--quantization", v, "this weight quantisation"))
    elif v in ("auto", "bfloat16", "float16", "half"):
        imp.overrides.setdefault("costs.dtype", "bf16")
        imp.carried.append(("--dtype", v, "costs.dtype (16-bit)"))
    else:
        imp.not_modelled.append(("--dtype", v, "32-bit weights"))


_Handler = Callable[[str, "str | None", VllmImport], None]


def _setter(field_name: str, conv: Callable[[str, str | None], Any]) -> _Handler:
    def handle(flag: str, value: str | None, imp: VllmImport) -> None:
        imp.overrides[field_name] = conv(flag, value)
        imp.carried.append((f"--{flag}", str(value), field_name))

    return handle


def _data_parallel(flag: str, value: str | None, imp: VllmImport) -> None:
    imp.overrides["server.replicas"] = _int(flag, value)
    imp.approximated.append(
        (
            f"--{flag}",
            str(value),
            "server.replicas: each data-parallel rank is an engine "
            "replica (router: least-outstanding)",
        )
    )
    imp.overrides["server.router"] = "least-outstanding"


def _chunked(flag: str, value: str | None, imp: VllmImport) -> None:
    on = flag == "enable-chunked-prefill" and (value or "true").lower() not in ("false", "0")
    imp.overrides["server.scheduler"] = "vllm-v1" if on else "prefill-first"
    imp.carried.append((f"--{flag}", str(value or ""), "server.scheduler"))


def _prefix_caching(flag: str, value: str | None, imp: VllmImport) -> None:
    imp.overrides["server.prefix_caching"] = not flag.startswith("no-")
    imp.carried.append((f"--{flag}", str(value or ""), "server.prefix_caching"))


def _old_spec_model(flag: str, value: str | None, imp: VllmImport) -> None:
    # older vLLM took an EAGLE head from "eagle" in the model's name
    cfg: dict[str, Any] = {"model": value}
    if value and "eagle" in value.lower():
        cfg["method"] = "eagle"
    _speculative(json.dumps(cfg), imp, flag)


def _old_spec_k(flag: str, value: str | None, imp: VllmImport) -> None:
    imp.overrides["spec.k"] = _int(flag, value)
    imp.carried.append((f"--{flag}", str(value), "spec.k"))


_HANDLERS: dict[str, _Handler] = {
    "tensor-parallel-size": _setter("server.tp", _int),
    "max-num-seqs": _setter("server.max_num_seqs", _int),
    "max-num-batched-tokens": _setter("server.max_num_batched_tokens", _int),
    "gpu-memory-utilization": _setter("server.gpu_memory_utilization", _float),
    "block-size": _setter("server.block_size", _int),
    "num-gpu-blocks-override": _setter("server.num_gpu_blocks", _int),
    "data-parallel-size": _data_parallel,
    "enable-prefix-caching": lambda f, v, imp: _prefix_caching(f, v, imp),
    "no-enable-prefix-caching": lambda f, v, imp: _prefix_caching(f, v, imp),
    "enable-chunked-prefill": _chunked,
    "no-enable-chunked-prefill": _chunked,
    "speculative-config": lambda f, v, imp: _speculative(v, imp),
    "speculative-model": _old_spec_model,
    "num-speculative-tokens": _old_spec_k,
    "dtype": lambda f, v, imp: _dtype(f, v, imp),
    "quantization": lambda f, v, imp: _dtype(f, v, imp),
}


def parse_vllm_command(command: str | list[str]) -> VllmImport:
    """Read a ``vllm serve MODEL --flag ...`` command line.

    Parameters
    ----------
    command
        The command as one string (split like a POSIX shell) or as its arguments.

    Returns
    -------
    VllmImport
        Overrides for a scenario, and every flag in one of its lists.

    Raises
    ------
    ScenarioError
        No model, a model the registry does not know, or a flag value of the wrong type (the
        message names the flag).
    """
    model, flags = _flags(_tokens(command))
    for name, value in flags:
        if name == "model" and value:
            model = value
    if not model:
        raise ScenarioError("command", "no model: expected `vllm serve MODEL ...` or --model MODEL")
    imp = VllmImport(model=model)
    imp.overrides["target"] = _registry(model, "target", imp)
    if "fp8" in model.lower() and not any(n in ("quantization", "dtype") for n, _ in flags):
        imp.overrides["costs.dtype"] = "fp8"
        imp.approximated.append(("model", model, "an FP8 checkpoint: costs.dtype fp8"))
    pp = [v for n, v in flags if n == "pipeline-parallel-size"]
    for name, value in flags:
        shown = "" if value is None else value
        if name == "model":
            continue
        if name == "":
            imp.unknown.append(("(positional)", shown))
        elif name in _HANDLERS:
            _HANDLERS[name](name, value, imp)
        elif name == "pipeline-parallel-size" and pp and str(value) == "1":
            imp.carried.append(("--pipeline-parallel-size", "1", "(no pipeline: as sdsim)"))
        elif name in _NOT_MODELLED:
            imp.not_modelled.append((f"--{name}", shown, _NOT_MODELLED[name]))
        elif name in _IGNORED:
            imp.ignored.append((f"--{name}", shown, _IGNORED[name]))
        else:
            imp.unknown.append((f"--{name}", shown))
    if "spec.k" in imp.overrides and "drafter.kind" not in imp.overrides:
        imp.notes.append("num_speculative_tokens without a method: the drafter stays the base's")
    if not any(n in ("speculative-config", "speculative-model") for n, _ in flags):
        imp.overrides["spec.k"] = 0
        imp.notes.append("no --speculative-config: speculative decoding off (spec.k = 0)")
    unset = [
        f
        for f in (
            "--max-num-seqs",
            "--max-num-batched-tokens",
            "--block-size",
            "--gpu-memory-utilization",
        )
        if f not in {c[0] for c in imp.carried}
    ]
    if unset:
        imp.notes.append(
            f"not given, so taken from the base scenario: {', '.join(unset)} (vLLM's own defaults "
            "depend on its version and GPU)"
        )
    return imp
