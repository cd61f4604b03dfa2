"""GPU memory budget of one replica: weights, activation reserve and the KV cache they leave.

A real engine sizes its KV cache at start-up (vLLM: profile the weights and the activation peak,
then give what is left of ``gpu_memory_utilization x HBM`` to KV blocks). This module does the
same sum from the registries, for the GPU that holds the most (the one with the drafter when the
drafter runs unsharded), so that a what-if on a smaller GPU runs out of KV memory as it would:

``blocks = floor((HBM x gpu_memory_utilization - weights - activation reserve)
/ (KV bytes per token x block_size))``

per GPU, with

* HBM: ``GPUSpec.hbm_gb`` (the vendor's nominal figure in 10^9 bytes; an "80 GB" H100 really has
  80 GiB, so the derived capacity is about 7% conservative);
* weights: verifier parameters / ``server.tp`` plus the drafter's when the scenario speculates
  (k > 0 or the adaptive policy: a plain-decoding server loads no drafter). A separate draft model
  runs at ``drafter.tp`` (default 1: whole on one GPU; :func:`sdsim.models.drafter_tp`); an
  EAGLE head is sharded like its verifier and shares the verifier's embedding and LM head; n-gram
  lookup has no weights. Precision as served (``costs.dtype: fp8`` stores 1-byte weights; MoE
  experts keep their own ``expert_weight_bytes``);
* activation reserve: ``server.activation_reserve_gb`` per GPU (activations of the largest step,
  CUDA graphs, sampler and non-torch memory: what vLLM's profiling run measures; 1.2-1.5 GiB for
  an 8B model at 8192 batched tokens, more for wider models);
* KV bytes per token: verifier and drafter caches both count (keys and values of every layer,
  KV heads split over the tensor-parallel shards but never below one head per shard; fp8 KV under
  ``costs.dtype: fp8``). Sliding-window layers are counted at full length (conservative).

``server.num_gpu_blocks`` overrides the derivation (what the engine reported; preferred when
known); ``num_gpu_blocks: unlimited`` switches the limit off (reference-formula comparisons).
"""

from __future__ import annotations

__all__ = [
    "UNLIMITED",
    "KVCapacity",
    "check_registry",
    "check_request_fits",
    "derive_num_gpu_blocks",
    "gpu_of",
    "kv_bytes_per_token",
    "kv_capacity",
    "model_weight_bytes",
    "num_gpu_blocks",
]

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sdsim.errors import ScenarioError
from sdsim.hardware import GPUSpec, get_gpu
from sdsim.models import (
    ModelSpec,
    check_tensor_parallel,
    drafter_tp,
    resolve_drafter,
    resolve_model,
)

if TYPE_CHECKING:
    # types only: sdsim.scenario imports this module to check the KV fit of every scenario it builds
    from sdsim.scenario import Scenario

# The scenario value that switches the KV limit off.
UNLIMITED = "unlimited"


def kv_bytes_per_token(
    layers: int, kv_heads: int, head_dim: int, dtype_bytes: float = 2.0
) -> float:
    """Bytes of KV cache one token needs in one model (keys and values, every layer).

    Parameters
    ----------
    layers
        Transformer layers that keep a KV cache.
    kv_heads
        Key/value heads per layer (after grouped-query sharing), per tensor-parallel shard when
        sizing a shard.
    head_dim
        Dimension of one head.
    dtype_bytes
        Bytes per cached element (2 for fp16/bf16, 1 for fp8).

    Returns
    -------
    float
        ``2 * layers * kv_heads * head_dim * dtype_bytes``.
    """
    if layers < 0 or kv_heads < 0 or head_dim < 0 or dtype_bytes <= 0:
        raise ValueError(
            "layers, kv_heads, head_dim must be >= 0 and dtype_bytes > 0, got "
            f"{layers}, {kv_heads}, {head_dim}, {dtype_bytes}"
        )
    return 2.0 * layers * kv_heads * head_dim * dtype_bytes


