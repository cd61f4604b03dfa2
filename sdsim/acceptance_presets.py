"""Measured acceptance for common target/drafter/dataset pairs: ``acceptance: {preset: NAME}``.

The library is ``sdsim/data/acceptance/presets.yaml`` (sources and derivations in the README next
to it). Each preset keeps the published measurement (``measured``) and the per-position alpha
derived from it (``alpha``), which is what a scenario naming the preset uses.
"""

from __future__ import annotations

__all__ = ["AcceptancePreset", "acceptance_presets", "get_preset", "preset_names"]

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

PRESETS_FILE = Path(__file__).resolve().parent / "data" / "acceptance" / "presets.yaml"


@dataclass(frozen=True)
class AcceptancePreset:
    """One measured acceptance profile.

    Attributes
    ----------
    name
        ``target/drafter/dataset``.
    alpha
        Per-position acceptance probabilities ``alpha_1..alpha_K`` (the model parameter); a
        scenario using the preset may draft up to ``K`` tokens.
    measured
        What the source published: ``k`` with ``acceptance_length`` and ``position_rates``, or
        ``lengths`` ``{k: acceptance length}``; optionally ``check_lengths``.
    target, drafter, dataset, engine, source
        Where the numbers come from.
    """

    name: str
    alpha: tuple[float, ...]
    measured: dict[str, Any]
    target: str
    drafter: str
    dataset: str
    engine: str
    source: str

    @property
    def max_k(self) -> int:
        """The largest draft length the measurement covers."""
        return len(self.alpha)

    def measured_lengths(self) -> dict[int, float]:
        """Acceptance lengths the source gives, ``{k: length}`` (``check_lengths`` excluded)."""
        m = self.measured
        if "lengths" in m:
            return {int(k): float(v) for k, v in m["lengths"].items()}
        return {int(m["k"]): float(m["acceptance_length"])}


@cache
def acceptance_presets() -> dict[str, AcceptancePreset]:
    """Every preset of the library, by name (read once)."""
    raw = yaml.safe_load(PRESETS_FILE.read_text())
    out: dict[str, AcceptancePreset] = {}
    for name, d in raw.items():
        out[name] = AcceptancePreset(
            name=name,
            alpha=tuple(float(a) for a in d["alpha"]),
            measured=dict(d["measured"]),
            target=str(d["target"]),
            drafter=str(d["drafter"]),
            dataset=str(d["dataset"]),
            engine=str(d["engine"]),
            source=str(d["source"]),
        )
    return out


def preset_names() -> list[str]:
    """Names of the presets, sorted."""
    return sorted(acceptance_presets())


def get_preset(name: str) -> AcceptancePreset:
    """The preset called ``name``.

    Raises
    ------
    KeyError
        Unknown name; the message lists the known ones.
    """
    presets = acceptance_presets()
    if name not in presets:
        raise KeyError(f"unknown acceptance preset {name!r}; known: {', '.join(preset_names())}")
    return presets[name]
