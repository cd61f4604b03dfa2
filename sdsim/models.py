"""Transformer architecture registry, Hugging Face ``config.json`` loading, and drafter kinds.

A :class:`ModelSpec` holds what a cost model needs to know about a decoder-only transformer:
layers, widths, heads, FFN size, vocabulary, MoE experts. Parameter counts are *derived* from
these numbers (tests check them against the published totals within 2%), never typed in.

Registry sources: each model's ``config.json`` on its Hugging Face model page (meta-llama/...,
Qwen/..., openai/gpt-oss-20b), read 2025; the published totals are from the model cards
(Llama 3.1: 8.03B / 70.6B; Llama 3.2 1B: 1.23B; Qwen3: 1.7B, 8.2B, 14.8B, 32.8B,
30.5B total / 3.3B active; gpt-oss-20b: 20.9B total / 3.6B active, OpenAI's model card).
Qwen3 dense and Qwen3-30B-A3B configs list ``max_position_embeddings: 40960`` (32K native plus
room for output); Llama 3.1/3.2 and gpt-oss list 131072.
"""

from __future__ import annotations

__all__ = [
    "EAGLE3_DRAFT_VOCAB",
    "EAGLE_FC",
    "MODELS",
    "NGRAM_CPU_S_PER_SEQ",
    "Drafter",
    "ModelSpec",
    "check_tensor_parallel",
    "drafter_tp",
    "eagle3_head",
    "eagle_head",
    "get_model",
    "hf_registry_name",
    "load_hf_config",
    "model_from_hf_config",
    "model_names",
    "resolve_drafter",
    "resolve_model",
]

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from sdsim.errors import ScenarioError
from sdsim.inputs import load_json

# n-gram (prompt lookup) drafting runs on the CPU: a suffix match of the last few tokens against
# the request's own context. vLLM's proposer does this per request per step in tens of
# microseconds; 20 us per request per step is our assumption (no GPU work at all).
NGRAM_CPU_S_PER_SEQ = 20e-6

# An EAGLE head fuses the verifier's last hidden state with the next token's embedding through a
# (2 * hidden -> hidden) projection before its one decoder layer (Li et al., EAGLE, ICML 2024).
EAGLE_FC = "eagle_fc"

# An EAGLE-3 head drafts over its own, smaller vocabulary (draft ids map to target ids through a
# table): 32,000 tokens in yuhuili/EAGLE3-LLaMA3.1-Instruct-8B's config (``draft_vocab_size``).
EAGLE3_DRAFT_VOCAB = 32000


