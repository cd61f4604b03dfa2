"""The prompts the closed-form model prices, and the prefix cache's hit rate.

**Prompts.** A request's whole prompt is its attention context; the part it prefills is what the
prefix cache does not hold. A workload with shared system prompts prepends them
(``workload.shared_prefix``: its mean prompt is the prompt law's mean plus the mean prefix a
request carries); a multi-turn session resends its conversation (``workload.sessions``: a turn's
prompt is the conversation so far, whose mean is read from the workload's own conversation plan,
:func:`sdsim.traffic.conversation_plan`, a draw of the sessions without any arrival or engine).
The share of prompt tokens taken from the cache is ``analytic.prefix_hit_rate`` (with
``server.prefix_caching`` on; none with it off).

**Hit rate** (:func:`cache_state`), predicted when ``analytic.prefix_hit_rate`` is not given: Che's
characteristic-time approximation of an LRU cache, block-granular and size-aware, applied to the
engine's free list (:mod:`sdsim.engine.kvcache`: blocks no request holds wait there in the order
they were freed and are evicted from its head). A block freed at time ``t`` is still cached at
``t + T`` when ``T`` is below the characteristic time ``T_C``, the root of

    F = (blocks the free list holds) = sum over streams of (rate x mean residence before T_C)

with ``F`` the replica's blocks less those its running requests hold (the model's own
operating point: mean requests in the engine x their own blocks, plus the shared prompts they
hold, each counted once). The streams:

* **a request's own blocks** (prompt beyond the shared prompt, answer) are freed once when it
  finishes and are never looked up again: they stay ``T_C`` (they age out and push ``T_C``
  down);
* **a shared system prompt** ``i`` of ``B_i = L_i // block_size`` full blocks is referenced at
  ``lambda share p_i`` per second; while some request holds it (probability
  ``1 - exp(-lambda_i W)``, ``W`` the mean time in system: M/G/inf) it is not on the free list;
  otherwise it has been free for an exponential time, so a request misses it with probability
  ``exp(-lambda_i (W + T_C))`` and the free list holds ``B_i exp(-lambda_i W)(1 -
  exp(-lambda_i T_C))`` of its blocks on average;
* **a session's conversation** (every full block of the turn's prompt and answer) is freed when
  the turn finishes and looked up by the next turn a think time ``Z`` later (plus the API
  delay): a block hits while younger than ``T_C``, and the blocks the next turn takes leave
  the free list at their age then, the rest at ``T_C``. Which copy of a block is cached follows
  the engine: a computed block whose key still has a live copy is not cached (the first copy
  of a key stays), so the block an EAGLE drafter recomputes keeps aging from an earlier turn
  and can break the next turn's chain of hits there (at 60% load on
  scenarios/multi-turn-chat.yaml this costs 0.04 of hit rate). The model replays the
  conversation plan's sessions (per-turn lengths and think times, so the correlation of a
  turn's prompt with its position is kept; each turn holding its blocks the mean time in
  system scaled by its answer's length) against a cache that keeps every freed block ``T``
  seconds (:func:`_conversations`, compiled), for each ``T`` the root finder tries. With
  several replicas a turn finds its conversation only on the replica that ran the previous
  one: always with the prefix-affinity router (taken as keeping every conversation on one
  replica), one time in ``replicas`` with the others.

The engine's rules are kept: only full blocks are cached (a finished turn's ``prompt + output``
tokens less its last step's, which were never committed), a hit covers at most ``(prompt - 1)
// block_size`` blocks, one fewer with an EAGLE drafter, and the chain of hits starts at block
0 (a conversation whose shared prompt is gone hits nothing). Left out: the few blocks between a
release's tail and head (a release is ~1% of the free list), queueing before admission in the
think-time gap, the first (cold) reference of each prompt, and the spread of the eviction age
around ``T_C``. ``T_C`` and the hit rate depend on the latency (``W``, the running requests):
:mod:`sdsim.analytic.hitpoint` solves the fixed point with the model's own operating point.
"""

from __future__ import annotations

