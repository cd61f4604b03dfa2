"""Speed benchmark: the default scenario with 20,000 requests (not part of `make test`).

Prints wall seconds, simulated requests per wall second and engine steps per wall second, for
the default scenario as is (unlimited KV cache: block accounting runs, nothing binds), with KV
paging sized as on an H100 (the capacity :func:`derive_num_gpu_blocks` gives for an 8B verifier
and a one-layer drafter: ~27,800 blocks), and with the 3000-block cache of kv-pressure.yaml at
25 req/s (KV close to full, preemptions start). Target: >= 5,000 simulated requests per wall
second in every line on one core of a 2020s laptop/server. On a shared machine, read the
requests per CPU-second: wall time there measures the other users too.
Run: `make bench` (or `.venv/bin/python benchmarks/run.py`).
"""

from __future__ import annotations

import time
from pathlib import Path

import sdsim
from sdsim.engine.kvcache import derive_num_gpu_blocks, kv_bytes_per_token

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30


def bench(label: str, overrides: dict[str, object]) -> None:
    scn = sdsim.load_scenario(
        ROOT / "scenarios/default.yaml", {"workload.num_requests": 20_000, **overrides}
    )
    t0 = time.perf_counter()
    c0 = time.process_time()
    res = sdsim.simulate(scn)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    n = res.summary["completed"]
    steps = res.summary["steps"]
    print(
        f"{label}, 20000 requests: wall {wall:.2f} s, {n / wall:,.0f} req/s, "
        f"{steps / wall:,.0f} steps/s (CPU {cpu:.2f} s, {n / cpu:,.0f} req/CPU-s), "
        f"mean batch {res.summary['batch_mean']:.1f}, preemptions {res.summary['preemptions']}"
    )


def main() -> None:
    per_tok = kv_bytes_per_token(32, 8, 128, 2) + kv_bytes_per_token(1, 8, 128, 2)
    h100_blocks = derive_num_gpu_blocks(80 * GIB, 0.9, 15 * GIB, 1 * GIB, per_tok, 16)
    bench("default", {})
    bench(f"default, KV paging ({h100_blocks} blocks)", {"server.num_gpu_blocks": h100_blocks})
    bench(
        "default, 3000 KV blocks at 28 req/s",
        {"server.num_gpu_blocks": 3000, "workload.rate": 28.0},
    )


if __name__ == "__main__":
    main()