@dataclass(frozen=True)
class ModelSpec:
    """Architecture numbers of a decoder-only transformer.

    Attributes
    ----------
    name
        Registry name or a label (the config file's stem).
    layers, hidden, heads, kv_heads, head_dim
        Decoder layers, model width, query heads, key/value heads (GQA), width of one head.
    ffn
        Intermediate size of the MLP; for MoE models, of one expert.
    vocab
        Vocabulary size (embedding and LM head rows).
    tied_embeddings
        Whether the LM head reuses the embedding matrix.
    max_context
        Longest sequence (prompt + output) the model accepts.
    experts, experts_per_token
        MoE routed experts and how many each token uses (0 for dense models).
    gated_mlp
        SwiGLU-style gate and up projections (3 matrices) rather than 2.
    qkv_bias, o_bias, expert_bias
        Bias vectors on the QKV projection, the output projection, the expert/MLP matrices.
    qk_norm
        Per-head RMSNorm on queries and keys (Qwen3).
    attention_sinks
        One learned sink logit per head (gpt-oss).
    sliding_window, sliding_layers
        Window size and how many layers use it (gpt-oss alternates: 12 of 24 layers at 128).
    weight_bytes
        Bytes per weight as served (2 for BF16).
    expert_weight_bytes
        Bytes per expert weight when experts are stored differently (gpt-oss ships MXFP4 experts:
        4 bits plus one 8-bit scale per 32 values = 4.25 bits); ``None`` = ``weight_bytes``.
    input_fc
        Input width of an extra fusion projection into ``hidden`` run in every pass (EAGLE-1
        heads: 2 * hidden, the token's embedding next to the verifier's hidden state).
    first_pass_fc
        Input width of a fusion projection into ``hidden`` run only in a step's first draft pass
        (EAGLE-3 heads: 3 * hidden, three of the verifier's hidden layers combined).
    qkv_input
        Input width of the QKV projection when it is not ``hidden`` (EAGLE-3's decoder layer
        reads the embedding and the hidden state side by side: 2 * hidden); 0 = ``hidden``.
    published_params
        Published total parameter count (for the 2% check), if known.
    """

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    tied_embeddings: bool
    max_context: int
    experts: int = 0
    experts_per_token: int = 0
    gated_mlp: bool = True
    qkv_bias: bool = False
    o_bias: bool = False
    expert_bias: bool = False
    qk_norm: bool = False
    attention_sinks: bool = False
    sliding_window: int = 0
    sliding_layers: int = 0
    weight_bytes: float = 2.0
    expert_weight_bytes: float | None = None
    input_fc: int = 0
    first_pass_fc: int = 0
    qkv_input: int = 0
    published_params: float | None = None

    # ------------------------------------------------------------------ derived sizes
    @property
    def is_moe(self) -> bool:
        """Whether the MLP is a mixture of experts."""
        return self.experts > 0

    @property
    def q_dim(self) -> int:
        """Width of all query heads together."""
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of all key (or value) heads together."""
        return self.kv_heads * self.head_dim

    @property
    def qkv_in(self) -> int:
        """Input width of the QKV projection."""
        return self.qkv_input or self.hidden

    @property
    def mlp_mats(self) -> int:
        """Matrices per MLP (3 when gated)."""
        return 3 if self.gated_mlp else 2

    def attn_params_per_layer(self) -> int:
        """Attention weights of one layer (QKV, O, their biases, QK norms, sinks)."""
        h = self.hidden
        p = self.qkv_in * (self.q_dim + 2 * self.kv_dim) + self.q_dim * h
        if self.qkv_bias:
            p += self.q_dim + 2 * self.kv_dim
        if self.o_bias:
            p += h
        if self.qk_norm:
            p += 2 * self.head_dim
        if self.attention_sinks:
            p += self.heads
        return p

    def expert_params(self) -> int:
        """Weights of one expert (or of the dense MLP), biases included."""
        p = self.mlp_mats * self.hidden * self.ffn
        if self.expert_bias:
            p += (self.mlp_mats - 1) * self.ffn + self.hidden
        return p

    def mlp_params_per_layer(self) -> int:
        """MLP weights of one layer: every expert plus the router, or the dense MLP."""
        if not self.is_moe:
            return self.expert_params()
        router = self.hidden * self.experts + (self.experts if self.expert_bias else 0)
        return self.experts * self.expert_params() + router

    def embedding_params(self) -> int:
        """Embedding plus (untied) LM head."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    def param_count(self) -> int:
        """Total parameters derived from the architecture."""
        per_layer = self.attn_params_per_layer() + self.mlp_params_per_layer() + 2 * self.hidden
        fc = (self.input_fc + self.first_pass_fc) * self.hidden
        return self.layers * per_layer + self.embedding_params() + self.hidden + fc

    def active_param_count(self) -> int:
        """Parameters one token uses (MoE: only its experts_per_token experts)."""
        if not self.is_moe:
            return self.param_count()
        unused = (self.experts - self.experts_per_token) * self.expert_params()
        return self.param_count() - self.layers * unused

    def kv_bytes_per_token(self, kv_bytes: float = 2.0) -> float:
        """KV-cache bytes one token occupies across all layers."""
        return 2.0 * self.layers * self.kv_dim * kv_bytes

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for profile bundle metadata)."""
        return asdict(self)


def _m(**kw: Any) -> ModelSpec:
    return ModelSpec(**kw)


MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        # meta-llama/Llama-3.1-8B config.json
        _m(name="llama-3.1-8b", layers=32, hidden=4096, heads=32, kv_heads=8, head_dim=128,
           ffn=14336, vocab=128256, tied_embeddings=False, max_context=131072,
           published_params=8.03e9),
        # meta-llama/Llama-3.1-70B config.json
        _m(name="llama-3.1-70b", layers=80, hidden=8192, heads=64, kv_heads=8, head_dim=128,
           ffn=28672, vocab=128256, tied_embeddings=False, max_context=131072,
           published_params=70.6e9),
        # meta-llama/Llama-3.2-1B config.json (head_dim 64, tied embeddings)
        _m(name="llama-3.2-1b", layers=16, hidden=2048, heads=32, kv_heads=8, head_dim=64,
           ffn=8192, vocab=128256, tied_embeddings=True, max_context=131072,
           published_params=1.23e9),
        # Qwen/Qwen3-1.7B config.json (tied embeddings, QK norm)
        _m(name="qwen3-1.7b", layers=28, hidden=2048, heads=16, kv_heads=8, head_dim=128,
           ffn=6144, vocab=151936, tied_embeddings=True, max_context=40960, qk_norm=True,
           published_params=1.7e9),
        # Qwen/Qwen3-8B config.json
        _m(name="qwen3-8b", layers=36, hidden=4096, heads=32, kv_heads=8, head_dim=128,
           ffn=12288, vocab=151936, tied_embeddings=False, max_context=40960, qk_norm=True,
           published_params=8.2e9),
        # Qwen/Qwen3-14B config.json
        _m(name="qwen3-14b", layers=40, hidden=5120, heads=40, kv_heads=8, head_dim=128,
           ffn=17408, vocab=151936, tied_embeddings=False, max_context=40960, qk_norm=True,
           published_params=14.8e9),
        # Qwen/Qwen3-32B config.json
        _m(name="qwen3-32b", layers=64, hidden=5120, heads=64, kv_heads=8, head_dim=128,
           ffn=25600, vocab=151936, tied_embeddings=False, max_context=40960, qk_norm=True,
           published_params=32.8e9),
        # Qwen/Qwen3-30B-A3B config.json: 128 experts of moe_intermediate_size 768, top-8
        _m(name="qwen3-30b-a3b", layers=48, hidden=2048, heads=32, kv_heads=4, head_dim=128,
           ffn=768, vocab=151936, tied_embeddings=False, max_context=40960, qk_norm=True,
           experts=128, experts_per_token=8, published_params=30.5e9),
        # openai/gpt-oss-20b config.json: 32 experts (intermediate 2880), top-4, biases,
        # attention sinks, alternating 128-token sliding window; MXFP4 experts as shipped
        _m(name="gpt-oss-20b", layers=24, hidden=2880, heads=64, kv_heads=8, head_dim=64,
           ffn=2880, vocab=201088, tied_embeddings=False, max_context=131072,
           experts=32, experts_per_token=4, qkv_bias=True, o_bias=True, expert_bias=True,
           attention_sinks=True, sliding_window=128, sliding_layers=12,
           expert_weight_bytes=4.25 / 8, published_params=20.9e9),
    )
}


def model_names() -> list[str]:
    """Registry names, sorted."""
    return sorted(MODELS)


def get_model(name: str, field: str = "target") -> ModelSpec:
    """A registered model.

    Raises
    ------
    ScenarioError
        Unknown name (the message lists the known ones).
    """
    key = name.strip().lower()
    if key in MODELS:
        return MODELS[key]
    raise ScenarioError(
        field,
        f"unknown model {name!r}; known: {', '.join(model_names())} (or a path to a Hugging Face "
        "config.json)",
    )


# --------------------------------------------------------------------------- config.json


# Bounds on config.json numbers: far beyond any released model, small enough that products of them
# (parameter counts, KV bytes) stay exact and finite.
_MAX_DIM = 10**6
_MAX_LAYERS = 10**4
_MAX_CONTEXT = 10**9

# Model families whose MLP is up -> activation -> down (two matrices), not SwiGLU-style.
_UNGATED_TYPES = {"gpt2", "opt", "gpt_neox", "phi", "falcon", "bloom", "gpt_bigcode", "starcoder2"}


def _first(cfg: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return default


def model_from_hf_config(cfg: dict[str, Any], name: str = "custom") -> ModelSpec:
    """Build a :class:`ModelSpec` from a parsed Hugging Face ``config.json``.

    Understands the Llama, Qwen2/3, Qwen3-MoE, Mixtral, Mistral and gpt-oss key names; a
    multimodal config's ``text_config`` is used when present.

    Raises
    ------
    ValueError
        A required key is missing or not a positive integer.
    """
    if isinstance(cfg.get("text_config"), dict):
        cfg = {**cfg, **cfg["text_config"]}

    def need(*keys: str, default: Any = None, low: int = 1, high: int = _MAX_DIM) -> int:
        # whole numbers in a physical range: JSON's Infinity, -128 or "abc" are refused by name
        v = _first(cfg, *keys, default=default)
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
            raise ValueError(
                f"config.json key {keys[0]!r} must be a whole number in [{low}, {high:,}] "
                f"(got {v!r})"
            )
        return v

    hidden = need("hidden_size", "n_embd", "d_model")
    layers = need("num_hidden_layers", "n_layer", "num_layers", high=_MAX_LAYERS)
    heads = need("num_attention_heads", "n_head", high=_MAX_LAYERS)
    kv_heads = need("num_key_value_heads", "n_kv_head", default=heads, high=heads)
    if heads % kv_heads:
        raise ValueError(
            f"config.json: num_attention_heads ({heads}) must be a multiple of "
            f"num_key_value_heads ({kv_heads})"
        )
    head_dim = need("head_dim", default=hidden // heads if hidden >= heads else None)
    vocab = need("vocab_size", high=10**8)
    experts = need(
        "num_experts", "num_local_experts", "n_routed_experts", default=0, low=0, high=_MAX_LAYERS
    )
    top_k = need(
        "num_experts_per_tok", "experts_per_token", "moe_topk", default=0, low=0, high=experts
    )
    if experts:
        ffn = need("moe_intermediate_size", "intermediate_size")
    else:
        ffn = need("intermediate_size", "ffn_dim", "n_inner", default=4 * hidden)
    max_context = need(
        "max_position_embeddings", "n_positions", default=4096, high=_MAX_CONTEXT
    )
    model_type = str(cfg.get("model_type", ""))
    attn_bias = bool(cfg.get("attention_bias", model_type == "qwen2"))
    layer_types = cfg.get("layer_types") or []
    if not isinstance(layer_types, list):
        raise ValueError(f"config.json key 'layer_types' must be a list (got {layer_types!r})")
    sliding = need("sliding_window", default=0, low=0, high=_MAX_CONTEXT) if cfg.get(
        "sliding_window"
    ) else 0
    n_sliding = sum(1 for t in layer_types if t == "sliding_attention") if sliding else 0
    return ModelSpec(
        name=name,
        layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        ffn=ffn,
        vocab=vocab,
        # transformers' PretrainedConfig defaults tie_word_embeddings to True
        tied_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        max_context=max_context,
        experts=experts,
        experts_per_token=top_k if experts else 0,
        gated_mlp=model_type not in _UNGATED_TYPES,
        qkv_bias=attn_bias,
        o_bias=attn_bias and model_type == "gpt_oss",
        expert_bias=model_type == "gpt_oss",
        qk_norm=model_type in {"qwen3", "qwen3_moe"},
        attention_sinks=model_type == "gpt_oss",
        sliding_window=sliding if n_sliding else 0,
        sliding_layers=n_sliding,
    )


def load_hf_config(path: str | Path, field: str = "target") -> ModelSpec:
    """Read a Hugging Face ``config.json`` (or a directory holding one) from disk.

    Raises
    ------
    ScenarioError
        Missing file, invalid JSON, or missing architecture keys.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise ScenarioError(field, f"config file {str(path)!r} not found")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(field, f"cannot read {p.name} ({exc.__class__.__name__})") from None
    try:
        # Infinity / NaN parse, then fail the range checks by key name
        cfg = load_json(text, field, allow_nan=True)
    except ScenarioError as exc:
        raise ScenarioError(field, f"{p.name}: {exc.message}") from None
    if not isinstance(cfg, dict):
        raise ScenarioError(field, f"{p.name} must hold a JSON object")
    label = p.parent.name if p.name == "config.json" else p.stem
    try:
        return model_from_hf_config(cfg, name=label or "custom")
    except (ValueError, TypeError) as exc:
        raise ScenarioError(field, str(exc)) from None


