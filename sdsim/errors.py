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

    def __reduce__(self) -> tuple[type[ScenarioError], tuple[str, str]]:
        # Rebuilt from (field, message), not from the formatted text, so the error survives the
        # trip back from a worker process (validate --jobs N, process-pool sweeps) intact.
        return (type(self), (self.field, self.message))


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
            text.startswith(("function-", "tagged-union", "union[", "constrained-"))
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
    # a validator's message that starts with a field name ("acceptance.alpha: ...") names the
    # field better than the model it was raised in
    named = re.match(r"([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*): (.+)", msg)
    if named and first.get("type") == "value_error":
        sub, msg = named.groups()
        field = sub if not field or sub.startswith(f"{field}.") else f"{field}.{sub}"
    if first.get("type") == "extra_forbidden":
        msg = "unknown field (check the spelling; `sdsim schema` lists the allowed fields)"
    elif "input" in first and first.get("type") not in {"missing"}:
        shown = repr(first["input"])
        if len(shown) <= 60:
            msg += f" (got {shown})"
    if len(errors) > 1:
        msg += f" [and {len(errors) - 1} more error(s)]"
    return ScenarioError(field or "scenario", msg)
