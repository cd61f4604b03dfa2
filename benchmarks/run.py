"""Speed benchmark suite (`make bench`; not part of `make test`).

Eight fixed cases, each run in its own process pinned to one CPU core (except (g), which uses
`sdsim validate`'s own worker pool), printed as one table and written to benchmarks/RESULTS.md
with the machine's core count and load:

(a) the default speculative scenario (scenarios/default.yaml), 20,000 requests;
(b) its plain-decoding twin (scenarios/plain.yaml), 20,000 requests;
(c) the default at 10% load (10% of the predicted saturation rate): idle gaps, small batches;
(d) near saturation with KV pressure (scenarios/kv-pressure.yaml at 31 req/s): preemptions;
(e) 1,000,000 requests of the default, summary-only (streaming statistics);
(f) `sdsim.predict_grid` over a 1,000-point grid of rate x k x alpha, means only (the tail model
    off: `quantiles=False`); (f-q) the same grid with the tail quantiles;
(g) `sdsim validate scenarios/default.yaml` with its defaults;
(h) `sdsim plan`'s analytic screen of a 10,080-configuration search (replicas 1..40 x k 0..6 x tp
    1,2,4,8 x three GPUs x max_num_seqs 64,128,256) of the default scenario at 200 req/s against
    p99 e2e <= 2.5 s and p99 TTFT <= 0.15 s, no simulation (`confirm=0`);
(x) `sdsim explore`'s server side: what the page gets after a control change that redraws the
    model curves (k or alpha moved: 13 rates with quantiles, the point, step times, batch law),
    per change, the mean of 8; (x-rate) the same after a rate change (the curves are cached).

Plus two linearity checks: (a) against the same at 2,000 requests, and (e) against 100,000
requests (10x the workload should take <= 11x the time).

Columns: wall seconds; CPU seconds (time.process_time of the process; with (g)'s workers added);
simulated requests and engine steps per wall second and per CPU second; peak resident memory.
On a machine shared with other jobs wall time measures the others too: read the CPU columns.

Run: `make bench`, or `.venv/bin/python benchmarks/run.py [CASE ...] [--quick] [--no-write]`
(`--help` lists the cases; an unknown case or flag exits with status 2 and runs nothing)
(`--quick` times (f) on 200 of its 1,000 points, two of its ten k values, (f-q) on 20, and
extrapolates).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"

CASES: dict[str, str] = {
    "a": "default (k=4, alpha=0.7, 22 req/s), 20,000 requests",
    "b": "plain twin (k=0), 20,000 requests",
    "c": "default at 10% load, 20,000 requests",
    "d": "KV pressure near saturation (3000 blocks, 31 req/s), 20,000 requests",
    "e": "default, 1,000,000 requests, summary-only",
    "f": "predict_grid, 1,000 points of rate x k x alpha, means only",
    "f-q": "predict_grid, 1,000 points of rate x k x alpha, with quantiles",
    "g": "sdsim validate scenarios/default.yaml (defaults)",
    "h": "plan: analytic screen of 10,080 configurations (replicas x k x tp x GPU x max_num_seqs)",
    "a-2k": "linearity: (a) at 2,000 requests",
    "a-off": "(a) with prefix caching off (caching on must stay within 20% of it)",
    "m": "multi-turn chat sessions with prefix caching (scenarios/multi-turn-chat.yaml), "
    "20,000 requests",
    "e-100k": "linearity: (e) at 100,000 requests",
    "x": "explore: one view after a k or alpha change (curves recomputed), mean of 8",
    "x-rate": "explore: one view after a rate change (curves cached), mean of 8",
}
TARGETS = {
    "a": ("req/wall-s", 20_000),
    "c": ("req/wall-s", 10_000),
    "e": ("wall-s", 60),
    "f": ("wall-s", 1),
    "f-q": ("wall-s", 1),
    "g": ("wall-s", 120),
    "h": ("wall-s", 10),
    # the page's ~200 ms from a control change to the redrawn panels, less ~50 ms of drawing
    "x": ("wall-s", 0.15),
    "x-rate": ("wall-s", 0.15),
}


def _sim(path: str, over: dict[str, object], keep: bool = True) -> dict[str, float]:
    import sdsim

    scn = sdsim.load_scenario(ROOT / path, over)
    t0, c0 = time.perf_counter(), time.process_time()
    res = sdsim.simulate(scn, keep_records=keep)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    s = res.summary
    return {
        "wall": wall,
        "cpu": cpu,
        "requests": float(s["completed"]),
        "steps": float(s["steps"]),
        "batch": float(s["batch_mean"]),
        "preemptions": float(s["preemptions"]),
    }


def _saturation() -> float:
    import sdsim

    scn = sdsim.load_scenario(ROOT / "scenarios/default.yaml")
    pred = sdsim.predict(scn, rates=[], k_values=[scn.spec.k], quantiles=False)
    return float(pred.saturation_rate)


def _predict_grid(quick: bool, quantiles: bool) -> dict[str, float]:
    import numpy as np

    import sdsim
    import sdsim.analytic.prediction  # the one-off scipy import is not timed

    scn = sdsim.load_scenario(ROOT / "scenarios/default.yaml")
    rates = [float(r) for r in np.linspace(5.0, 45.0, 10)]
    ks = list(range(1, 11))
    alphas = [float(a) for a in np.linspace(0.5, 0.95, 10)]
    full = len(rates) * len(ks) * len(alphas)
    # --quick: a subset keeping whole rate axes (the cost grows with the (k, alpha) pairs, a
    # step curve each, plus a per-point part), scaled; it also scales the one-off costs (the
    # first call loads the compiled kernels, ~0.1-0.2 s), so the full grid is the figure to quote
    if quick:
        ks = ks[:2]
        if quantiles:
            alphas = alphas[:1]
    t0, c0 = time.perf_counter(), time.process_time()
    df = sdsim.predict_grid(scn, rates, ks, alphas, quantiles=quantiles)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    scale = full / len(df)
    return {"wall": wall * scale, "cpu": cpu * scale, "points": float(len(df))}


def _validate() -> dict[str, float]:
    from sdsim.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            main(["validate", str(ROOT / "scenarios/default.yaml"), "--out", tmp])
        except SystemExit as exc:  # typer exits
            if exc.code not in (0, None):
                raise
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall": wall, "cpu": cpu + kids.ru_utime + kids.ru_stime}


def _plan_screen() -> dict[str, float]:
    import sdsim
    from sdsim.planning import parse_search_options, plan

    scn = sdsim.load_scenario(ROOT / "scenarios/default.yaml", {"costs.source": "roofline"})
    sdsim.predict(scn)  # the one-off imports and compiled-kernel load are not timed
    space = parse_search_options(
        ["server.replicas=1..40", "spec.k=0..6", "server.tp=1,2,4,8",
         "hardware=h100-sxm,h200,a100-80gb", "server.max_num_seqs=64,128,256"]
    )
    t0, c0 = time.perf_counter(), time.process_time()
    res = plan(scn, 200.0, space, {"e2e_p99": 2.5, "ttft_p99": 0.15}, confirm=0)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "wall": wall,
        "cpu": cpu,
        "configurations": float(len(res.screen)),
        "evaluations": float(res.evaluations),
    }


def _explore(rates: bool) -> dict[str, float]:
    import sdsim
    from sdsim.explore.panels import ViewCache, model_view

    scn = sdsim.load_scenario(ROOT / "scenarios/default.yaml")
    cache = ViewCache()
    model_view(scn, cache)  # the page's first view: loads the compiled kernels, not timed
    if rates:
        changes = [{"workload.rate": 25.0 - 0.5 * i} for i in range(1, 9)]
    else:
        changes = [{"spec.k": k} for k in (5, 6, 3, 2)]
        changes += [{"acceptance.alpha": a} for a in (0.69, 0.68, 0.71, 0.72)]
    scns = [scn.with_overrides(c) for c in changes]
    t0, c0 = time.perf_counter(), time.process_time()
    for s in scns:
        model_view(s, cache)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"wall": wall / len(scns), "cpu": cpu / len(scns)}


def run_case(name: str, quick: bool) -> dict[str, float]:
    """Run one case in this process and return its measurements."""
    if name != "g":
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    if name == "a":
        out = _sim("scenarios/default.yaml", {"workload.num_requests": 20_000})
    elif name == "a-off":
        over_off: dict[str, object] = {
            "workload.num_requests": 20_000,
            "server.prefix_caching": False,
        }
        out = _sim("scenarios/default.yaml", over_off)
    elif name == "m":
        out = _sim("scenarios/multi-turn-chat.yaml", {"workload.num_requests": 20_000})
    elif name == "a-2k":
        out = _sim("scenarios/default.yaml", {"workload.num_requests": 2_000})
    elif name == "b":
        out = _sim("scenarios/plain.yaml", {"workload.num_requests": 20_000})
    elif name == "c":
        rate = 0.1 * _saturation()
        over: dict[str, object] = {"workload.num_requests": 20_000, "workload.rate": rate}
        out = _sim("scenarios/default.yaml", over)
        out["rate"] = rate
    elif name == "d":
        out = _sim(
            "scenarios/kv-pressure.yaml", {"workload.num_requests": 20_000, "workload.rate": 31.0}
        )
    elif name == "e":
        out = _sim("scenarios/default.yaml", {"workload.num_requests": 1_000_000}, keep=False)
    elif name == "e-100k":
        out = _sim("scenarios/default.yaml", {"workload.num_requests": 100_000}, keep=False)
    elif name == "f":
        out = _predict_grid(quick, quantiles=False)
    elif name == "f-q":
        out = _predict_grid(quick, quantiles=True)
    elif name == "g":
        out = _validate()
    elif name == "h":
        out = _plan_screen()
    elif name in ("x", "x-rate"):
        out = _explore(rates=name == "x-rate")
    else:
        raise SystemExit(f"unknown case {name!r}; known: {', '.join(CASES)}")
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _fmt(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def table(results: dict[str, dict[str, float]]) -> str:
    head = (
        "| case | what | wall s | CPU s | req / wall s | req / CPU s | steps / wall s "
        "| steps / CPU s | peak MB | target |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for name, r in results.items():
        req = r.get("requests")
        st = r.get("steps")
        wall, cpu = r["wall"], r["cpu"]
        tgt = TARGETS.get(name)
        verdict = "-"
        if tgt is not None:
            kind, val = tgt
            got = (req or 0) / wall if kind == "req/wall-s" else wall
            ok = got >= val if kind == "req/wall-s" else got < val
            cmp = ">=" if kind != "wall-s" else "<"
            verdict = f"{'met' if ok else 'MISSED'} ({kind} {cmp} {val:,})"
        what = CASES[name]
        if name.startswith("f") and r.get("points", 1000) < 1000:
            what += f" (timed on {int(r['points'])} points, scaled to 1,000)"
        if "rate" in r:
            what += f" (rate {r['rate']:.2f} req/s)"
        if "evaluations" in r:
            what += f" ({int(r['evaluations']):,} model predictions)"
        rows.append(
            f"| {name} | {what} | {_fmt(wall, 2)} | {_fmt(cpu, 2)} "
            f"| {_fmt(req / wall if req else None)} | {_fmt(req / cpu if req else None)} "
            f"| {_fmt(st / wall if st else None)} | {_fmt(st / cpu if st else None)} "
            f"| {_fmt(r['peak_mb'])} | {verdict} |"
        )
    return head + "\n".join(rows) + "\n"


def _parser() -> argparse.ArgumentParser:
    cases = ", ".join(f"{k} ({v})" for k, v in CASES.items())
    p = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description="Run the speed benchmark cases (each in its own process, pinned to one core), "
        "print the table and, unless --no-write, record it in benchmarks/RESULTS.md.",
        epilog=f"cases: {cases}",
    )
    p.add_argument("cases", nargs="*", metavar="CASE", help="cases to run (default: all)")
    p.add_argument(
        "--quick", action="store_true", help="time (f) on a subset of its points and scale"
    )
    p.add_argument(
        "--no-write", action="store_true", help="print the table only; leave RESULTS.md alone"
    )
    p.add_argument("--child", metavar="CASE", help=argparse.SUPPRESS)
    return p


def main(argv: list[str]) -> None:
    parser = _parser()
    args = parser.parse_args(argv)  # exits 2 on an unknown flag
    unknown = [c for c in args.cases + ([args.child] if args.child else []) if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    if args.child:
        print(json.dumps(run_case(args.child, args.quick)))
        return
    quick = args.quick
    write = not args.no_write
    names = args.cases or list(CASES)
    results: dict[str, dict[str, float]] = {}
    load0 = os.getloadavg()
    for name in names:
        cmd = [sys.executable, __file__, "--child", name] + (["--quick"] if quick else [])
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if p.returncode != 0:
            print(f"case {name} failed:\n{p.stderr[-2000:]}", file=sys.stderr)
            continue
        results[name] = json.loads(p.stdout.strip().splitlines()[-1])
        r = results[name]
        print(f"{name}: wall {r['wall']:.2f} s, CPU {r['cpu']:.2f} s, peak {r['peak_mb']:.0f} MB")
    load1 = os.getloadavg()
    text = table(results)
    lin = []
    for big, small in (("a", "a-2k"), ("e", "e-100k")):
        if big in results and small in results:
            ratio = results[big]["cpu"] / results[small]["cpu"]
            lin.append(f"- CPU time {big} / {small} (10x the requests): {ratio:.2f} (<= 11 wanted)")
    print()
    print(text)
    print("\n".join(lin))
    if write:
        cpu = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        import numpy as np

        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        body = (
            f"# Benchmark results\n\nRecorded {stamp} by `make bench` (benchmarks/run.py) on "
            f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, numpy "
            f"{np.__version__}; load average {load0[0]:.1f} before, {load1[0]:.1f} after "
            "(the machine is shared: wall time includes other users' work, CPU time does not). "
            "Each case runs in its own process pinned to one core, except (g) (validate's own "
            "two worker processes; its CPU time adds theirs).\n\n" + text + "\n" + "\n".join(lin)
            + "\n"
        )
        # keep the hand-written analysis below the marker (what bounds each missed target)
        marker = "<!-- notes: kept by benchmarks/run.py -->"
        notes = ""
        if RESULTS.exists() and marker in RESULTS.read_text():
            notes = RESULTS.read_text().split(marker, 1)[1]
        RESULTS.write_text(body + "\n" + marker + notes)
        print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main(sys.argv[1:])