# Hugging Face repository names whose architecture is a registry entry under another name.
_HF_ALIASES = {
    # Llama 3.3 70B has Llama 3.1 70B's config.json (layers, heads, FFN, vocab, 128k context)
    "llama-3.3-70b": "llama-3.1-70b",
}
# Suffixes of a repository name that do not change the architecture (tuning, packaging, a
# quantisation whose precision the scenario sets with costs.dtype).
_HF_SUFFIXES = ("-instruct", "-chat", "-hf", "-base", "-fp8-dynamic", "-fp8", "-w8a8", "-bf16")


def hf_registry_name(repo_id: str) -> str | None:
    """The registry name of a Hugging Face model (``meta-llama/Llama-3.1-8B-Instruct`` ->
    ``llama-3.1-8b``), or ``None`` when the registry has no model of that architecture.

    The organisation is dropped, the name lower-cased, instruction/packaging suffixes
    (``-Instruct``, ``-FP8``, ...) and a ``Meta-`` prefix removed.
    """
    name = repo_id.strip().rstrip("/").rsplit("/", 1)[-1].lower()
    changed = True
    while changed:
        changed = False
        for suffix in _HF_SUFFIXES:
            if name.endswith(suffix):
                name, changed = name[: -len(suffix)], True
    name = name.removeprefix("meta-")
    name = _HF_ALIASES.get(name, name)
    return name if name in MODELS else None


