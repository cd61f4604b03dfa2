"""The one exception type users see for bad input.

Every user mistake (a scenario field out of range, an unknown name, a malformed file) is raised as
:class:`ScenarioError`, whose message is one line naming the offending field and what is allowed.
The CLI turns it into exit code 2; library callers can catch it (it is a ``ValueError``).
"""

from __future__ import annotations

__all__ = ["ScenarioError", "format_validation_error"]

from typing import Any


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


def _loc_to_field(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
            continue
        text = str(item)
        # pydantic puts union member tags and function names into the location; they mean
        # nothing to a user writing YAML, so keep only real field names.
        if (
            text.startswith(("function-", "tagged-union", "union["))
            or "[" in text
            or text
            in {
                "int",
                "float",
                "str",
                "list",
                "dict",
            }
        ):
            continue
        parts.append(text)
    out = ""
    for p in parts:
        out += p if p.startswith("[") or not out else "." + p
    return out


def format_validation_error(exc: Any, prefix: str = "") -> ScenarioError:
    """Turn a pydantic ``ValidationError`` into a one-line :class:`ScenarioError`.

    Parameters
    ----------
    exc
        The ``pydantic.ValidationError``.
    prefix
        Dotted prefix for the field (for nested models validated on their own).

    Returns
    -------
    ScenarioError
        Naming the first offending field; the count of further errors is appended.
    """
    errors = exc.errors(include_url=False)
    first = errors[0]
    field = _loc_to_field(tuple(first.get("loc", ())))
    if prefix:
        field = f"{prefix}.{field}" if field else prefix
    msg = str(first.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        msg = "unknown field (check the spelling; `sdsim schema` lists the allowed fields)"
    elif "input" in first and first.get("type") not in {"missing"}:
        shown = repr(first["input"])
        if len(shown) <= 60:
            msg += f" (got {shown})"
    if len(errors) > 1:
        msg += f" [and {len(errors) - 1} more error(s)]"
    return ScenarioError(field or "scenario", msg)
