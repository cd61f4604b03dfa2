"""The one exception type users see for bad input.

Every user mistake (a scenario field out of range, an unknown name, a malformed file) is raised as
:class:`ScenarioError`, whose message is one line naming the offending field and what is allowed.
The CLI turns it into exit code 2; library callers can catch it (it is a ``ValueError``).

The contract (``tests/test_bad_input.py`` checks it case by case):

* ``str(exc)`` is ``"<field>: <what is wrong and what is allowed>"`` on one line; ``exc.field`` is
  the dotted scenario field (``workload.rate``, ``server.num_gpu_blocks``, ``costs.profile``), the
  file at fault, or the command-line option (``--out``, ``--plot``, ``--set``, ``--rates``).
* ``sdsim run``, ``predict``, ``costs``, ``validate`` and ``sweep`` print exactly
  ``error: <str(exc)>`` on stderr and exit with code 2, never a traceback.
* The library raises the same exception with the same message from the call that meets the input:
  :func:`sdsim.load_scenario` / :func:`sdsim.scenario.scenario_from_dict` (fields, unknown names,
  unknown GPU or model, prompt + output beyond the target's context, a KV cache that cannot hold
  one request, unreadable or invalid YAML), :func:`sdsim.simulate` (seed, trace files, the drawn
  workload's longest request against the KV cache), :func:`sdsim.costs.build.build_cost_model`
  (missing profile bundle, CSV without the needed columns, sizes that are not numbers, a table
  whose curves mostly fall by an order of magnitude as work grows),
  :func:`sdsim.sweep.load_sweep` / :func:`sdsim.sweep.plan_sweep` (sweep keys, swept fields that
  do not exist, each point's scenario and cost model) and
  :func:`sdsim.analytic.validation.validate` (rates, replications).
"""

from __future__ import annotations

__all__ = ["ScenarioError", "format_validation_error"]

import re
import reprlib
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin


class ScenarioError(ValueError):
    """Bad user input: a scenario field, a file, or a command-line option.

    Parameters
    ----------
    field
        Dotted name of the offending field (``"workload.rate"``) or the file/option at fault.
    message
        What is wrong and what is allowed, on one line.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = " ".join(str(message).split())
        super().__init__(f"{field}: {self.message}" if field else self.message)

    def __reduce__(self) -> tuple[type[ScenarioError], tuple[str, str]]:
        # Rebuilt from (field, message), not from the formatted text, so the error survives the
        # trip back from a worker process (validate --jobs N, process-pool sweeps) intact.
        return (type(self), (self.field, self.message))


# An offending input is shown in the message only as a short, bounded repr: the input may be a
# structure of shared aliases that stands for billions of values.
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel = 2
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = _SHOWN.maxset = 4
_SHOWN.maxstring = _SHOWN.maxother = 40
_SHOWN.maxlong = 24


def _unwrap(tp: Any) -> Any:
    """``X`` from ``Annotated[X, ...]`` and from ``X | None``."""
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    if get_origin(tp) in (Union, UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        if len(members) == 1:
            return _unwrap(members[0])
    return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and hasattr(tp, "model_fields")


def _union_member(members: tuple[Any, ...], tag: str) -> Any:
    """The member of a union that pydantic's location tag ``tag`` names (``None`` if unknown)."""
    for m in members:
        m = _unwrap(m)
        if _is_model(m):
            if tag == m.__name__:
                return m
            for f in m.model_fields.values():
                if get_origin(f.annotation) is Literal and tag in get_args(f.annotation):
                    return m
        elif get_origin(m) is list and tag.startswith("list["):
            return m
    return None


def _loc_to_field(loc: tuple[Any, ...], model: Any = None) -> str:
    """The dotted field a pydantic error location names, without pydantic's own location parts
    (union member tags such as ``constrained-float`` or ``BetaAlpha``, discriminator values).

    ``model`` is the validated model class: the location is walked through its fields, so that a
    field name is told apart from a union tag. Without it, parts that look like tags are dropped.
    """
    parts: list[str] = []
    tp: Any = model
    for item in loc:
        tp = _unwrap(tp) if tp is not None else None
        if isinstance(item, int):
            parts.append(f"[{item}]")
            args = get_args(tp) if tp is not None else ()
            tp = args[0] if get_origin(tp) is list and args else None
            continue
        text = str(item)
        if tp is not None and _is_model(tp):
            # a field of the model, or an unknown (extra) name: both are named
            parts.append(text)
            field = tp.model_fields.get(text)
            tp = field.annotation if field is not None else None
            continue
        if tp is not None and get_origin(tp) is dict:
            parts.append(text)
            args = get_args(tp)
            tp = args[1] if len(args) == 2 else None
            continue
        if tp is not None and get_origin(tp) in (Union, UnionType):
            tp = _union_member(get_args(tp), text)
            continue
        if tp is None and not _looks_like_tag(text):
            parts.append(text)
        tp = None
    out = ""
    for p in parts:
        out += p if p.startswith("[") or not out else "." + p
    return out


def _looks_like_tag(text: str) -> bool:
    return (
        any(c in text for c in "[-'")
        or text in {"int", "float", "str", "bool", "list", "dict", "none"}
        or text[:1].isupper()
    )


def format_validation_error(exc: Any, prefix: str = "", model: Any = None) -> ScenarioError:
    """Turn a pydantic ``ValidationError`` into a one-line :class:`ScenarioError`.

    Parameters
    ----------
    exc
        The ``pydantic.ValidationError``.
    prefix
        Dotted prefix for the field (for nested models validated on their own).
    model
        The model class that was validated: its fields tell field names from pydantic's union
        tags in the error location.

    Returns
    -------
    ScenarioError
        Naming the offending field: of several errors, the one deepest in the data (for a value
        no member of a union accepts, the member it came closest to). A validator that raises
        :class:`ScenarioError` names its field relative to the model it validates. The count of
        further errors is appended.
    """
    errors = exc.errors(include_url=False)
    first = max(errors, key=lambda e: len(e.get("loc", ())))  # the first of the deepest
    field = _loc_to_field(tuple(first.get("loc", ())), model)
    cause = (first.get("ctx") or {}).get("error")
    msg = str(first.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    if isinstance(cause, ScenarioError):
        field = ".".join(p for p in (field, cause.field) if p)
        msg = cause.message
    elif first.get("type") == "value_error":
        # a validator's ValueError whose message starts with a field name ("acceptance.alpha:
        # ...") names the field better than the model it was raised in
        named = re.match(r"([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*): (.+)", msg)
        if named:
            sub, msg = named.groups()
            field = sub if not field or sub.startswith(f"{field}.") else f"{field}.{sub}"
    if prefix:
        field = f"{prefix}.{field}" if field else prefix
    if first.get("type") == "extra_forbidden":
        msg = "unknown field (check the spelling; `sdsim schema` lists the allowed fields)"
    elif "input" in first and first.get("type") not in {"missing"} and cause is None:
        shown = _SHOWN.repr(first["input"])
        if len(shown) <= 60:
            msg += f" (got {shown})"
    if len(errors) > 1:
        msg += f" [and {len(errors) - 1} more error(s)]"
    return ScenarioError(field or "scenario", msg)