def _looks_like_path(ref: str) -> bool:
    return ref.endswith(".json") or "/" in ref or "\\" in ref


def resolve_model(ref: str, field: str = "target") -> ModelSpec:
    """A registry name or a path to a ``config.json`` (or a folder holding one)."""
    if ref.strip().lower() in MODELS:
        return MODELS[ref.strip().lower()]
    if _looks_like_path(ref) or Path(ref).is_dir():
        return load_hf_config(ref, field)
    return get_model(ref, field)


# --------------------------------------------------------------------------- drafters


def eagle_head(verifier: ModelSpec) -> ModelSpec:
    """An EAGLE-style draft head: one decoder layer of the verifier's shape, a 2h -> h fusion
    projection, and the verifier's embedding and LM head (shared, so not counted again)."""
    # the verifier's layer shape; what a single dense head has no use for goes back to defaults
    return replace(
        verifier,
        name=f"eagle({verifier.name})",
        layers=1,
        tied_embeddings=True,
        attention_sinks=False,
        sliding_window=0,
        sliding_layers=0,
        input_fc=2 * verifier.hidden,
        published_params=None,
    )


def eagle3_head(verifier: ModelSpec, draft_vocab: int = EAGLE3_DRAFT_VOCAB) -> ModelSpec:
    """An EAGLE-3 draft head (Li et al., EAGLE-3, 2025; vLLM ``llama_eagle3.py``): one decoder
    layer of the verifier's width whose QKV projection reads the token embedding and the hidden
    state side by side (2 * hidden), a 3h -> h projection that fuses three of the verifier's
    hidden layers in a step's first draft pass only, and its own LM head over ``draft_vocab``
    tokens (the embedding is the verifier's, shared)."""
    return replace(
        eagle_head(verifier),
        name=f"eagle3({verifier.name})",
        vocab=draft_vocab,
        input_fc=0,
        first_pass_fc=3 * verifier.hidden,
        qkv_input=2 * verifier.hidden,
    )


