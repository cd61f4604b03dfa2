"""The prompts the closed-form model prices: a request's whole prompt (its attention context) and
the part it prefills (the rest comes from the prefix cache).

A workload with shared system prompts prepends them (``workload.shared_prefix``: its mean prompt
is the prompt law's mean plus the mean prefix a request carries); a multi-turn session resends
its conversation (``workload.sessions``: a turn's prompt is the conversation so far, whose mean
is read from the workload's own conversation plan, :func:`sdsim.traffic.conversation_plan`, a
draw of the sessions without any arrival or engine). The share of prompt tokens taken from the
cache is ``analytic.prefix_hit_rate`` when given (with ``server.prefix_caching`` on), else none:
the model does not predict a hit rate from the sharing structure and the cache size.
"""

from __future__ import annotations

__all__ = ["PROMPT_SAMPLE", "PromptMeans", "prompt_means"]

from dataclasses import dataclass

import numpy as np

from sdsim.scenario import Scenario
from sdsim.traffic import conversation_plan, prefix_lengths, prefix_popularity

# Turns drawn to estimate a session workload's mean turn prompt (its standard error is ~1% for
# the shipped scenarios' laws).
PROMPT_SAMPLE = 20_000


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
    w = scn.workload
    h = scn.analytic.prefix_hit_rate if scn.server.prefix_caching else None
    hit = float(h) if h is not None else 0.0
    if w.sessions is not None:
        context = _session_prompt(scn)
    else:
        context = float(w.prompt_tokens.mean)
        if w.shared_prefix is not None:
            sp = w.shared_prefix
            # the run's prompts (their lengths are drawn once per seed), by popularity
            lengths = prefix_lengths(sp, scn.seed).astype(np.float64)
            context += sp.share * float(prefix_popularity(sp) @ lengths)
    return PromptMeans(context, context * (1.0 - hit), hit)


# mean turn prompt by the fields it depends on (a rate sweep reuses it)
_SESSION_PROMPTS: dict[str, float] = {}


def _session_prompt(scn: Scenario) -> float:
    key = scn.model_dump_json(include={"workload", "target", "server", "spec", "seed"})
    key = key.replace(f'"rate":{scn.workload.rate!r}', "")  # the rate draws no length
    if key not in _SESSION_PROMPTS:
        plan = conversation_plan(scn, scn.seed, num_requests=PROMPT_SAMPLE)
        _SESSION_PROMPTS[key] = float(np.mean(plan.prompt))
    return _SESSION_PROMPTS[key]
