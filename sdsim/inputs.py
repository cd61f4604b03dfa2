"""Reading user files with bounds: YAML and JSON that cannot hang or exhaust memory, and digests of
the files a scenario references.

A 457-byte YAML document of ten nested anchors, each aliased ten times, stands for 10**10 values;
PyYAML builds it as ~100 shared objects, and the first thing that walks it (a ``repr`` in an error
message, a deep copy, a JSON dump) never ends. :func:`load_yaml` and :func:`load_json` therefore
measure what a document *expands to* before anyone walks it: at most :data:`MAX_DEPTH` levels of
nesting and, counting every alias as the values it stands for, at most
``EXPANSION_FACTOR * len(text) + MAX_EXTRA_VALUES`` values. A document without aliases holds fewer
values than characters, so the bound only refuses documents whose aliases multiply their size.
Each refusal is a one-line :class:`~sdsim.errors.ScenarioError` naming the file's field.

:func:`file_digest` is the content hash of a referenced file or directory (a trace, a report, a
profile bundle, a ``config.json``): sweeps key their results by it, so editing a file a scenario
reads is never answered from results computed with the old contents.
"""

from __future__ import annotations

__all__ = [
    "EXPANSION_FACTOR",
    "MAX_DEPTH",
    "MAX_EXTRA_VALUES",
    "check_expansion",
    "file_digest",
    "load_json",
    "load_yaml",
]

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from sdsim.errors import ScenarioError

# Deeper than any real scenario, sweep, report or config.json (GuideLLM reports nest ~8 levels).
MAX_DEPTH = 64
# A document may expand through aliases to this many times its length in characters, plus a
# constant for small files that reuse an anchor a few times.
EXPANSION_FACTOR = 4
MAX_EXTRA_VALUES = 100_000

_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def check_expansion(data: Any, field: str, budget: int) -> None:
    """Refuse data nested deeper than :data:`MAX_DEPTH` or expanding to more than ``budget`` values.

    The walk is iterative (depth first) and stops as soon as a bound is crossed, so it costs at
    most ``budget`` steps however large the aliases make the document; the error names the key
    under which it was crossed (``acceptance.alpha``), or ``field`` at the top.

    Raises
    ------
    ScenarioError
        Too deep, or too many values.
    """
    count = 0
    # (node, depth, dotted key path, whether the path is frozen: keys inside lists are not named)
    stack: list[tuple[Any, int, str, bool]] = [(data, 0, "", False)]
    while stack:
        node, depth, where, frozen = stack.pop()
        count += 1
        if count > budget or depth > MAX_DEPTH:
            what = (
                f"nested deeper than {MAX_DEPTH} levels"
                if depth > MAX_DEPTH
                else f"expands to more than {budget:,} values (YAML aliases nested inside each "
                "other?); write the values out or use fewer aliases"
            )
            raise ScenarioError(where or field, f"{what} (in {field})" if where else what)
        if isinstance(node, dict):
            for k, v in node.items():
                key = where if frozen else (f"{where}.{k}" if where else str(k))[:200]
                stack.append((k, depth + 1, key, frozen))
                stack.append((v, depth + 1, key, frozen))
        elif isinstance(node, list | tuple):
            stack.extend((v, depth + 1, where, True) for v in node)


def _budget(text: str | bytes) -> int:
    return EXPANSION_FACTOR * len(text) + MAX_EXTRA_VALUES


def load_yaml(text: str, field: str) -> Any:
    """Parse YAML safely (no Python objects) and check what it expands to.

    Parameters
    ----------
    text
        The document.
    field
        What the error names (the file, or the scenario field the file came from).

    Raises
    ------
    ScenarioError
        Invalid YAML (with its line), nesting too deep, or aliases expanding too far.
    """
    try:
        data = yaml.load(text, Loader=_LOADER)  # a safe loader: plain data only
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ScenarioError(field, f"invalid YAML{where}") from None
    except (RecursionError, MemoryError):
        raise ScenarioError(field, f"nested deeper than {MAX_DEPTH} levels") from None
    check_expansion(data, field, _budget(text))
    return data


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number sdsim accepts")


def load_json(text: str, field: str, allow_nan: bool = False) -> Any:
    """Parse JSON and check its nesting.

    Parameters
    ----------
    text
        The document.
    field
        What the error names.
    allow_nan
        Accept the ``NaN`` / ``Infinity`` tokens Python's ``json`` writes (as float NaN and inf);
        ``False`` refuses them, as strict JSON does.

    Raises
    ------
    ScenarioError
        Invalid JSON (with its line), a refused constant, or nesting too deep.
    """
    try:
        if allow_nan:
            data = json.loads(text)
        else:
            data = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise ScenarioError(field, f"invalid JSON at line {exc.lineno}") from None
    except ValueError as exc:
        raise ScenarioError(field, f"invalid JSON: {exc}") from None
    except (RecursionError, MemoryError):
        raise ScenarioError(field, f"nested deeper than {MAX_DEPTH} levels") from None
    check_expansion(data, field, _budget(text))
    return data


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, or of a directory's files (relative names and bytes, sorted).

    A path that does not exist digests to ``"missing"`` (the scenario's own check reports it).

    Parameters
    ----------
    path
        A file or a directory (a profile bundle).

    Returns
    -------
    str
        Hex digest.
    """
    p = Path(path)
    h = hashlib.sha256()
    if p.is_file():
        _feed(h, p)
        return h.hexdigest()
    if p.is_dir():
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            h.update(str(f.relative_to(p)).encode() + b"\0")
            _feed(h, f)
        return h.hexdigest()
    return "missing"


# Digests of files already read, by (path, modification time, size): a sweep hashes the same
# trace once, not once per grid point.
_DIGESTS: dict[tuple[str, int, int], bytes] = {}


def _feed(h: Any, f: Path) -> None:
    try:
        st = f.stat()
        key = (str(f.resolve()), st.st_mtime_ns, st.st_size)
        if key not in _DIGESTS:
            fh_hash = hashlib.sha256()
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    fh_hash.update(chunk)
            if len(_DIGESTS) > 4096:
                _DIGESTS.clear()
            _DIGESTS[key] = fh_hash.digest()
        h.update(_DIGESTS[key])
    except OSError as exc:
        h.update(f"unreadable:{exc.__class__.__name__}".encode())