__all__ = [
    "PROMPT_BINS",
    "PROMPT_SAMPLE",
    "CacheState",
    "PromptMeans",
    "cache_state",
    "cache_workload",
    "kv_demand",
    "prefill_law",
    "prompt_means",
    "shared_blocks",
]

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import brentq

from sdsim._jit import jit
from sdsim.acceptance import expected_tokens_per_step
from sdsim.analytic.stepcurve import PromptLaw
from sdsim.analytic.work import bin_equal_mass
from sdsim.memory import num_gpu_blocks
from sdsim.scenario import Scenario
from sdsim.traffic import ConversationPlan, conversation_plan, prefix_lengths, prefix_popularity

# Bins of the prompt-length (or prefilled-length) law the step curve and the TTFT model price
# prefill chunks at (equal mass up to 95%, finer in the tail: sdsim.analytic.work).
PROMPT_BINS = 16

# Turns drawn to estimate a session workload's mean turn prompt and its cache behaviour (the
# standard error of the mean prompt is ~1% for the shipped scenarios' laws).
PROMPT_SAMPLE = 20_000

_F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class PromptMeans:
    """Mean prompt tokens per request.

    Attributes
    ----------
    context
        The whole prompt: what decode and prefill steps attend to.
    prefill
        The tokens prefilled: ``context x (1 - hit_rate)``.
    hit_rate
        Share of prompt tokens taken from the prefix cache.
    """

    context: float
    prefill: float
    hit_rate: float


def prompt_means(scn: Scenario) -> PromptMeans:
    """The mean prompt a request brings, and the part it prefills (see the module docstring)."""
    h = scn.analytic.prefix_hit_rate if scn.server.prefix_caching else None
    hit = float(h) if h is not None else 0.0
    context = cache_workload(scn).prompt_mean
    return PromptMeans(context, context * (1.0 - hit), hit)


@dataclass(frozen=True)
class CacheWorkload:
    """What the hit-rate model reads of a workload (rate aside): per shared prompt and per
    request (or turn of the conversation plan), in blocks.

    Attributes
    ----------
    prompt_mean
        Mean prompt tokens (the whole context).
    item_blocks, item_share
        Per shared prompt: its full blocks and the share of requests that carry it.
    own_freed
        Mean blocks a request frees that are its own (not a shared prompt's).
    hit_cached
        Per request (turn): blocks hit when its conversation is still cached in full (EAGLE's
        drop applied); without sessions, the shared prompt's.
    hit_lost
        Per request (turn): blocks hit when only its shared prompt is cached.
    item_of
        Per request (turn): its shared prompt (-1: none).
    weight
        Per entry: its weight in the mean over requests (a plan's turns are equally likely;
        without sessions the entries are the shared prompts, and the requests without one, by
        share).
    sessions
        Whether the entries are the turns of multi-turn sessions.
    turns, prompt, output, think, prefix_blocks
        The conversation plan (sessions only; else empty): turns per session, per turn its
        prompt, answer and think time, per session its shared prompt's full blocks.
    """

    prompt_mean: float
    item_blocks: _F64
    item_share: _F64
    own_freed: float
    hit_cached: _F64
    hit_lost: _F64
    item_of: npt.NDArray[np.int64]
    weight: _F64
    sessions: bool
    turns: npt.NDArray[np.int64]
    prompt: npt.NDArray[np.int64]
    output: npt.NDArray[np.int64]
    think: _F64
    prefix_blocks: npt.NDArray[np.int64]
    last_tokens: int = 1
    eagle: int = 0


# by the fields a workload's cache structure depends on (a rate sweep reuses it)
_WORKLOADS: dict[str, CacheWorkload] = {}
# per-turn hit blocks of the latest predictions, by workload and hit rate (rounded as
# sdsim.analytic.hitpoint rounds it), for the law of prefilled lengths; the oldest go first
_TURN_HITS: dict[tuple[str, float], _F64] = {}
_TURN_HITS_KEPT = 32


def _eagle(scn: Scenario) -> int:
    """1 when the engine drops the last hit block (an EAGLE drafter, speculating)."""
    speculating = scn.spec.k > 0 or scn.spec.policy == "adaptive"
    return int(scn.drafter.kind in ("eagle", "eagle3") and speculating)


