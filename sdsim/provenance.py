"""Which sdsim and which seed wrote an output file.

Every file sdsim writes says so: JSON outputs carry ``sdsim_version`` and ``seed`` keys, YAML
files a first comment line, PNG figures their ``Software`` and ``Description`` metadata, parquet
files key-value metadata, and CSV files (whose readers expect a plain header) a sidecar
``<name>.csv.meta.json`` next to them (:func:`sidecar`), which also names the columns' units.
"""

from __future__ import annotations

__all__ = [
    "png_metadata",
    "provenance",
    "sidecar",
    "sidecar_path",
    "yaml_header",
]

import json
from pathlib import Path
from typing import Any

from sdsim._version import __version__


def provenance(seed: int | None, **extra: Any) -> dict[str, Any]:
    """``{"sdsim_version": ..., "seed": ..., **extra}`` (``seed`` None when nothing random ran)."""
    return {"sdsim_version": __version__, "seed": None if seed is None else int(seed), **extra}


def sidecar_path(path: str | Path) -> Path:
    """Where :func:`sidecar` writes the record of ``path``: ``<path>.meta.json``."""
    p = Path(path)
    return p.with_name(p.name + ".meta.json")


def sidecar(path: str | Path, seed: int | None, **extra: Any) -> Path:
    """Write ``<path>.meta.json``: the sdsim version, the seed and ``extra`` (e.g. ``units``).

    Returns
    -------
    Path
        The sidecar written.
    """
    dest = sidecar_path(path)
    dest.write_text(json.dumps(provenance(seed, file=Path(path).name, **extra), indent=1) + "\n")
    return dest


def yaml_header(seed: int | None, what: str = "") -> str:
    """A first comment line for a YAML output: ``# sdsim 0.1.0, seed 1: <what>``."""
    head = f"sdsim {__version__}" + (f", seed {int(seed)}" if seed is not None else "")
    return f"# {head}" + (f": {what}" if what else "") + "\n"


def png_metadata(seed: int | None, title: str = "") -> dict[str, str]:
    """PNG text chunks for ``Figure.savefig(..., metadata=...)``."""
    desc = f"seed {int(seed)}" if seed is not None else "no random draws"
    return {
        "Software": f"sdsim {__version__}",
        "Description": f"{title}; {desc}" if title else desc,
    }