@dataclass(frozen=True)
class Drafter:
    """The draft proposer as the cost model sees it.

    Attributes
    ----------
    kind
        ``model`` (a separate small LM), ``eagle`` (an EAGLE-1 head on the verifier), ``eagle3``
        (an EAGLE-3 head) or ``ngram``.
    model
        The network run per draft pass (the small LM, or the head); ``None`` for n-gram.
    cpu_s_per_seq
        CPU time per request per step (n-gram lookup); 0 for GPU drafters.
    """

    kind: Literal["model", "eagle", "eagle3", "ngram"]
    model: ModelSpec | None
    cpu_s_per_seq: float = 0.0

    @property
    def prefills(self) -> bool:
        """Whether the drafter also runs over prompt tokens (GPU drafters keep their own KV)."""
        return self.model is not None

    @property
    def is_head(self) -> bool:
        """Whether the drafter is a head on the verifier (EAGLE-1 or EAGLE-3): it runs at the
        verifier's tensor-parallel degree and reads its hidden states."""
        return self.kind in ("eagle", "eagle3")


def resolve_drafter(
    kind: str,
    model_ref: str | None,
    verifier: ModelSpec,
    field: str = "drafter.model",
    draft_vocab: int | None = None,
) -> Drafter:
    """The drafter of a scenario's ``drafter`` block (``draft_vocab``: EAGLE-3's draft
    vocabulary, default :data:`EAGLE3_DRAFT_VOCAB`)."""
    if kind == "ngram":
        return Drafter("ngram", None, NGRAM_CPU_S_PER_SEQ)
    if kind == "eagle":
        return Drafter("eagle", eagle_head(verifier))
    if kind == "eagle3":
        return Drafter("eagle3", eagle3_head(verifier, draft_vocab or EAGLE3_DRAFT_VOCAB))
    if kind == "model":
        if not model_ref:
            raise ScenarioError(field, "kind 'model' needs `model:` (a registry name or path)")
        return Drafter("model", resolve_model(model_ref, field))
    raise ScenarioError(
        "drafter.kind", f"unknown drafter kind {kind!r}; use model, eagle, eagle3, ngram"
    )