def _workload_key(scn: Scenario) -> str:
    key = scn.model_dump_json(
        include={"workload", "target", "server", "spec", "seed", "drafter", "acceptance"}
    )
    return key.replace(f'"rate":{scn.workload.rate!r}', "")  # the rate draws no length


def cache_workload(scn: Scenario) -> CacheWorkload:
    """The workload's sharing structure in blocks (cached by everything but the rate)."""
    key = _workload_key(scn)
    if key not in _WORKLOADS:
        _WORKLOADS[key] = _build_workload(scn)
    return _WORKLOADS[key]


def _build_workload(scn: Scenario) -> CacheWorkload:
    w = scn.workload
    bs = scn.server.block_size
    e = _eagle(scn)
    sp = w.shared_prefix
    if sp is not None:
        lengths = prefix_lengths(sp, scn.seed).astype(np.float64)
        blocks = np.floor(lengths / bs)
        share = sp.share * prefix_popularity(sp)
    else:
        lengths = blocks = share = np.zeros(0)
    if w.sessions is not None:
        plan = conversation_plan(scn, scn.seed, num_requests=PROMPT_SAMPLE)
        return _session_workload(plan, blocks, share, bs, e, _last_step_tokens(scn))
    prompt = float(w.prompt_tokens.mean) + float(share @ lengths)
    out = float(w.output_tokens.mean)
    # a request frees ceil((prompt + output - 1) / bs) blocks (half a block on average above
    # the tokens), of which its shared prompt's full blocks are the prompt's
    own = (prompt + out - 1.0) / bs + 0.5 - float(share @ blocks)
    # one entry per shared prompt, weighted by its share, plus the requests without one
    hit = np.maximum(blocks - e, 0.0)
    rest = max(1.0 - float(share.sum()), 0.0)
    return CacheWorkload(
        prompt_mean=prompt,
        item_blocks=blocks,
        item_share=share,
        own_freed=own,
        hit_cached=np.append(hit, 0.0),
        hit_lost=np.append(hit, 0.0),
        item_of=np.append(np.arange(blocks.shape[0]), -1).astype(np.int64),
        weight=np.append(share, rest),
        sessions=False,
        turns=np.zeros(0, dtype=np.int64),
        prompt=np.zeros(0, dtype=np.int64),
        output=np.zeros(0, dtype=np.int64),
        think=np.zeros(0),
        prefix_blocks=np.zeros(0, dtype=np.int64),
    )


def _last_step_tokens(scn: Scenario) -> int:
    """Tokens a request's last step emits on average, rounded: they are never committed, so a
    finished turn caches ``prompt + output - this`` tokens (``cacheable``)."""
    k = scn.spec.k if scn.spec.policy == "fixed" else max(scn.spec.k, 1)
    if k <= 0:
        return 1
    return max(1, round(expected_tokens_per_step(scn.acceptance.mean_alpha, k)))


