"""Golden figures: what the README, docs, notes and scenario comments quote is what the code gives.

Like SimPy's golden examples, every figure a document quotes from a command or a seeded run is
recomputed here and compared at the precision it is quoted with. A :class:`Quote` finds the
figures with a pattern on the file as written (a space in the pattern matches any run of
whitespace and ``#`` comment markers, so a quote may wrap over comment lines); each named group is
one figure. A figure written ``~X`` may be off by one unit of its last digit; any other must round
to the quoted digits. A failure names the file, the figure and the value to write instead;
``python -m tests.test_docs --fix`` writes them (at the quoted precision), so a change that moves
the numbers updates its documents in one command. A pattern that no longer matches means the
document was edited: the pattern must follow it.

Runs here are the documents' own (seeded, at most 20,000 requests: seconds). The figures of the
README's capacity plan and its headroom come from minutes of simulation: ``make docfigures``
checks them (marker ``docfigures``, left out of ``make test``).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

import sdsim
from sdsim.scenario import Scenario
from tests.conftest import ROOT

Figures = dict[str, float]


@dataclass(frozen=True)
class Quote:
    """Figures quoted in one place of one document and how to compute them now."""

    file: str
    pattern: str
    compute: Callable[[], Figures]


def _flexible(pattern: str) -> re.Pattern[str]:
    """``pattern`` with each space matching any run of whitespace and comment markers, so it finds
    a quote in the file as written (wrapped over lines, inside ``#`` comments)."""
    return re.compile(re.sub(r"(?<!\\) ", r"[\\s#]+", pattern), re.S)


def disagreement(quoted: str, value: float, approx: bool) -> str | None:
    """Why ``value`` does not print as ``quoted`` (None when it does)."""
    q = quoted.replace(",", "")
    decimals = len(q.split(".")[1]) if "." in q else 0
    unit = 10.0**-decimals
    tol = unit * (1.0 if approx else 0.5) + 1e-9 * max(1.0, abs(value))
    if math.isfinite(value) and abs(value - float(q)) <= tol:
        return None
    return f"{'~' if approx else ''}{quoted} quoted, the code gives {written_like(quoted, value)}"


def written_like(quoted: str, value: Any) -> str:
    """``value`` written the way ``quoted`` is: as many decimals, a sign and thousands separators
    where it has them, ``yes`` / ``NO`` for a verdict."""
    if quoted in ("yes", "NO"):
        return "yes" if value else "NO"
    q = quoted.replace(",", "")
    decimals = len(q.split(".")[1]) if "." in q else 0
    sign = "+" if quoted[0] in "+-" else ""
    comma = "," if "," in quoted else ""
    return f"{float(value):{sign}{comma}.{decimals}f}"


def _problems(quote: Quote, text: str) -> list[tuple[int, int, str, str]]:
    """(start, end, replacement, message) of every figure of ``quote`` that disagrees."""
    m = _flexible(quote.pattern).search(text)
    assert m, f"{quote.file}: no text matches {quote.pattern!r}: the document changed, update it"
    got = quote.compute()
    found = []
    for name, quoted in m.groupdict().items():
        approx = text[max(m.start(name) - 1, 0)] == "~"
        value = got[name]
        if quoted in ("yes", "NO"):
            ok = (quoted == "yes") == bool(value)
            why = None if ok else f"{quoted} quoted, the code gives {written_like(quoted, value)}"
        else:
            why = disagreement(quoted, float(value), approx)
        if why:
            context = re.sub(r"\s+", " ", text[max(m.start(name) - 60, 0) : m.end(name) + 20])
            found.append((m.start(name), m.end(name), written_like(quoted, value),
                          f"{quote.file}: {name}: {why} (in '...{context}...')"))
    return found


def check(quote: Quote) -> list[str]:
    """Every figure of ``quote`` that disagrees with the code, one line each."""
    return [p[3] for p in _problems(quote, (ROOT / quote.file).read_text())]


def fix(quotes: list[Quote]) -> list[str]:
    """Rewrite every disagreeing figure of ``quotes`` in its file with the code's value, at the
    precision quoted; return what changed."""
    changed = []
    for q in quotes:
        path = ROOT / q.file
        text = path.read_text()
        for start, end, new, msg in sorted(_problems(q, text), reverse=True):
            text = text[:start] + new + text[end:]
            changed.append(msg)
        path.write_text(text)
    return changed


# --------------------------------------------------------------------------- shared computations


def scenario(name: str, **over: Any) -> Scenario:
    return sdsim.load_scenario(ROOT / "scenarios" / f"{name}.yaml", over or None)


@cache
def _sim(name: str, over: tuple[tuple[str, Any], ...], seed: int = 0) -> dict[str, Any]:
    return sdsim.simulate(scenario(name, **dict(over)), seed=seed, keep_records=False).summary


def sim(name: str, seed: int = 0, **over: Any) -> dict[str, Any]:
    """The summary of a seeded run of a shipped scenario (cached within a test process)."""
    return _sim(name, tuple(sorted(over.items())), seed)


@cache
def _pred(name: str, over: tuple[tuple[str, Any], ...]) -> Any:
    return sdsim.predict(scenario(name, **dict(over)), rates=[])


def pred(name: str, **over: Any) -> Any:
    """``sdsim.predict`` of a shipped scenario (no best-k search)."""
    return _pred(name, tuple(sorted(over.items())))


def step_ms(name: str, batch: int, k: int | None = None, prefill: int = 0) -> float:
    """A step's time as ``sdsim costs`` prints it: requests at the mean KV length of a running
    request (prompt + half the output)."""
    scn = scenario(name)
    ctx = int(scn.workload.prompt_tokens.mean + scn.workload.output_tokens.mean / 2)
    return 1e3 * sdsim.step_time(scn, batch, ctx if batch else 0, prefill, k=k).total


def cli(*args: str, cwd: Path = ROOT) -> str:
    """What ``sdsim ARGS`` prints, run in this process from ``cwd`` (laid out for 100 columns, as
    when piped)."""
    from sdsim.cli import main

    buf, here = io.StringIO(), os.getcwd()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(buf):
            main(list(args))
    except SystemExit as exc:
        assert exc.code in (0, None), f"sdsim {' '.join(args)} exited {exc.code}"
    finally:
        os.chdir(here)
    return buf.getvalue()


# --------------------------------------------------------------------------- scenario comments

SCENARIOS = [
    Quote(
        "scenarios/default.yaml",
        r"(?P<plain_step>[\d.]+) ms per plain step and (?P<k4_step>[\d.]+) ms per k = 4 step at "
        r"batch 1, a 512-token prefill (?P<prefill>[\d.]+) ms\. Analytic saturation "
        r"~(?P<sat>\d+) req/s with k = 4 \(~(?P<sat0>\d+) req/s plain\), so 22 req/s is "
        r"~(?P<load>\d+)% load\. Simulated \(seed 0, 3000 requests\): e2e mean (?P<e2e>[\d.]+) s "
        r"\(p99 (?P<p99>[\d.]+) s\) against (?P<e2e0>[\d.]+) s for plain decoding",
        lambda: {
            "plain_step": step_ms("default", 1, k=0),
            "k4_step": step_ms("default", 1),
            "prefill": step_ms("default", 0, prefill=512),
            "sat": pred("default").saturation_rate,
            "sat0": pred("default", **{"spec.k": 0}).saturation_rate,
            "load": 100 * 22 / pred("default").saturation_rate,
            "e2e": sim("default")["e2e_mean"],
            "p99": sim("default")["e2e_p99"],
            "e2e0": sim("plain")["e2e_mean"],
        },
    ),
    Quote(
        "scenarios/plain.yaml",
        r"saturation ~(?P<sat>\d+) req/s, so 22 req/s is ~(?P<load>\d+)% load \(seed 0, 3000 "
        r"requests: e2e mean (?P<e2e>[\d.]+) s, p99 (?P<p99>[\d.]+) s\)",
        lambda: {
            "sat": pred("plain").saturation_rate,
            "load": 100 * 22 / pred("plain").saturation_rate,
            "e2e": sim("plain")["e2e_mean"],
            "p99": sim("plain")["e2e_p99"],
        },
    ),
    Quote(
        "scenarios/bursty-gamma.yaml",
        r"saturation ~(?P<sat>\d+) req/s \(analytic\), so 20 req/s is a mean load of "
        r"~(?P<load>\d+)%.*?Seed 0, 3000 requests: e2e mean (?P<e2e>[\d.]+) s / p99 "
        r"(?P<p99>[\d.]+) s / TTFT mean (?P<ttft>\d+) ms here, against (?P<e2e1>[\d.]+) s / "
        r"(?P<p991>[\d.]+) s / (?P<ttft1>\d+) ms with Poisson-like gaps",
        lambda: {
            "sat": pred("bursty-gamma").saturation_rate,
            "load": 100 * 20 / pred("bursty-gamma").saturation_rate,
            "e2e": sim("bursty-gamma")["e2e_mean"],
            "p99": sim("bursty-gamma")["e2e_p99"],
            "ttft": 1e3 * sim("bursty-gamma")["ttft_mean"],
            "e2e1": sim("bursty-gamma", **{"workload.cv": 1})["e2e_mean"],
            "p991": sim("bursty-gamma", **{"workload.cv": 1})["e2e_p99"],
            "ttft1": 1e3 * sim("bursty-gamma", **{"workload.cv": 1})["ttft_mean"],
        },
    ),
    Quote(
        "scenarios/moe-qwen3-30b-a3b.yaml",
        r"Analytic saturation ~(?P<sat>\d+) req/s with k = 3 against ~(?P<sat0>\d+) req/s for "
        r"plain decoding\. Simulated \(seed 0, 1500 requests\): at 8 req/s e2e mean "
        r"(?P<e2e>[\d.]+) s with k = 3 vs (?P<e2e0>[\d.]+) s with k = 0 \(speedup "
        r"(?P<speedup>[\d.]+)\); at 0.5 req/s only (?P<e2e_low>[\d.]+) s vs (?P<e2e0_low>[\d.]+) s "
        r"\(speedup (?P<speedup_low>[\d.]+)\)\. The analytic mean at 8 req/s \(`sdsim predict`\) "
        r"is (?P<pred>[\d.]+) s \(p99 (?P<pred99>[\d.]+) s\).*?usable for KV at \d+ kB per token: "
        r"(?P<blocks>\d+) blocks.*?\(peak (?P<peak>\d+) blocks at 8 req/s",
        lambda: {
            "sat": pred("moe-qwen3-30b-a3b").saturation_rate,
            "sat0": pred("moe-qwen3-30b-a3b", **{"spec.k": 0}).saturation_rate,
            "e2e": sim("moe-qwen3-30b-a3b")["e2e_mean"],
            "e2e0": sim("moe-qwen3-30b-a3b", **{"spec.k": 0})["e2e_mean"],
            "speedup": sim("moe-qwen3-30b-a3b", **{"spec.k": 0})["e2e_mean"]
            / sim("moe-qwen3-30b-a3b")["e2e_mean"],
            "e2e_low": sim("moe-qwen3-30b-a3b", **{"workload.rate": 0.5})["e2e_mean"],
            "e2e0_low": sim("moe-qwen3-30b-a3b", **{"workload.rate": 0.5, "spec.k": 0})["e2e_mean"],
            "speedup_low": sim("moe-qwen3-30b-a3b", **{"workload.rate": 0.5, "spec.k": 0})[
                "e2e_mean"
            ]
            / sim("moe-qwen3-30b-a3b", **{"workload.rate": 0.5})["e2e_mean"],
            "pred": pred("moe-qwen3-30b-a3b").summary["e2e_mean"],
            "pred99": pred("moe-qwen3-30b-a3b").summary["e2e_p99"],
            "blocks": sim("moe-qwen3-30b-a3b")["kv_blocks_total"],
            "peak": sim("moe-qwen3-30b-a3b")["kv_peak_blocks"],
        },
    ),
    Quote(
        "scenarios/ngram-summarization.yaml",
        r"a 2588-token prefill chunk ~(?P<prefill>\d+) ms.*?Analytic saturation ~(?P<sat>[\d.]+) "
        r"req/s with k = 4 \(~(?P<sat0>[\d.]+) req/s plain\), so 6 req/s is ~(?P<load>\d+)% load\. "
        r"Simulated \(seed 0, 1200 requests\): e2e mean (?P<e2e>[\d.]+) s \(k = 0: "
        r"(?P<e2e0>[\d.]+) s\), p99 (?P<p99>[\d.]+) s \(the long answers\), TTFT mean "
        r"(?P<ttft>\d+) ms",
        lambda: {
            "prefill": step_ms("ngram-summarization", 0, prefill=2588),
            "sat": pred("ngram-summarization").saturation_rate,
            "sat0": pred("ngram-summarization", **{"spec.k": 0}).saturation_rate,
            "load": 100 * 6 / pred("ngram-summarization").saturation_rate,
            "e2e": sim("ngram-summarization")["e2e_mean"],
            "e2e0": sim("ngram-summarization", **{"spec.k": 0})["e2e_mean"],
            "p99": sim("ngram-summarization")["e2e_p99"],
            "ttft": 1e3 * sim("ngram-summarization")["ttft_mean"],
        },
    ),
    Quote(
        "scenarios/qwen3-8b-eagle-a100.yaml",
        r"~(?P<step>[\d.]+) ms per plain step at batch 1 \(host costs included\), a 1024-token "
        r"prefill chunk ~(?P<prefill>\d+) ms.*?Analytic saturation ~(?P<sat>[\d.]+) req/s with "
        r"k = 4 \(~(?P<sat0>[\d.]+) req/s plain\).*?Simulated \(seed 0, 600 requests\): e2e mean "
        r"(?P<e2e>[\d.]+) s \(k = 0: (?P<e2e0>[\d.]+) s\) against (?P<empty>[\d.]+) s for requests "
        r"that find the server empty.*?costs ~(?P<cost>\d+)%.*?: ~(?P<blocks>[\d.]+)k blocks",
        lambda: {
            "step": step_ms("qwen3-8b-eagle-a100", 1, k=0),
            "prefill": step_ms("qwen3-8b-eagle-a100", 0, prefill=1024),
            "sat": pred("qwen3-8b-eagle-a100").saturation_rate,
            "sat0": pred("qwen3-8b-eagle-a100", **{"spec.k": 0}).saturation_rate,
            "e2e": sim("qwen3-8b-eagle-a100")["e2e_mean"],
            "e2e0": sim("qwen3-8b-eagle-a100", **{"spec.k": 0})["e2e_mean"],
            "empty": sim("qwen3-8b-eagle-a100", **{"workload.rate": 0.01})["e2e_mean"],
            "cost": 100
            * (
                sim("qwen3-8b-eagle-a100")["e2e_mean"]
                / sim("qwen3-8b-eagle-a100", **{"workload.rate": 0.01})["e2e_mean"]
                - 1
            ),
            "blocks": sim("qwen3-8b-eagle-a100")["kv_blocks_total"] / 1e3,
        },
    ),
    Quote(
        "scenarios/llama70b-tp4-a100.yaml",
        r"~(?P<step>[\d.]+) ms per plain decode step at batch 1.*?a 512-token prefill chunk "
        r"~(?P<prefill>\d+) ms.*?At batch 1 a k = 4 step costs ~(?P<step4>\d+) ms for E = "
        r"(?P<E>[\d.]+) tokens.*?break-even load at ~(?P<be>[\d.]+) req/s \(saturation "
        r"~(?P<sat>[\d.]+) req/s with k = 4, ~(?P<sat0>\d+) req/s plain\)\. Simulated \(seed 0, "
        r"1000 requests\) at 1 req/s: e2e mean (?P<e2e>[\d.]+) s with k = 4 vs (?P<e2e0>[\d.]+) s "
        r"with k = 0 \(speedup (?P<speedup>[\d.]+)\); the analytic mean (?P<pred>[\d.]+) s.*?: "
        r"(?P<blocks>\d+) blocks",
        lambda: {
            "step": step_ms("llama70b-tp4-a100", 1, k=0),
            "prefill": step_ms("llama70b-tp4-a100", 0, prefill=512),
            "step4": step_ms("llama70b-tp4-a100", 1),
            "E": sdsim.acceptance.expected_tokens_per_step(0.75, 4),
            "be": pred("llama70b-tp4-a100").break_even_rate,
            "sat": pred("llama70b-tp4-a100").saturation_rate,
            "sat0": pred("llama70b-tp4-a100", **{"spec.k": 0}).saturation_rate,
            "e2e": sim("llama70b-tp4-a100")["e2e_mean"],
            "e2e0": sim("llama70b-tp4-a100", **{"spec.k": 0})["e2e_mean"],
            "speedup": sim("llama70b-tp4-a100", **{"spec.k": 0})["e2e_mean"]
            / sim("llama70b-tp4-a100")["e2e_mean"],
            "pred": pred("llama70b-tp4-a100").summary["e2e_mean"],
            "blocks": sim("llama70b-tp4-a100")["kv_blocks_total"],
        },
    ),
    Quote(
        "scenarios/prefix-affinity-4x.yaml",
        r"Seed 0, 3000 requests: prefix_hit_rate (?P<hit>[\d.]+) with prefix-affinity against "
        r"(?P<hit_rr>[\d.]+) round-robin; TTFT mean (?P<ttft>[\d.]+) ms against "
        r"(?P<ttft_rr>[\d.]+) ms; e2e mean (?P<e2e>[\d.]+) s against (?P<e2e_rr>[\d.]+) s",
        lambda: {
            "hit": sim("prefix-affinity-4x")["prefix_hit_rate"],
            "hit_rr": sim("prefix-affinity-4x", **{"server.router": "round-robin"})[
                "prefix_hit_rate"
            ],
            "ttft": 1e3 * sim("prefix-affinity-4x")["ttft_mean"],
            "ttft_rr": 1e3
            * sim("prefix-affinity-4x", **{"server.router": "round-robin"})["ttft_mean"],
            "e2e": sim("prefix-affinity-4x")["e2e_mean"],
            "e2e_rr": sim("prefix-affinity-4x", **{"server.router": "round-robin"})["e2e_mean"],
        },
    ),
    Quote(
        "scenarios/trace-replay.yaml",
        r"the same server as default.yaml \(saturation ~(?P<sat>\d+) req/s",
        lambda: {"sat": pred("default").saturation_rate},
    ),
]


def kv_pressure_table() -> Quote:
    """scenarios/kv-pressure.yaml's two tables: 8 rates, unlimited cache and 3000 blocks."""
    rates = (20, 25, 28, 30, 32, 35, 40, 45)
    sim_rows = "".join(
        rf"{r} \| (?P<u_e2e_{r}>[\d.]+)(?: s)? (?P<u_ttft_{r}>[\d.]+)(?: s)? (?P<u_pre_{r}>\d+) \| "
        rf"(?P<b_e2e_{r}>[\d.]+)(?: s)? (?P<b_ttft_{r}>[\d.]+)(?: s)? (?P<b_pre_{r}>\d+) "
        rf"(?P<stable_{r}>yes|NO)(?: <- this file)? "
        for r in rates
    )
    err_rows = ".*?".join(
        rf"{r} \| (?P<u_err_{r}>[+-][\d.]+)% (?P<u_err99_{r}>[+-][\d.]+)% \| "
        rf"(?P<b_err_{r}>[+-][\d.]+)% (?P<b_err99_{r}>[+-][\d.]+)% (?P<pkv_{r}>[\d.]+)%"
        for r in rates
    )

    def compute() -> Figures:
        got: Figures = {}
        for r in rates:
            for tag, over in (("u", {"server.num_gpu_blocks": "unlimited"}), ("b", {})):
                s = sim("kv-pressure", **{"workload.rate": r, **over})
                p = pred("kv-pressure", **{"workload.rate": r, **over}).summary
                got[f"{tag}_e2e_{r}"] = s["e2e_mean"]
                got[f"{tag}_ttft_{r}"] = s["ttft_p99"]
                got[f"{tag}_pre_{r}"] = s["preemptions"]
                got[f"{tag}_err_{r}"] = 100 * (p["e2e_mean"] / s["e2e_mean"] - 1)
                got[f"{tag}_err99_{r}"] = 100 * (p["e2e_p99"] / s["e2e_p99"] - 1)
                if tag == "b":
                    got[f"stable_{r}"] = s["stable"] is True
                    got[f"pkv_{r}"] = 100 * p["p_kv_full"]
        return got

    return Quote("scenarios/kv-pressure.yaml", sim_rows.strip() + r".*?" + err_rows, compute)


@pytest.mark.parametrize(
    "quote", [*SCENARIOS, kv_pressure_table()], ids=lambda q: q.file.removeprefix("scenarios/")
)
def test_scenario_comments_quote_what_the_code_gives(quote: Quote) -> None:
    assert check(quote) == []


# --------------------------------------------------------------------------- README, docs, notes


@cache
def _acceptance_fit_alpha() -> Figures:
    doc = json.loads(cli("acceptance", "fit", "--draft-acceptance-rate", "0.44", "--k", "4",
                         "--json"))
    scn = sdsim.load_scenario(None, {"acceptance": {"preset": "llama-3.1-8b/eagle-3/mt-bench"}})
    return {"alpha": doc["alpha"], "preset_alpha": scn.acceptance.mean_alpha}


def _model_max_rate() -> Figures:
    out = str(ROOT / "out" / "test-docs-maxrate")
    doc = json.loads(cli("plan", "scenarios/capacity-70b-chat.yaml", "--max-rate", "--confirm",
                         "0", "--json", "--out", out))
    return {"model": doc["model_rate"], "sat": doc["saturation_rate"]}


def _explore_batch_law() -> Figures:
    """docs/explore.md: the batch-size law at 25 req/s, simulated (two seeds, 20,000 requests, the
    time-averaged number in system between the first measured and the last arrival) and the
    model's birth-death law."""
    import numpy as np

    from sdsim.analytic.operating import derive_coefficients
    from sdsim.analytic.prediction import gps_law
    from sdsim.costs.build import build_cost_model

    scn = scenario("default", **{"workload.rate": 25, "workload.num_requests": 20000,
                                 "warmup_requests": 200})
    means, sds = [], []
    for seed in (0, 1):
        req = sdsim.simulate(scn, seed=seed).requests
        arr, fin = req["arrival"].to_numpy(), req["finish"].to_numpy()
        t = np.concatenate([arr, fin])
        order = np.argsort(t, kind="stable")
        n = np.cumsum(np.concatenate([np.ones_like(arr), -np.ones_like(fin)])[order])
        dt = np.diff(np.clip(t[order], arr[scn.warmup_requests], arr.max()))
        mean = float((dt * n[:-1]).sum() / dt.sum())
        means.append(mean)
        sds.append(float(np.sqrt((dt * (n[:-1] - mean) ** 2).sum() / dt.sum())))
    law = gps_law(scn, derive_coefficients(scn), 25.0, build_cost_model(scn))
    k = np.arange(law.pmf.size)
    m = float((k * law.pmf).sum())
    return {"mean_lo": min(*means, m), "mean_hi": max(*means, m), "sd_lo": min(sds),
            "sd_hi": max(sds), "sd_model": float(np.sqrt(((k - m) ** 2 * law.pmf).sum()))}


def _planning_goodput_check() -> Figures:
    """notes/planning.md's goodput check: `sdsim validate` at 10 and 25 req/s, 2 seeds x 1,000
    requests (one stage of the sequential runs: --initial 1000 --max-requests 2000)."""
    import pandas as pd

    out = ROOT / "out" / "test-docs-validate"
    cli("validate", "scenarios/default.yaml", "--set", "slo.e2e_p99=3.5", "--set",
        "slo.ttft_p99=0.1", "--initial", "1000", "--max-requests", "2000", "--rates", "10,25",
        "--reps", "2", "--out", str(out))
    v = pd.read_csv(out / "validation.csv").set_index(["rate", "metric", "statistic"])
    got = {}
    for r in (10, 25):
        got[f"model_{r}"] = v.loc[(r, "goodput", "rps"), "analytic"]
        got[f"sim_{r}"] = v.loc[(r, "goodput", "rps"), "sim"]
    got["load"] = 100 * 25 / pred("default").saturation_rate
    got["att_model"] = v.loc[(25, "slo", "attainment_e2e_p99"), "analytic"]
    got["att_sim"] = v.loc[(25, "slo", "attainment_e2e_p99"), "sim"]
    return got


def _prices() -> Figures:
    from sdsim.planning.prices import DEFAULT_PRICES

    return {g.replace("-", "_"): p for g, p in DEFAULT_PRICES.items()}


DOCS = [
    Quote(
        "README.md",
        r"--draft-acceptance-rate 0.44 --k 4 # -> alpha (?P<alpha>[\d.]+), not 0.44",
        lambda: _acceptance_fit_alpha(),
    ),
    Quote(
        "README.md",
        r"mt-bench\} # vLLM, MT-Bench: alpha ~(?P<preset_alpha>[\d.]+) per position",
        lambda: _acceptance_fit_alpha(),
    ),
    Quote(
        "README.md",
        r"model max rate (?P<model>[\d.]+) req/s within the SLOs \(saturation (?P<sat>[\d.]+) "
        r"req/s\)",
        _model_max_rate,
    ),
    Quote(
        "docs/explore.md",
        r"both have mean (?P<mean_lo>[\d.]+)-(?P<mean_hi>[\d.]+), but the simulated standard "
        r"deviation is (?P<sd_lo>[\d.]+)-(?P<sd_hi>[\d.]+) against the model's "
        r"(?P<sd_model>[\d.]+)",
        _explore_batch_law,
    ),
    Quote(
        "notes/planning.md",
        r"goodput model (?P<model_10>[\d.]+) / simulated (?P<sim_10>[\d.]+) req/s at 10 req/s, "
        r"(?P<model_25>[\d.]+) / (?P<sim_25>[\d.]+) at 25 req/s \((?P<load>\d+)% of "
        r"saturation; e2e p99 attainment (?P<att_model>[\d.]+) model vs (?P<att_sim>[\d.]+) "
        r"simulated\)",
        _planning_goodput_check,
    ),
    Quote(
        "notes/planning.md",
        r"a100-80gb (?P<a100_80gb>[\d.]+), h100-sxm (?P<h100_sxm>[\d.]+), h200 (?P<h200>[\d.]+), "
        r"b200 (?P<b200>[\d.]+), l40s (?P<l40s>[\d.]+), mi300x (?P<mi300x>[\d.]+) USD/GPU-hour",
        _prices,
    ),
]


@pytest.mark.parametrize("quote", DOCS, ids=lambda q: f"{q.file}:{q.pattern[:30]}")
def test_docs_quote_what_the_code_gives(quote: Quote) -> None:
    assert check(quote) == []


def test_readme_from_vllm_output() -> None:
    # the README's quoted lines are the command's own table rows and notes, as printed
    run_readme_example(".venv/bin/sdsim from-vllm")


# --------------------------------------------------------------------------- make docfigures

LONG = pytest.mark.skipif(
    not os.environ.get("SDSIM_DOCFIGURES"),
    reason="minutes of simulation: run `make docfigures` (SDSIM_DOCFIGURES=1)",
)


def readme_example(command_start: str) -> tuple[list[str], list[str]]:
    """A README command (continuation lines joined, split as a shell would) and the output lines
    the README quotes for it: the ``# `` lines after it in its block, else the next block."""
    text = (ROOT / "README.md").read_text()
    at = text.index(command_start)
    block = text[at:].split("```", 1)[0]
    lines = block.replace("\\\n", " ").splitlines()
    args = shlex.split(lines[0])
    quoted = [ln[2:] for ln in lines[1:] if ln.startswith("# ")]
    if not quoted:
        quoted = text[at:].split("```", 3)[2].strip("\n").splitlines()
    return args, quoted


def run_readme_example(command_start: str) -> tuple[str, Any]:
    """Run a README ``.venv/bin/sdsim ...`` command as written (its relative --out under a fresh
    directory, so the paths it prints read as in the README) and check the quoted output lines
    are among the lines it printed; return its stdout and the working directory."""
    import tempfile

    args, quoted = readme_example(command_start)
    assert args[0] == ".venv/bin/sdsim", args
    args = [str(ROOT / a) if a.startswith("scenarios/") else a for a in args[1:]]
    cwd = Path(tempfile.mkdtemp(prefix="sdsim-docs-"))
    stdout = cli(*args, cwd=cwd)
    printed = {re.sub(r"\s+", " ", ln).strip() for ln in stdout.splitlines()}
    missing = [q for q in quoted if re.sub(r"\s+", " ", q).strip() not in printed]
    assert not missing, f"README quotes lines sdsim no longer prints: {missing}\n{stdout}"
    return stdout, cwd


PLAN = ".venv/bin/sdsim plan scenarios/capacity-70b-chat.yaml --rate 12"
MAX_RATE = ".venv/bin/sdsim plan scenarios/capacity-70b-chat.yaml --max-rate"


@cache
def plan_70b() -> Figures:
    """The README's capacity plan, run as written: the figures its prose and notes/planning.md
    quote."""
    import pandas as pd

    stdout, cwd = run_readme_example(PLAN)
    out = cwd / "out" / "plan-70b"
    doc = json.loads((out / "plan.json").read_text())
    cand = pd.read_csv(out / "candidates.csv")
    screen = pd.read_csv(out / "screen.csv")
    best = cand.iloc[0]
    a100 = cand[cand["gpu"] == "a100-80gb"].sort_values("cost_per_mtok").iloc[0]
    plain = screen[(screen["spec.k"] == 0) & screen["evaluated"].astype(bool)]
    got: Figures = {k: doc["screen"][k] for k in ("invalid", "saturated", "misses", "meets")}
    got |= {
        "evals": doc["screen"]["model_evaluations"],
        "cost": best["cost_per_mtok"],
        "ttft": best["sim_ttft_p99"], "ttft_lo": best["sim_ttft_p99_ci_low"],
        "ttft_hi": best["sim_ttft_p99_ci_high"], "ttft_fewer": best["sim_one_fewer_ttft_p99"],
        "e2e": best["sim_e2e_p99"], "e2e_lo": best["sim_e2e_p99_ci_low"],
        "e2e_hi": best["sim_e2e_p99_ci_high"], "e2e_fewer": best["sim_one_fewer_e2e_p99"],
        "ttft_model": best["model_ttft_p99"], "e2e_model": best["model_e2e_p99"],
        "a100_gpus": a100["gpus"], "a100_cost": a100["cost_per_mtok"],
        "k0_e2e": plain["e2e_p99"].min(),
        "simulated": float(re.findall(r"(\d+) configurations simulated", stdout)[0]),
    }
    for k in ("ttft", "ttft_fewer", "e2e"):
        got[f"{k}2"] = got[k]
    return got


@cache
def max_rate_70b() -> Figures:
    run_readme_example(MAX_RATE)
    return {}


DOCFIGURES = [
    Quote(
        "README.md",
        r"\$(?P<cost>[\d.]+) per million output tokens\*\* \(each SLO cell.*?p99 TTFT is "
        r"(?P<ttft>[\d.]+) s \(95% CI (?P<ttft_lo>[\d.]+)-(?P<ttft_hi>[\d.]+)\) and p99 e2e "
        r"(?P<e2e>[\d.]+) s; with one replica fewer p99 TTFT is (?P<ttft_fewer>[\d.]+) s and p99 "
        r"e2e (?P<e2e_fewer>[\d.]+) s, which miss\. The model's TTFT tail "
        r"\((?P<ttft_model>[\d.]+) s\).*?gives (?P<k0_e2e>[\d.]+) s: the longest.*?A100s need "
        r"(?P<a100_gpus>\d+) GPUs \(TP 8 x 6, \$(?P<a100_cost>[\d.]+)\)",
        plan_70b,
    ),
    Quote(
        "notes/planning.md",
        r"1,344 configurations: (?P<invalid>\d+) invalid .*? (?P<saturated>\d+) saturated, "
        r"(?P<misses>\d+) miss, (?P<meets>\d+) meet in the model; (?P<evals>\d+) model "
        r"evaluations.*?(?P<simulated>\d+) configurations simulated x 3 runs.*?\$(?P<cost>[\d.]+) "
        r"per million output tokens\*\*\. Simulated at the choice: p99 e2e (?P<e2e>[\d.]+) s \(95% "
        r"CI (?P<e2e_lo>[\d.]+)-(?P<e2e_hi>[\d.]+)\), p99 TTFT (?P<ttft>[\d.]+) s "
        r"\((?P<ttft_lo>[\d.]+)-(?P<ttft_hi>[\d.]+), so confidently within 0.5 s\); one replica "
        r"fewer \(8 GPUs\): p99 TTFT (?P<ttft_fewer>[\d.]+) s and p99 e2e (?P<e2e_fewer>[\d.]+) s"
        r".*?\((?P<ttft_model>[\d.]+) s model vs (?P<ttft2>[\d.]+) s simulated at 3 x TP 4; "
        r"(?P<ttft_fewer2>[\d.]+) s simulated at 2 x TP 4\), while its e2e p99 is a little heavy "
        r"\((?P<e2e_model>[\d.]+) s model vs (?P<e2e2>[\d.]+) s simulated\).*?A100s need "
        r"(?P<a100_gpus>\d+) GPUs \(TP 8 x 6, \$(?P<a100_cost>[\d.]+), model\).*?gives p99 e2e "
        r"(?P<k0_e2e>[\d.]+) s",
        plan_70b,
    ),
]


@LONG
@pytest.mark.docfigures
@pytest.mark.parametrize("quote", DOCFIGURES, ids=lambda q: q.file)
def test_capacity_plan_figures(quote: Quote) -> None:
    assert check(quote) == []


@LONG
@pytest.mark.docfigures
def test_capacity_plan_headroom() -> None:
    max_rate_70b()  # the README's quoted lines are among the printed ones

if __name__ == "__main__":  # python -m tests.test_docs --fix: rewrite stale figures in place
    if sys.argv[1:] not in (["--fix"], ["--fix", "--long"]):
        sys.exit("usage: python -m tests.test_docs --fix [--long]  (--long: the minutes-long runs)")
    quotes = [*SCENARIOS, kv_pressure_table(), *DOCS]
    for line in fix(quotes + (DOCFIGURES if "--long" in sys.argv else [])):
        print("fixed", line)
