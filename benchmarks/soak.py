"""Soak test of `sdsim serve` on loopback (`make soak`; not part of `make test`).

Starts `sdsim serve` on a scenario (default scenarios/default.yaml) and drives it for a bounded
time with Poisson arrivals at a fraction of the analytic model's predicted saturation rate
(default 80%), streaming completions of the scenario's prompt and output lengths; a share of the
clients (default 20%) hangs up mid-stream, after a uniformly drawn part of its output. It samples
the server's resident memory and the latencies clients see, per interval, and checks:

* **flat memory**: the server's RSS grows by less than ``SOAK_RSS_BOUND_MB`` (default 16 MB)
  over the second half of the run (the first half takes the warm-up: imports, compiled
  kernels, the request table's first doublings);
* **steady latency**: the mean TTFT and the mean time per output token of the second half
  (requests sent at 50-90% of the run) differ from the first half's (10-50%) by no more than
  the offline simulator's own halves do at the same load over the same simulated time: the
  largest change over 40 seeds (a healthy run exceeds it about once in 41; ``SOAK_TTFT_TOL``,
  ``SOAK_TPOT_TOL`` set fixed fractions instead); and the HTTP overhead on TTFT (what the
  client measures minus what the server's simulated clock recorded) grows by less than
  ``SOAK_HTTP_BOUND_MS`` (25 ms of wall time) from the first half to the second: a server
  slowing down (a growing per-step cost, a blocked event loop) shows there;
* **let go**: every client that hung up is marked aborted by the server (unless the engine had
  finished its request before the hang-up: the client was still reading buffered chunks), and
  once the last client is served the engine holds no request, seat or KV block.

Latencies are in simulated seconds (wall / time scale): the twin runs ``SOAK_TIME_SCALE`` times
slower than real time (default 5) so that the client and the server, sharing the machine, stay a
small part of each latency. Settings (environment variables): ``SOAK_SECONDS`` (300),
``SOAK_LOAD`` (0.8), ``SOAK_DISCONNECT`` (0.2), ``SOAK_TIME_SCALE`` (5), ``SOAK_INTERVAL`` (30 s),
``SOAK_SEED`` (0), ``SOAK_SCENARIO``, ``SOAK_RSS_BOUND_MB``.
Exit status 1 when a check fails. The figures of a full run are in notes/testing.md.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from sdsim import load_scenario
from sdsim.analytic import predict
from sdsim.rng import stream

ROOT = Path(__file__).resolve().parent.parent


def env(name: str, default: float) -> float:
    v = float(os.environ.get(name, default))
    if not math.isfinite(v) or v < 0:
        sys.exit(f"error: {name}: must be a non-negative number (got {v})")
    return v


class Server:
    """`sdsim serve` in a subprocess on a free loopback port."""

    def __init__(self, scenario: str, time_scale: float, history: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sdsim.cli", "serve", scenario, "--port", "0",
             "--time-scale", str(time_scale), "--history", str(history)],
            cwd=ROOT, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        self.port: int | None = None
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 120
        while self.port is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"error: sdsim serve did not start: {self.lines}")
            time.sleep(0.05)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            m = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
            if m:
                self.port = int(m.group(1))

    def rss_mb(self) -> float:
        """Resident memory of the server process (VmRSS), MB."""
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) / 1024  # type: ignore[union-attr]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


async def one(
    client: httpx.AsyncClient, at: float, t0: float, prompt: int, output: int, leave_after: int,
    rows: list[dict[str, Any]],
) -> None:
    """One streaming request sent at ``t0 + at``; it hangs up after ``leave_after`` tokens (0:
    never)."""
    await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
    body = {"prompt": [11] * prompt, "max_tokens": output, "stream": True,
            "stream_options": {"include_usage": True}}
    sent = time.monotonic()
    first = last = math.nan
    tokens = 0
    rid = -1
    left = False
    gone = math.nan
    try:
        async with client.stream("POST", "/v1/completions", json=body) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                msg = json.loads(line[6:])
                if not msg["choices"]:
                    continue
                rid = int(msg["id"].rsplit("-", 1)[1])
                n = len(msg["choices"][0]["text"].split())
                if n:
                    now = time.monotonic()
                    first = now if tokens == 0 else first
                    last = now
                    tokens += n
                if leave_after and leave_after <= tokens < output:
                    left = True
                    gone = time.monotonic()
                    break  # leaving the block closes the connection mid-stream
        status = "left" if left else ("done" if tokens == output else "short")
    except httpx.HTTPError as exc:
        status = f"error: {type(exc).__name__}"
    rows.append(dict(rid=rid, sent=sent - t0, first=first - t0, last=last - t0, tokens=tokens,
                     output=output, status=status, gone=gone))


async def drive(
    base: str, ats: np.ndarray, leave: np.ndarray, prompt: int, output: int,
    server: Server, interval: float, rss: list[tuple[float, float]],
) -> tuple[list[dict[str, Any]], float, dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=base, timeout=600.0, limits=limits) as client:
        t0 = time.monotonic()

        async def sample() -> None:
            while True:
                rss.append((time.monotonic() - t0, server.rss_mb()))
                await asyncio.sleep(min(5.0, interval / 3))

        sampler = asyncio.create_task(sample())
        await asyncio.gather(
            *(one(client, float(a), t0, prompt, output, int(k), rows)
              for a, k in zip(ats, leave, strict=True))
        )
        rss.append((time.monotonic() - t0, server.rss_mb()))
        sampler.cancel()
        await asyncio.sleep(1.0)  # aborts reach a step boundary
        sim = (await client.get("/sdsim/requests")).json()
    return rows, t0, sim


def halves(
    sent: np.ndarray, values: np.ndarray, seconds: float
) -> tuple[np.ndarray, np.ndarray]:
    """Values of requests sent in the first half and in the second half of the run, leaving out
    the first 10% (warm-up: an empty server filling) and the last 10% (cool-down: the last
    requests finish as arrivals stop)."""
    a = values[(sent >= 0.1 * seconds) & (sent < 0.5 * seconds)]
    b = values[(sent >= 0.5 * seconds) & (sent < 0.9 * seconds)]
    return a, b


def simulated_spread(scn: Any, rate: float, sim_seconds: float, seeds: int = 40) -> dict[str, Any]:
    """What the offline simulator gives at the same load over the same simulated time: mean
    TTFT and time per token (ms), and over ``seeds`` runs the largest relative change between
    the halves (as :func:`halves` cuts them): how much two halves of a healthy run of this
    length differ by chance (a healthy run exceeds the largest of 40 about once in 41)."""
    from sdsim import simulate

    n = max(int(rate * sim_seconds), 50)
    over = {"workload.rate": rate, "workload.num_requests": n, "warmup_requests": 0}
    base = scn.with_overrides(over)
    change: dict[str, list[float]] = {"ttft": [], "tpot": []}
    means: dict[str, list[float]] = {"ttft": [], "tpot": []}
    for s in range(seeds):
        req = simulate(base, seed=s).requests
        sent = req["arrival"].to_numpy()
        for key in change:
            x = req[key].to_numpy() * 1e3
            a, b = halves(sent, x, sim_seconds)
            change[key].append(abs(b.mean() / a.mean() - 1))
            means[key].append(float(x.mean()))
    return {
        "requests": n,
        **{f"{k}_mean": float(np.mean(v)) for k, v in means.items()},
        **{f"{k}_change_max": float(np.max(v)) for k, v in change.items()},
    }


def main() -> int:
    seconds = env("SOAK_SECONDS", 300)
    load = env("SOAK_LOAD", 0.8)
    share = env("SOAK_DISCONNECT", 0.2)
    scale = env("SOAK_TIME_SCALE", 5.0)
    interval = env("SOAK_INTERVAL", 30.0)
    seed = int(env("SOAK_SEED", 0))
    rss_bound = env("SOAK_RSS_BOUND_MB", 16.0)
    ttft_tol = env("SOAK_TTFT_TOL", 0)
    tpot_tol = env("SOAK_TPOT_TOL", 0)
    http_bound = env("SOAK_HTTP_BOUND_MS", 25.0)
    scenario = os.environ.get("SOAK_SCENARIO", str(ROOT / "scenarios/default.yaml"))
    scn = load_scenario(scenario)
    sat = predict(scn, rates=[], k_values=[scn.spec.k], quantiles=False).saturation_rate
    rate = load * sat  # simulated requests per second
    prompt = int(scn.workload.prompt_tokens.mean)
    output = int(scn.workload.output_tokens.mean)
    # arrivals over the run (wall seconds), and which clients hang up after how many tokens
    gaps = stream(seed, "arrivals").exponential(scale / rate, size=int(3 * rate * seconds / scale))
    ats = np.cumsum(gaps)
    ats = ats[ats < seconds]
    pick = stream(seed, "bench")  # which clients hang up, and when
    leave = np.where(pick.random(ats.shape[0]) < share,
                     pick.integers(1, output, size=ats.shape[0]), 0)
    print(
        f"soak: {scenario}, predicted saturation {sat:.2f} req/s, load {load:.0%} = "
        f"{rate:.2f} req/s simulated ({rate / scale:.2f}/s wall at time scale {scale:g}); "
        f"{ats.shape[0]} requests of {prompt} + {output} tokens over {seconds:g} s, "
        f"{int((leave > 0).sum())} hang up mid-stream; seed {seed}",
        flush=True,
    )
    # the report reads every request's record (by request id): the window holds them all
    server = Server(scenario, scale, history=max(int(ats.shape[0]), 1))
    rss: list[tuple[float, float]] = []
    try:
        base = f"http://127.0.0.1:{server.port}"
        t_start = time.monotonic()
        rows, _, sim = asyncio.run(drive(base, ats, leave, prompt, output, server, interval, rss))
        took = time.monotonic() - t_start
    finally:
        code = server.stop()
    ref = simulated_spread(scn, rate, seconds / scale)
    return report(rows, sim, rss, seconds, interval, scale, rss_bound, ttft_tol, tpot_tol,
                  http_bound, took, code, server.lines, ref)


def report(
    rows: list[dict[str, Any]], sim: dict[str, Any], rss: list[tuple[float, float]],
    seconds: float, interval: float, scale: float, rss_bound: float, ttft_tol: float,
    tpot_tol: float, http_bound: float, took: float, code: int, server_lines: list[str],
    ref: dict[str, Any],
) -> int:
    done = [r for r in rows if r["status"] == "done"]
    left = [r for r in rows if r["status"] == "left"]
    bad = [r for r in rows if r["status"] not in ("done", "left")]
    ms = 1e3 / scale  # wall seconds -> simulated ms
    arrival, first_token = sim["arrival"], sim["first_token"]
    for r in done:
        r["ttft"] = (r["first"] - r["sent"]) * ms
        r["tpot"] = (r["last"] - r["first"]) / max(r["output"] - 1, 1) * ms
        # client TTFT minus the server's simulated TTFT: what HTTP and the machine add (wall ms)
        r["http"] = (r["first"] - r["sent"]) * 1e3 - (
            first_token[r["rid"]] - arrival[r["rid"]]) * scale * 1e3
    print(f"\n{'interval (s)':>14} {'RSS MB':>8} {'done':>5} {'left':>5} {'TTFT ms mean':>13} "
          f"{'p99':>7} {'TPOT ms':>8} {'HTTP wall ms':>13}")
    edges = np.arange(0.0, seconds + interval, interval)
    for lo, hi in itertools.pairwise(edges):
        sel = [r for r in done if lo <= r["sent"] < hi]
        gone = sum(1 for r in left if lo <= r["sent"] < hi)
        mem = [m for t, m in rss if lo <= t < hi]
        if not sel:
            continue
        ttft = np.array([r["ttft"] for r in sel])
        tpot = np.array([r["tpot"] for r in sel])
        http = np.array([r["http"] for r in sel])
        print(f"{lo:6.0f}-{hi:<7.0f} {mem[-1] if mem else math.nan:8.1f} {len(sel):5d} "
              f"{gone:5d} {ttft.mean():13.1f} {np.percentile(ttft, 99):7.1f} "
              f"{tpot.mean():8.2f} {http.mean():13.1f}")
    half = seconds / 2
    sent = np.array([r["sent"] for r in done])
    rss_mid = float(np.interp(half, [t for t, _ in rss], [m for _, m in rss]))
    rss_start, rss_end = rss[0][1], rss[-1][1]
    aborted = int(sum(sim["aborted"]))
    checks: list[tuple[str, bool]] = []
    growth = rss_end - rss_mid
    checks.append((f"RSS {rss_start:.1f} MB at start, {rss_mid:.1f} at half time, {rss_end:.1f} "
                   f"at the end: second-half growth {growth:+.1f} MB < {rss_bound:g} MB",
                   growth < rss_bound))
    for key, tol, what in (("ttft", ttft_tol, "TTFT"), ("tpot", tpot_tol, "time per token")):
        a, b = halves(sent, np.array([r[key] for r in done]), seconds)
        ma = float(a.mean()) if a.size else math.nan
        mb = float(b.mean()) if b.size else math.nan
        spread, mean = ref[key + "_change_max"], ref[key + "_mean"]
        tol = tol if tol > 0 else spread
        checks.append((f"mean {what} {ma:.2f} ms ({a.size} requests sent at 10-50% of the run) "
                       f"vs {mb:.2f} ms ({b.size}, 50-90%): {mb / ma - 1:+.1%}, within {tol:.1%} "
                       f"(the simulator's halves differ by up to {spread:.1%} over 40 seeds; "
                       f"its mean {mean:.2f} ms)", abs(mb / ma - 1) <= tol))
    a, b = halves(sent, np.array([r["http"] for r in done]), seconds)
    checks.append((f"HTTP overhead on TTFT (client minus simulated, wall) {a.mean():.1f} ms in the "
                   f"first half, {b.mean():.1f} ms in the second: growth below {http_bound:g} ms",
                   b.mean() - a.mean() < http_bound))
    # Each hung-up request leaves the engine (aborted, or finished: the client may hang up while
    # reading chunks already sent, or the last tokens may come before the server sees the
    # closed socket) at a step boundary on the server's clock; the lag from the hang-up is what
    # an abandoned request costs. Bound: 1 s of wall time (a step is ~15 simulated ms).
    t0_server = sim["t0_monotonic"]
    lag = np.array([t0_server + sim["finish"][r["rid"]] * scale - r["gone"] for r in left
                    if r["rid"] >= 0 and sim["finish"][r["rid"]] is not None])
    kept = [r for r in left if r["rid"] < 0 or sim["finish"][r["rid"]] is None]
    finished = sum(1 for r in left if r["rid"] >= 0 and not sim["aborted"][r["rid"]])
    lag_bound = 1.0
    checks.append((f"{len(left)} clients hung up mid-stream: {aborted} requests aborted by the "
                   f"server, {finished} finished first; out of the engine {lag.mean() * 1e3:.0f} "
                   f"ms after the hang-up on average (p99 {np.percentile(lag, 99) * 1e3:.0f} ms, "
                   f"max {lag.max() * 1e3:.0f} ms < {lag_bound * 1e3:.0f} ms wall)",
                   not kept and lag.max() < lag_bound))
    checks.append((f"after the last client: running {len(sim['running'])}, waiting "
                   f"{len(sim['waiting'])}, KV blocks used {sim['kv_blocks_used']}",
                   not sim["running"] and not sim["waiting"] and sim["kv_blocks_used"] == 0))
    checks.append((f"{len(bad)} requests failed or came back short", not bad))
    checks.append((f"server stopped on SIGTERM with status {code}", code == 0))
    out = ROOT / "out" / "soak"
    out.mkdir(parents=True, exist_ok=True)
    (out / "requests.json").write_text(json.dumps({"clients": rows, "server": sim, "rss": rss}))
    print(f"\n{len(rows)} requests in {took:.0f} s: {len(done)} served, {len(left)} hung up "
          f"(per-request data: {out / 'requests.json'})")
    ok = True
    for text, passed in checks:
        ok &= passed
        print(f"{'ok  ' if passed else 'FAIL'} {text}")
    if bad:
        print("failures:", bad[:5], server_lines[-5:])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