def _session_workload(
    plan: ConversationPlan, blocks: _F64, share: _F64, bs: int, e: int, last: int
) -> CacheWorkload:
    prompt = plan.prompt.astype(np.int64)
    out = plan.output.astype(np.int64)
    first = plan.first
    session = np.repeat(np.arange(plan.sessions), plan.turns)
    group = plan.group[session]
    pfx = plan.prefix[session]
    g = np.minimum(pfx // bs, (prompt - 1) // bs)  # shared-prompt blocks a turn can hit
    # the conversation's full blocks when the previous turn ended (its last step's tokens are
    # not committed)
    prev_cached = np.roll((prompt + out - last) // bs, 1)
    c = np.minimum(prev_cached, (prompt - 1) // bs)
    is_first = np.zeros(prompt.shape[0], dtype=bool)
    is_first[first] = True
    c = np.where(is_first, g, np.maximum(c, g))
    hit_cached = np.maximum(c - e, 0).astype(np.float64)
    hit_lost = np.maximum(g - e, 0).astype(np.float64)
    freed = -((-(prompt + out - 1)) // bs) - pfx // bs  # own blocks released at the end
    return CacheWorkload(
        prompt_mean=float(prompt.mean()),
        item_blocks=blocks,
        item_share=share,
        own_freed=float(freed.mean()),
        hit_cached=hit_cached,
        hit_lost=hit_lost,
        item_of=group.astype(np.int64),
        weight=np.full(prompt.shape[0], 1.0 / prompt.shape[0]),
        sessions=True,
        turns=plan.turns.astype(np.int64),
        prompt=prompt,
        output=out,
        think=plan.think.astype(np.float64),
        prefix_blocks=(plan.prefix // bs).astype(np.int64),
        last_tokens=last,
        eagle=e,
    )


@dataclass(frozen=True)
class CacheState:
    """The prefix cache at an operating point.

    Attributes
    ----------
    hit_rate
        Share of prompt tokens served from the cache.
    char_time
        Che's characteristic time ``T_C`` (s): how long a freed block stays cached (``inf``:
        an unlimited cache).
    shared_held
        Blocks of shared prompts held by running requests (each counted once).
    free_blocks
        Blocks the free list holds (capacity less the running requests' blocks).
    """

    hit_rate: float
    char_time: float
    shared_held: float
    free_blocks: float


def shared_blocks(scn: Scenario, rate: float, hold_s: float) -> tuple[float, float]:
    """Shared-prompt blocks that running requests hold, each counted once, and the mean of
    those a request carries.

    Parameters
    ----------
    scn
        Scenario.
    rate
        Request rate per replica (req/s).
    hold_s
        Mean time a request holds its blocks (s).

    Returns
    -------
    distinct, per_request
        ``sum_i B_i (1 - exp(-lambda share p_i W))`` (M/G/inf: a prompt is held while any of
        its requests runs) and ``sum_i share p_i B_i``.
    """
    cw = cache_workload(scn)
    lam_i = rate * cw.item_share
    held = float(cw.item_blocks @ -np.expm1(-lam_i * max(hold_s, 0.0)))
    return held, float(cw.item_share @ cw.item_blocks)


def cache_state(
    scn: Scenario, rate: float, in_engine: float, hold_s: float, blocks_each: float | None = None
) -> CacheState:
    """The predicted hit rate at an operating point (Che's approximation; module docstring).

    Parameters
    ----------
    scn
        Scenario (its workload's sharing structure, ``server`` block size and KV capacity).
    rate
        Request rate per replica (req/s).
    in_engine
        Mean requests in the engine (holding blocks).
    hold_s
        Mean time a request holds its blocks (s): the time from admission to its end.
    blocks_each
        Mean blocks a running request holds, shared prompts included (default: its mean prompt
        and look-ahead; the operating point's :func:`~sdsim.analytic.operating.
        kv_blocks_per_request` adds the answer so far).

    Returns
    -------
    CacheState
    """
    cw = cache_workload(scn)
    bs = scn.server.block_size
    cap = num_gpu_blocks(scn)
    lam = max(float(rate), 0.0)
    lam_i = lam * cw.item_share
    w = max(float(hold_s), 0.0)
    held, per_req = shared_blocks(scn, lam, w)
    # the running requests' own blocks: their mean context and look-ahead, less shared ones
    if blocks_each is None:
        k = scn.spec.k if scn.spec.policy == "fixed" else max(scn.spec.k, scn.spec.k_max)
        blocks_each = (cw.prompt_mean + k) / bs + 0.5
    own_running = max(float(blocks_each) - per_req, 0.0)
    free = math.inf if cap is None else cap - in_engine * own_running - held
    idle = np.exp(-lam_i * w)
    same = _same_replica(scn)
    api = float(scn.server.api_delay_s)
    # per turn, the time it holds its blocks: the mean time in system, in proportion to its answer
    hold = w * cw.output / max(float(cw.output.mean()), 1.0) if cw.sessions else np.zeros(0)
    hits = np.zeros(cw.prompt.shape[0])
    n_turns = max(cw.prompt.shape[0], 1)

    def own_occupancy(t: float) -> float:
        if not cw.sessions:
            return lam * cw.own_freed * t
        resid = _conversations(
            cw.turns, cw.prompt, cw.output, cw.think, cw.prefix_blocks, hold, api, t,
            bs, cw.eagle, cw.last_tokens, hits,
        )
        return lam * (cw.own_freed * t - same * resid / n_turns)

    def occupancy(t: float) -> float:
        return own_occupancy(t) + float(cw.item_blocks @ (idle * -np.expm1(-lam_i * t)))

    if not math.isfinite(free):
        tc = math.inf
    elif free <= 0 or lam == 0:
        tc = 0.0 if free <= 0 else math.inf
    else:
        hi = 1.0
        while occupancy(hi) < free and hi < 1e9:
            hi *= 4.0
        tc = hi if hi >= 1e9 else float(brentq(lambda t: occupancy(t) - free, 0.0, hi, xtol=1e-3))
    item_ok = np.ones(cw.item_of.shape[0])
    has_item = cw.item_of >= 0
    if cw.item_blocks.shape[0]:
        miss = np.exp(-lam_i * (w + tc)) if math.isfinite(tc) else np.zeros_like(lam_i)
        item_ok[has_item] = 1.0 - miss[cw.item_of[has_item]]
    if cw.sessions:
        own_occupancy(tc)  # the hits at T_C (a turn sent to another replica finds its shared
        # prompt only)
        blocks_hit = same * hits + (1 - same) * cw.hit_lost
    else:
        blocks_hit = cw.hit_cached
    hit_tokens = bs * float(cw.weight @ (item_ok * blocks_hit))
    hit = min(hit_tokens / cw.prompt_mean, 1.0 - 1e-9) if cw.prompt_mean > 0 else 0.0
    if cw.sessions:
        while len(_TURN_HITS) >= _TURN_HITS_KEPT:
            _TURN_HITS.pop(next(iter(_TURN_HITS)))
        _TURN_HITS[(_workload_key(scn), round(max(hit, 0.0), 4))] = item_ok * blocks_hit
    return CacheState(max(hit, 0.0), tc, held, free)



@jit
def _conversations(
    turns: npt.NDArray[np.int64],
    prompt: npt.NDArray[np.int64],
    output: npt.NDArray[np.int64],
    think: npt.NDArray[np.float64],
    prefix_blocks: npt.NDArray[np.int64],
    hold: npt.NDArray[np.float64],
    api: float,
    tc: float,
    bs: int,
    eagle: int,
    last: int,
    hits: npt.NDArray[np.float64],
) -> float:
    """Replay the plan's conversations against a cache that keeps a freed block ``tc`` seconds.

    Per session, the release time of the cached copy of each conversation block: a turn hits the
    longest run of live blocks from the first (its shared prompt's always; at most ``(prompt -
    1) // bs``, one fewer with EAGLE), holds them ``hold`` seconds and frees them (fresh again);
    of the blocks it computed, one whose key has a live copy is not cached (the engine keeps
    the first copy of a key: the block EAGLE recomputed stays the old copy, which ages from
    the earlier turn, so a chain can break there), the others are. The next turn is sent its
    think time (plus ``api``) after the answer. Writes each turn's hit blocks into ``hits``;
    returns the sum over taken copies of ``tc - age``: how much sooner than ``tc`` they left
    the free list.
    """
    resid = 0.0
    i = 0
    for s in range(turns.shape[0]):
        pfx = prefix_blocks[s]
        top = 0
        for q in range(i, i + turns[s]):
            top = max(top, (prompt[q] + output[q]) // bs + 1, (prompt[q] - 1) // bs + 1)
        rel = np.full(top + 1, -np.inf)
        t = 0.0
        for _ in range(turns[s]):
            most = (prompt[i] - 1) // bs
            h = 0
            while h < most and (h < pfx or t - rel[h] < tc):
                h += 1
            if h > 0:
                h -= eagle
            hits[i] = h
            for j in range(pfx, h):
                resid += tc - (t - rel[j])
            end = t + hold[i]
            full = (prompt[i] + output[i] - last) // bs
            for j in range(pfx, full):
                if j < h or not end - rel[j] < tc:
                    rel[j] = end
            t = end + think[i] + api
            i += 1
    return resid


def prefill_law(scn: Scenario) -> PromptLaw | None:
    """The law of a session turn's prefilled tokens (its prompt less its hit blocks) with the
    cached tokens they attend to, binned as the step curve prices prompt chunks
    (:data:`PROMPT_BINS` points); ``None`` without sessions.

    Sessions mix short prefills (a turn that finds its conversation: the new user tokens) with
    long ones (a first turn, or one whose conversation was evicted: the whole conversation).
    With a predicted hit rate each turn's hits are the replay's (:func:`cache_state`); with a
    given one, a turn finds its whole cached conversation with the probability that makes the
    mean hit rate the given one, else its shared prompt only.
    """
    if scn.workload.sessions is None:
        return None
    cw = cache_workload(scn)
    bs = scn.server.block_size
    h = scn.analytic.prefix_hit_rate if scn.server.prefix_caching else None
    hit = 0.0 if h is None else float(h)
    n = cw.prompt.shape[0]
    if hit <= 0:
        cached, weights = np.zeros(n), np.full(n, 1.0 / n)
    elif (got := _TURN_HITS.get((_workload_key(scn), round(hit, 4)))) is not None:
        cached, weights = bs * got, np.full(n, 1.0 / n)
    else:
        lost, full = bs * cw.hit_lost.mean(), bs * cw.hit_cached.mean()
        pi = min(max((hit * cw.prompt_mean - lost) / max(full - lost, 1e-9), 0.0), 1.0)
        cached = np.concatenate([bs * cw.hit_cached, bs * cw.hit_lost])
        weights = np.concatenate([np.full(n, pi / n), np.full(n, (1 - pi) / n)])
    values = np.resize(cw.prompt, cached.shape[0]) - cached
    order = np.argsort(values, kind="stable")
    vb, pb = bin_equal_mass(np.maximum(values[order], 1.0), weights[order], PROMPT_BINS)
    # the bins depend on the weights' order only, so the cached tokens bin alike
    cb, _ = bin_equal_mass(cached[order], weights[order], PROMPT_BINS)
    return PromptLaw(np.maximum(np.rint(vb), 1).astype(np.int64), pb / pb.sum(), cb)


def _same_replica(scn: Scenario) -> float:
    """Probability that a session's next turn reaches the replica that ran its previous one:
    1 with one replica or the prefix-affinity router, else ``1 / replicas`` (round-robin,
    random and least-outstanding routers spread turns evenly, blind to the conversation)."""
    reps = scn.server.replicas
    return 1.0 if reps == 1 or scn.server.router == "prefix-affinity" else 1.0 / reps


def kv_demand(scn: Scenario, running: npt.ArrayLike, blocks_each: float) -> _F64:
    """KV blocks that ``running`` requests in the engine hold, a shared prompt counted once.

    Parameters
    ----------
    scn
        Scenario (its shared prompts and their popularity).
    running
        Requests in the engine (any shape; need not be whole).
    blocks_each
        Mean blocks a request holds, its shared prompt included
        (:func:`~sdsim.analytic.operating.kv_blocks_per_request`).

    Returns
    -------
    numpy.ndarray
        ``n (blocks_each - sum_i q_i B_i) + sum_i B_i (1 - (1 - q_i)^n)``: each request's own
        blocks, plus every shared prompt that at least one of the ``n`` holds (``q_i`` the share
        of requests carrying prompt ``i``, drawn independently).
    """
    n = np.asarray(running, dtype=np.float64)
    if not scn.server.prefix_caching or scn.workload.shared_prefix is None:
        return n * float(blocks_each)
    cw = cache_workload(scn)
    q, b = cw.item_share, cw.item_blocks
    own = max(float(blocks_each) - float(q @ b), 0.0)
    distinct = -np.expm1(np.multiply.outer(n, np.log1p(-np.minimum(q, 1 - 1e-12)))) @ b
    return n * own + distinct
