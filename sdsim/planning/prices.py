"""GPU-hour prices and what a configuration costs per million output tokens.

The defaults are on-demand rental prices per GPU-hour in US dollars, mid-range of published
surveys (they vary by a factor of 2-3 between providers and fall over time: pass your own with
``--price NAME=USD`` or a YAML/JSON file ``{name: usd_per_gpu_hour}``):

* a100-80gb 1.30, h100-sxm 3.00, h200 4.00: midpoints of the "specialty cloud" on-demand tier of
  the Mercatus GPU price survey, May 2026 (mercatus-ai.com/blog/cloud-gpu-pricing: A100 80GB
  $1.10-1.50, H100 SXM5 $2.50-3.50, H200 $3.50-4.50);
* b200 5.25: midpoint of on-demand B200 on specialised clouds, $4.50-6.00 (Lyceum, "NVIDIA B200
  GPU Cloud Pricing 2026");
* l40s 1.29: Civo on-demand L40S, August 2025 (Modal's L40S price survey; RunPod $0.86 to
  CoreWeave $2.25);
* mi300x 1.99: median MI300X on-demand price across neoclouds, May 2026 (Cliff Center research
  note "AMD inference economics").
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_PRICES",
    "cost_per_million_tokens",
    "gpu_name",
    "load_prices",
    "parse_price_options",
]

import json
import math
from pathlib import Path
from typing import Any

import yaml

from sdsim.errors import ScenarioError
from sdsim.scenario import Scenario

DEFAULT_PRICES: dict[str, float] = {
    "a100-80gb": 1.30,
    "h100-sxm": 3.00,
    "h200": 4.00,
    "b200": 5.25,
    "l40s": 1.29,
    "mi300x": 1.99,
}


def gpu_name(scn: Scenario) -> str:
    """The price-table name of a scenario's GPU (registry name, or an inline sheet's ``name``)."""
    hw = scn.hardware
    return hw.strip().lower().replace("_", "-") if isinstance(hw, str) else hw.name


def _price(name: str, raw: Any, where: str) -> float:
    try:
        v = float(raw)
    except (TypeError, ValueError):
        raise ScenarioError(where, f"{name}: price must be a number of USD per GPU-hour") from None
    if not math.isfinite(v) or v < 0:
        raise ScenarioError(where, f"{name}: price must be >= 0 USD per GPU-hour, got {raw!r}")
    return v


def load_prices(path: str | Path | None) -> dict[str, float]:
    """The price table: the defaults, replaced where the file (YAML or JSON mapping of GPU name
    to USD per GPU-hour) says otherwise.

    Raises
    ------
    ScenarioError
        Missing or unreadable file, not a mapping, or a price that is not a number >= 0.
    """
    out = dict(DEFAULT_PRICES)
    if path is None:
        return out
    p = Path(path)
    if not p.is_file():
        raise ScenarioError("--prices", f"price file not found: {path}")
    try:
        text = p.read_text()
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise ScenarioError("--prices", f"cannot read {path}: {exc.__class__.__name__}") from None
    if not isinstance(data, dict):
        raise ScenarioError("--prices", f"{path} must map GPU names to USD per GPU-hour")
    for name, raw in data.items():
        out[str(name).strip().lower()] = _price(str(name), raw, "--prices")
    return out


def parse_price_options(items: list[str] | None, table: dict[str, float]) -> dict[str, float]:
    """``table`` with ``--price NAME=USD`` items applied.

    Raises
    ------
    ScenarioError
        An item without ``=`` or a price that is not a number >= 0.
    """
    out = dict(table)
    for item in items or []:
        if "=" not in item:
            raise ScenarioError(
                "--price", f"expected GPU=USD_PER_HOUR (e.g. h100-sxm=2.5), got {item!r}"
            )
        name, raw = (s.strip() for s in item.split("=", 1))
        out[name.lower()] = _price(name, raw, "--price")
    return out


def cost_per_million_tokens(gpus: float, usd_per_gpu_hour: float, output_tps: float) -> float:
    """USD per million output tokens: the GPUs' hourly price over the tokens they emit per hour.

    ``inf`` when nothing is emitted.
    """
    if not output_tps > 0:
        return math.inf
    return gpus * usd_per_gpu_hour / (output_tps * 3600.0) * 1e6
