"""The configurations a capacity plan searches: ``--search FIELD=VALUES`` parsed into a space.

``FIELD`` is any dotted scenario field; ``VALUES`` is a comma-separated list whose items are YAML
scalars (``h100-sxm``, ``4``, ``0.7``) or inclusive ranges ``A..B`` (integers) and ``A..B:STEP``
(integers or decimals)::

    server.replicas=1..16   spec.k=0..6   server.tp=1,2,4,8   hardware=h100-sxm,h200
    acceptance.alpha=0.6..0.8:0.1

The space is the cartesian product of the fields' values. ``server.replicas`` is the load axis:
a configuration's replicas share one step curve (each replica sees ``rate / replicas``), so the
space is held as *groups*, one per combination of the other fields, each with the sorted replica
counts it tries.
"""

from __future__ import annotations

__all__ = [
    "REPLICAS",
    "Group",
    "SearchSpace",
    "parse_search_options",
    "parse_values",
]

import hashlib
import itertools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import yaml
from pydantic import ValidationError

from sdsim.errors import ScenarioError, format_validation_error
from sdsim.hardware import get_gpu
from sdsim.models import resolve_model
from sdsim.scenario import Scenario, apply_overrides

REPLICAS = "server.replicas"

# A search larger than this is almost certainly a typo in a range (1..100000).
MAX_CONFIGS = 10_000_000
MAX_RANGE = 100_000


def _split_items(text: str) -> list[str]:
    """Split on commas that are not inside brackets or braces (``[0.8, 0.6]`` stays whole)."""
    items: list[str] = []
    depth = 0
    cur = ""
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    items.append(cur)
    return [i.strip() for i in items]


def _number(text: str) -> Decimal:
    try:
        d = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(text) from None
    if not d.is_finite():
        raise ValueError(text)
    return d


def _range(item: str, field: str) -> list[Any]:
    body, _, step_text = item.partition(":")
    lo_text, _, hi_text = body.partition("..")
    try:
        lo, hi = _number(lo_text), _number(hi_text)
        step = _number(step_text) if step_text else Decimal(1)
    except ValueError:
        raise ScenarioError(
            "--search", f"{field}: range {item!r} must be A..B or A..B:STEP with numbers"
        ) from None
    if step <= 0:
        raise ScenarioError("--search", f"{field}: range {item!r} needs a positive step")
    if hi < lo:
        raise ScenarioError("--search", f"{field}: range {item!r} ends below its start")
    count = int((hi - lo) / step) + 1
    if count > MAX_RANGE:
        raise ScenarioError(
            "--search", f"{field}: range {item!r} has {count} values (at most {MAX_RANGE})"
        )
    integral = all(v == v.to_integral_value() for v in (lo, step))
    vals = [lo + i * step for i in range(count)]
    return [int(v) if integral else float(v) for v in vals]


def parse_values(field: str, text: str) -> list[Any]:
    """The values of one ``--search`` field (ranges expanded, duplicates dropped, order kept).

    Raises
    ------
    ScenarioError
        An empty item, a malformed range, or no values at all.
    """
    out: list[Any] = []
    seen: set[str] = set()
    for item in _split_items(text):
        if not item:
            raise ScenarioError(
                "--search", f"{field}: empty value in {text!r} (values are comma-separated)"
            )
        if ".." in item and not item.startswith(("[", "{")):
            vals = _range(item, field)
        else:
            try:
                vals = [yaml.safe_load(item)]
            except yaml.YAMLError:
                vals = [item]
        for v in vals:
            key = json.dumps(v, sort_keys=True, default=str)
            if key not in seen:
                seen.add(key)
                out.append(v)
    return out