def derive_num_gpu_blocks(
    hbm_bytes: float,
    gpu_memory_utilization: float,
    weight_bytes: float,
    activation_reserve_bytes: float,
    kv_bytes_per_token: float,
    block_size: int,
) -> int:
    """How many KV blocks fit on a GPU (what vLLM computes at start-up).

    ``floor((hbm_bytes * gpu_memory_utilization - weight_bytes - activation_reserve_bytes)
    / (kv_bytes_per_token * block_size))``.

    Parameters
    ----------
    hbm_bytes
        GPU memory (bytes), per device of one replica (per shard under tensor parallelism, with
        the other arguments per shard too).
    gpu_memory_utilization
        Fraction of memory the engine may use, in (0, 1].
    weight_bytes
        Weights resident on the device: verifier plus drafter.
    activation_reserve_bytes
        Memory kept for activations, CUDA graphs and the sampler (what a profiling run measures).
    kv_bytes_per_token
        KV bytes one token needs, summed over every model that keeps a cache (verifier and
        drafter; see :func:`kv_bytes_per_token`).
    block_size
        Tokens per block.

    Returns
    -------
    int
        Number of blocks (>= 1).

    Raises
    ------
    ScenarioError
        When an input is out of range or nothing is left for the KV cache (field
        ``server.num_gpu_blocks``, since giving it explicitly is the way out).
    """
    if not (0 < gpu_memory_utilization <= 1):
        raise ScenarioError(
            "server.gpu_memory_utilization", f"must be in (0, 1], got {gpu_memory_utilization}"
        )
    if block_size < 1:
        raise ScenarioError("server.block_size", f"must be >= 1, got {block_size}")
    for name, v in (
        ("hbm_bytes", hbm_bytes),
        ("weight_bytes", weight_bytes),
        ("activation_reserve_bytes", activation_reserve_bytes),
    ):
        if not math.isfinite(v) or v < 0:
            raise ScenarioError("server.num_gpu_blocks", f"{name} must be finite and >= 0, got {v}")
    if not math.isfinite(kv_bytes_per_token) or kv_bytes_per_token <= 0:
        raise ScenarioError(
            "server.num_gpu_blocks", f"kv_bytes_per_token must be > 0, got {kv_bytes_per_token}"
        )
    left = hbm_bytes * gpu_memory_utilization - weight_bytes - activation_reserve_bytes
    blocks = math.floor(left / (kv_bytes_per_token * block_size)) if left > 0 else 0
    if blocks < 1:
        raise ScenarioError(
            "server.num_gpu_blocks",
            f"no memory left for the KV cache: {hbm_bytes / 2**30:.1f} GiB x "
            f"{gpu_memory_utilization:g} - weights {weight_bytes / 2**30:.1f} GiB - reserve "
            f"{activation_reserve_bytes / 2**30:.1f} GiB leaves less than one block; use a larger "
            "GPU, more tensor parallelism, or set server.num_gpu_blocks",
        )
    return int(blocks)


def gpu_of(scn: Scenario) -> GPUSpec:
    """The scenario's GPU: a registry entry or its inline spec sheet."""
    hw = scn.hardware
    if isinstance(hw, str):
        return get_gpu(hw, "hardware")
    return GPUSpec(
        hw.name, hw.bf16_tflops, hw.fp8_tflops, hw.hbm_gb, hw.hbm_tbps, hw.interconnect_gbps,
        hw.vendor,
    )