def drafter_tp(drafter: Drafter, target_tp: int, requested: int | None = None) -> int:
    """Tensor-parallel degree a drafter runs at: a head (EAGLE-1/3) lives inside the verifier and
    is sharded like it; a separate draft model runs at ``requested`` (``drafter.tp``), whole on
    one GPU by default."""
    if drafter.is_head:
        return max(1, int(target_tp))
    return max(1, int(requested)) if requested else 1


def check_tensor_parallel(
    model: ModelSpec, tp: int, field: str = "target", option: str = "server.tp"
) -> None:
    """Refuse a tensor-parallel size that does not split the model's layers, as vLLM does.

    vLLM's rules (``ModelConfig.verify_with_parallel_config``, ``QKVParallelLinear`` and
    ``MergedColumnParallelLinear`` in vllm/model_executor/layers/linear.py): the attention heads
    divide evenly over the GPUs; the KV heads either divide evenly (``kv_heads >= tp``) or are
    replicated, which needs ``tp`` to be a multiple of them; a dense MLP's intermediate size divides
    evenly (each GPU holds a column slice of the gate and up projections).

    Raises
    ------
    ScenarioError
        Naming ``option`` (``server.tp``, or ``drafter.tp`` for a separate draft model).
    """
    if tp == 1 or _tp_fits(model, tp):
        return
    if model.heads % tp:
        why = f"its {model.heads} attention heads do not divide evenly"
    elif model.kv_heads >= tp and model.kv_heads % tp:
        why = f"its {model.kv_heads} KV heads do not divide evenly"
    elif model.kv_heads < tp and tp % model.kv_heads:
        why = f"its {model.kv_heads} KV heads cannot be replicated evenly (tp must be a multiple)"
    else:
        why = f"its MLP intermediate size {model.ffn} does not divide evenly"
    allowed = [d for d in range(1, 65) if _tp_fits(model, d)]
    raise ScenarioError(
        option,
        f"{tp} GPUs cannot split {field} {model.name!r}: {why} (vLLM refuses it); allowed: "
        f"{', '.join(map(str, allowed))}",
    )


def _tp_fits(model: ModelSpec, tp: int) -> bool:
    if model.heads % tp:
        return False
    if (model.kv_heads >= tp and model.kv_heads % tp) or (
        model.kv_heads < tp and tp % model.kv_heads
    ):
        return False
    return model.is_moe or model.ffn % tp == 0