def parse_search_options(items: list[str] | None) -> dict[str, list[Any]]:
    """Parse ``--search FIELD=VALUES`` items into ``{field: values}`` (in the order given).

    Raises
    ------
    ScenarioError
        An item without ``=``, an empty field name, a field given twice, or bad values.
    """
    out: dict[str, list[Any]] = {}
    for item in items or []:
        if "=" not in item:
            raise ScenarioError(
                "--search", f"expected FIELD=VALUES (e.g. server.replicas=1..16), got {item!r}"
            )
        field, text = (s.strip() for s in item.split("=", 1))
        if not field or not all(field.split(".")):
            raise ScenarioError("--search", f"bad field name in {item!r} (a dotted scenario field)")
        if field in out:
            raise ScenarioError("--search", f"{field} is given twice; list its values once")
        if field == "seed":
            raise ScenarioError("--search", "seed is not a configuration; plan replicates runs")
        if field == "workload.rate":
            raise ScenarioError("--search", "workload.rate is the load: give it with --rate")
        out[field] = parse_values(field, text)
    return out


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class Group:
    """Configurations that differ only in their replica count.

    Attributes
    ----------
    index
        Position in the space's group order.
    overrides
        Dotted field -> value for every searched field except ``server.replicas``.
    replicas
        Replica counts tried, ascending.
    key
        A stable short hash of ``overrides`` (names result files).
    """

    index: int
    overrides: dict[str, Any]
    replicas: tuple[int, ...]
    key: str


@dataclass(frozen=True)
class SearchSpace:
    """A validated search: fields, their values, and the groups of the product.

    Build it with :meth:`from_options`.
    """

    fields: dict[str, list[Any]]
    replicas: tuple[int, ...]

    @classmethod
    def from_options(cls, base: Scenario, fields: dict[str, list[Any]]) -> SearchSpace:
        """Check every value of every field against ``base`` (one override at a time, so an
        unknown field or a value it does not allow is bad input naming the field) and build the
        space.

        Raises
        ------
        ScenarioError
            A field that does not exist, a value it does not allow, or a space larger than
            ``MAX_CONFIGS``.
        """
        for field, values in fields.items():
            for v in values:
                _check_value(base, field, v)
        reps_values = fields.get(REPLICAS, [base.server.replicas])
        bad = [r for r in reps_values if isinstance(r, bool) or not isinstance(r, int)]
        if bad:
            raise ScenarioError("--search", f"{REPLICAS}: values must be whole numbers, got {bad}")
        reps = tuple(sorted({int(r) for r in reps_values}))
        total = len(reps) * math.prod(len(v) for f, v in fields.items() if f != REPLICAS)
        if total > MAX_CONFIGS:
            raise ScenarioError(
                "--search", f"{total} configurations (at most {MAX_CONFIGS}); narrow a range"
            )
        return cls({f: list(v) for f, v in fields.items()}, reps)

    @property
    def group_fields(self) -> list[str]:
        """Searched fields other than ``server.replicas``."""
        return [f for f in self.fields if f != REPLICAS]

    @property
    def size(self) -> int:
        """Number of configurations."""
        return len(self.replicas) * self.num_groups

    @property
    def num_groups(self) -> int:
        """Number of groups."""
        return math.prod(len(self.fields[f]) for f in self.group_fields)

    def groups(self) -> Iterator[Group]:
        """Every group, in the product's order (first field outermost)."""
        names = self.group_fields
        for i, combo in enumerate(itertools.product(*(self.fields[f] for f in names))):
            ov = dict(zip(names, combo, strict=True))
            key = hashlib.sha256(_canonical(ov).encode()).hexdigest()[:16]
            yield Group(index=i, overrides=ov, replicas=self.replicas, key=key)


def _check_value(base: Scenario, field: str, value: Any) -> None:
    """Bad input: a field the scenario does not have, a value its type or range refuses, or a
    GPU or model name the registry does not know. What only a combination decides (weights
    that do not fit a GPU at some tp, a KV cache too small for a request) is left to the
    screen, which marks those configurations invalid."""
    try:
        Scenario.model_validate(apply_overrides(base.to_dict(), {field: value}))
        if field == "hardware" and isinstance(value, str):
            get_gpu(value, field)
        elif field in ("target", "drafter.model") and isinstance(value, str):
            resolve_model(value, field)
    except ValidationError as exc:
        raise ScenarioError(
            "--search", f"{field}={value!r}: {format_validation_error(exc)}"
        ) from None
    except ScenarioError as exc:
        raise ScenarioError("--search", f"{field}={value!r}: {exc}") from None
