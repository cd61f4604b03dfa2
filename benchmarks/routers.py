"""Routers compared on one scenario: prefix hit rate, TTFT and e2e (mean, p99), per seed.

Usage::

    ROUTERS=prefix-affinity,round-robin SEEDS=0,1,2 .venv/bin/python benchmarks/routers.py \\
        SCENARIO NUM_REQUESTS [field=value ...]

The first fifth of the requests is warm-up (excluded from the statistics); each ``field=value``
overrides the scenario (``server.replicas=4``).
"""

from __future__ import annotations

import os
import sys
import time

from sdsim import load_scenario, simulate


def main(argv: list[str]) -> None:
    path, n = argv[0], int(argv[1])
    extra = dict(a.split("=", 1) for a in argv[2:])
    routers = os.environ.get("ROUTERS", "prefix-affinity,round-robin,least-outstanding")
    seeds = [int(x) for x in os.environ.get("SEEDS", "0,1,2").split(",")]
    for seed in seeds:
        for router in routers.split(","):
            t0 = time.time()
            over = {"workload.num_requests": n, "warmup_requests": n // 5, "server.router": router}
            scn = load_scenario(path, {**over, **extra})
            s = simulate(scn, seed=seed, keep_records=False).summary
            print(
                f"{seed} {router:18s} hit {s['prefix_hit_rate']:.3f} "
                f"ttft {s['ttft_mean'] * 1e3:7.1f} p99 {s['ttft_p99'] * 1e3:7.1f} ms "
                f"e2e {s['e2e_mean']:.3f} p99 {s['e2e_p99']:.3f} s "
                f"preemptions {s.get('preemptions')} ({time.time() - t0:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main(sys.argv[1:])