@dataclass(frozen=True)
class KVCapacity:
    """KV-cache capacity of one replica and where it comes from.

    Attributes
    ----------
    source
        ``derived`` (from the registries), ``given`` (``server.num_gpu_blocks``) or ``unlimited``.
    blocks
        Blocks of ``block_size`` tokens per replica; ``None`` when unlimited.
    block_size
        Tokens per block.
    hbm_bytes, usable_bytes, weight_bytes, activation_reserve_bytes, kv_bytes
        The budget of the fullest GPU (bytes): memory, memory x utilisation, resident weights
        (verifier shard + drafter), reserve, and what is left for the KV cache. NaN when the
        capacity was given or unlimited and the registries were not consulted.
    kv_bytes_per_token
        KV bytes one token takes on that GPU (verifier shard + drafter).
    """

    source: str
    blocks: int | None
    block_size: int
    hbm_bytes: float = math.nan
    usable_bytes: float = math.nan
    weight_bytes: float = math.nan
    activation_reserve_bytes: float = math.nan
    kv_bytes: float = math.nan
    kv_bytes_per_token: float = math.nan

    @property
    def tokens(self) -> int | None:
        """Token slots per replica (``blocks x block_size``); ``None`` when unlimited."""
        return None if self.blocks is None else self.blocks * self.block_size

    def describe(self) -> str:
        """One line for a summary table."""
        if self.blocks is None:
            return "unlimited (server.num_gpu_blocks: unlimited)"
        head = f"{self.blocks} blocks x {self.block_size} = {self.tokens} tokens per replica"
        if self.source == "given":
            return head + " (server.num_gpu_blocks)"
        return (
            f"{head} (derived: {self.hbm_bytes / 1e9:.1f} GB x util = "
            f"{self.usable_bytes / 1e9:.1f} GB - weights {self.weight_bytes / 1e9:.2f} GB - "
            f"reserve {self.activation_reserve_bytes / 1e9:.1f} GB = KV {self.kv_bytes / 1e9:.2f} "
            f"GB at {self.kv_bytes_per_token / 1e3:.1f} kB/token)"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON)."""
        return {
            "source": self.source,
            "blocks": self.blocks,
            "block_size": self.block_size,
            "tokens": self.tokens,
            "hbm_gb": self.hbm_bytes / 1e9,
            "usable_gb": self.usable_bytes / 1e9,
            "weights_gb": self.weight_bytes / 1e9,
            "activation_reserve_gb": self.activation_reserve_bytes / 1e9,
            "kv_gb": self.kv_bytes / 1e9,
            "kv_bytes_per_token": self.kv_bytes_per_token,
        }


def model_weight_bytes(
    model: ModelSpec, dtype: str = "bf16", shared_embedding: bool = False
) -> float:
    """Bytes of a model's weights as served.

    Parameters
    ----------
    model
        Architecture.
    dtype
        ``bf16`` (the model's ``weight_bytes``) or ``fp8`` (1 byte per weight); MoE experts keep
        their own ``expert_weight_bytes`` when the model ships them quantised (gpt-oss MXFP4).
    shared_embedding
        Leave the embedding / LM head out (an EAGLE head reuses its verifier's).

    Returns
    -------
    float
    """
    w = 1.0 if dtype == "fp8" else model.weight_bytes
    ew = w if model.expert_weight_bytes is None else model.expert_weight_bytes
    params = float(model.param_count())
    if shared_embedding:
        params -= model.embedding_params()
    if model.is_moe:
        expert = float(model.layers * model.experts * model.expert_params())
        return (params - expert) * w + expert * ew
    return params * w


def _kv_per_token(model: ModelSpec, tp: int, kv_elem_bytes: float) -> float:
    # vLLM shards KV heads over TP ranks and replicates them when there are fewer heads than ranks
    heads = max(model.kv_heads // tp, 1)
    return kv_bytes_per_token(model.layers, heads, model.head_dim, kv_elem_bytes)


def kv_capacity(scn: Scenario) -> KVCapacity:
    """KV-cache capacity of one replica of ``scn`` (see the module docstring for the sum).

    Parameters
    ----------
    scn
        The scenario (hardware, target, drafter, ``server.tp``, ``gpu_memory_utilization``,
        ``activation_reserve_gb``, ``block_size``, ``num_gpu_blocks``, ``costs.dtype``).

    Returns
    -------
    KVCapacity

    Raises
    ------
    ScenarioError
        ``hardware`` when the weights alone do not fit ``HBM x gpu_memory_utilization``;
        ``server.num_gpu_blocks`` when weights and reserve leave less than one block.
    """
    sv = scn.server
    bs = sv.block_size
    if sv.num_gpu_blocks == UNLIMITED:
        return KVCapacity("unlimited", None, bs)
    if isinstance(sv.num_gpu_blocks, int):
        return KVCapacity("given", sv.num_gpu_blocks, bs)
    gpu = gpu_of(scn)
    tp = sv.tp
    dtype = scn.costs.dtype
    kv_elem = 1.0 if dtype == "fp8" else 2.0
    target = resolve_model(scn.target, "target")
    drafter = resolve_drafter(scn.drafter.kind, scn.drafter.model, target, "drafter.model",
                              scn.drafter.draft_vocab)
    weights = model_weight_bytes(target, dtype) / tp
    per_tok = _kv_per_token(target, tp, kv_elem)
    # plain decoding (k = 0, fixed) loads no drafter; the adaptive policy keeps it resident
    speculating = scn.spec.k > 0 or scn.spec.policy == "adaptive"
    if drafter.model is not None and speculating:
        d_tp = drafter_tp(drafter, tp, scn.drafter.tp)  # as the cost model runs it
        weights += model_weight_bytes(drafter.model, dtype, drafter.kind == "eagle") / d_tp
        per_tok += _kv_per_token(drafter.model, d_tp, kv_elem)
    hbm = gpu.hbm_gb * 1e9
    usable = hbm * sv.gpu_memory_utilization
    reserve = sv.activation_reserve_gb * 1e9
    hw = scn.hardware if isinstance(scn.hardware, str) else scn.hardware.name
    if weights >= usable:
        raise ScenarioError(
            "hardware",
            f"weights of {scn.target}"
            + (f" + its {drafter.kind} drafter" if drafter.model and speculating else "")
            + f" take {weights / 1e9:.1f} GB per GPU at tp={tp}, more than {hw}'s "
            f"{gpu.hbm_gb:g} GB x gpu_memory_utilization {sv.gpu_memory_utilization:g} = "
            f"{usable / 1e9:.1f} GB; use a larger GPU or raise server.tp",
        )
    left = usable - weights - reserve
    if left < per_tok * bs:
        raise ScenarioError(
            "server.num_gpu_blocks",
            f"no memory left for the KV cache on {hw}: {usable / 1e9:.1f} GB usable - weights "
            f"{weights / 1e9:.1f} GB - activation reserve {reserve / 1e9:.1f} GB "
            f"(server.activation_reserve_gb) leaves less than one block; use a larger GPU, raise "
            "server.tp, or give server.num_gpu_blocks",
        )
    blocks = derive_num_gpu_blocks(hbm, sv.gpu_memory_utilization, weights, reserve, per_tok, bs)
    return KVCapacity("derived", blocks, bs, hbm, usable, weights, reserve, left, per_tok)


def num_gpu_blocks(scn: Scenario) -> int | None:
    """Blocks per replica the engine uses: given, derived, or ``None`` for unlimited."""
    return kv_capacity(scn).blocks


def check_request_fits(
    scn: Scenario, longest_tokens: int, cap: KVCapacity | None = None, what: str = ""
) -> None:
    """Refuse a KV cache that cannot hold one request of ``longest_tokens`` cached tokens.

    Parameters
    ----------
    scn
        Scenario (for ``spec.k`` / ``k_max`` look-ahead slots and the capacity).
    longest_tokens
        Prompt + output tokens of the longest request.
    cap
        The capacity, if already computed.
    what
        Where the length comes from, for the message.

    Raises
    ------
    ScenarioError
        Naming ``server.num_gpu_blocks``.
    """
    c = kv_capacity(scn) if cap is None else cap
    if c.blocks is None:
        return
    k_top = scn.spec.k if scn.spec.policy == "fixed" else max(scn.spec.k, scn.spec.k_max)
    bs = c.block_size
    longest = int(longest_tokens) - 1 + k_top
    need = -(-longest // bs)
    if need <= c.blocks:
        return
    origin = (
        "given"
        if c.source == "given"
        else f"derived from {c.kv_bytes / 1e9:.2f} GB left for KV at "
        f"{c.kv_bytes_per_token / 1e3:.1f} kB/token"
    )
    raise ScenarioError(
        "server.num_gpu_blocks",
        f"{c.blocks} blocks of {bs} tokens ({origin}) cannot hold the longest request"
        f"{' ' + what if what else ''} ({longest} tokens with {k_top} look-ahead slots need "
        f"{need} blocks); "
        + (
            f"raise it to >= {need}"
            if c.source == "given"
            else "use a larger GPU, raise server.tp, or shorten the requests"
        ),
    )


def check_registry(scn: Scenario) -> None:
    """Check the names a scenario refers to, that its requests fit the target's context, and that
    the KV cache (``server.num_gpu_blocks``) holds at least one request.

    Raises
    ------
    ScenarioError
        Unknown GPU or model name (the message lists the known ones), an unreadable
        ``config.json``, prompt + output tokens longer than the target's context, or a KV cache
        smaller than the shortest request the length laws can draw.
    """
    if isinstance(scn.hardware, str):
        get_gpu(scn.hardware, "hardware")
    target = resolve_model(scn.target, "target")
    check_tensor_parallel(target, scn.server.tp, "target")
    if scn.drafter.kind == "model" and scn.drafter.model:
        drafter = resolve_model(scn.drafter.model, "drafter.model")
        check_tensor_parallel(drafter, scn.drafter.tp or 1, "drafter.model", "drafter.tp")
    wl = scn.workload
    pfx = wl.shared_prefix.tokens.max if wl.shared_prefix is not None else 0
    if wl.arrival != "trace":
        longest = pfx + wl.prompt_tokens.max + wl.output_tokens.max
        if longest > target.max_context:
            too_long = pfx + wl.prompt_tokens.max >= target.max_context
            with_pfx = f"shared prefix ({pfx}) + " if pfx else ""
            raise ScenarioError(
                "workload.prompt_tokens" if too_long else "workload.output_tokens",
                f"{with_pfx}prompt ({wl.prompt_tokens.max}) + output ({wl.output_tokens.max}) "
                f"tokens = {longest} exceed the context of target {scn.target!r} "
                f"({target.max_context} tokens); shorten the lengths (or lower a length law's max)",
            )
    if wl.sessions is not None and wl.sessions.max_context is not None:
        if wl.sessions.max_context > target.max_context:
            raise ScenarioError(
                "workload.sessions.max_context",
                f"{wl.sessions.max_context} tokens exceed the context of target {scn.target!r} "
                f"({target.max_context} tokens)",
            )
    # KV capacity: weights that do not fit, or a cache smaller than the longest request, are
    # refused here, as a real engine refuses to start (lengths of traces and replayed reports are
    # checked when the simulation reads them).
    cap = kv_capacity(scn)
    if wl.arrival not in ("trace", "replay") and wl.trace is None:
        check_request_fits(
            scn, pfx + wl.prompt_tokens.max + wl.output_tokens.max, cap, "the length laws allow"
        )
        if wl.sessions is not None and wl.sessions.max_context is not None:
            check_request_fits(scn, wl.sessions.max_context, cap, "(workload.sessions.max_context)")
