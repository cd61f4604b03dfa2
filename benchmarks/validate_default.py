"""Speed benchmark: `sdsim validate scenarios/default.yaml` with its default settings.

Target: under two minutes on a 2-core machine (a user waits for it; `make bench` case g).
Not part of `make test`.
Run: `.venv/bin/python benchmarks/validate_default.py`.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from sdsim.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        main(["validate", str(ROOT / "scenarios/default.yaml"), "--out", tmp])
        print(f"validate default: wall {time.perf_counter() - t0:.1f} s (target < 120 s)")


if __name__ == "__main__":
    run()
