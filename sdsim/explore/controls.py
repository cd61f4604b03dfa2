"""The explorer's controls: what each one shows of a scenario and how its value changes one.

The page holds a *base* scenario (the one ``sdsim explore`` was started with, or a file loaded
into the page) and the current value of every control. A request carries both; the server builds
the scenario as the base with one override per group of controls whose values differ from what
the base shows. A control the user has not touched therefore never rewrites the base: a uniform
length law, a beta acceptance law, an inline GPU sheet or a KV block count in a loaded file stay as
they are until the control that shows them is moved. Nothing a user asked for is lost.

The choices offered come from where the project defines them: GPUs from
:data:`sdsim.hardware.GPUS`, models from :data:`sdsim.models.MODELS`, drafter kinds and cost
sources from the scenario schema, so a new registry entry appears in the page unchanged.
"""

from __future__ import annotations

__all__ = [
    "CONTROL_FIELDS",
    "choices",
    "control_for_error",
    "controls_of",
    "error_field",
    "scenario_with_controls",
]

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_args

from sdsim.errors import ScenarioError
from sdsim.hardware import gpu_names
from sdsim.models import model_names, resolve_model
from sdsim.scenario import (
    MAX_K,
    BetaAlpha,
    CostsSpec,
    DrafterSpec,
    FixedLength,
    LognormalLength,
    Scenario,
    UniformLength,
    apply_overrides,
    scenario_from_dict,
)

# Control name -> the scenario field it sets (a 400's ``field`` is mapped back to a control by the
# longest dotted prefix; ``alpha`` stands for every acceptance control, see control_for_error).
CONTROL_FIELDS: dict[str, str] = {
    "rate": "workload.rate",
    "k": "spec.k",
    "adaptive": "spec.policy",
    "alpha_mode": "acceptance.alpha",
    "alpha": "acceptance.alpha",
    "alpha_list": "acceptance.alpha",
    "alpha_concentration": "acceptance.alpha.concentration",
    "prompt_mean": "workload.prompt_tokens",
    "prompt_cv": "workload.prompt_tokens.cv",
    "output_mean": "workload.output_tokens",
    "output_cv": "workload.output_tokens.cv",
    "gpu": "hardware",
    "target": "target",
    "drafter": "drafter.kind",
    "drafter_model": "drafter.model",
    "tp": "server.tp",
    "max_num_seqs": "server.max_num_seqs",
    "cost_source": "costs.source",
    "profile": "costs.profile",
    "requests": "workload.num_requests",
}

# A length law built from a mean and a spread (CV > 0) is lognormal, clipped at this many times
# its mean (and at half the target's context): P(X > 16 mean) is 1e-4 at CV 1 and 2e-3 at CV 2,
# so the clip barely moves the mean, while the longest request (which must fit the model's
# context and the KV cache) stays bounded.
LENGTH_CLIP_MEANS = 16
ALPHA_MODES = ("constant", "per-position", "beta")


def choices() -> dict[str, Any]:
    """What the page's lists offer, read from the registries and the scenario schema."""
    return {
        "gpu": gpu_names(),
        "target": model_names(),
        "drafter_model": model_names(),
        "drafter": list(get_args(DrafterSpec.model_fields["kind"].annotation)),
        "cost_source": list(get_args(CostsSpec.model_fields["source"].annotation)),
        "alpha_mode": list(ALPHA_MODES),
        "max_k": MAX_K,
    }


# --------------------------------------------------------------------------- scenario -> controls


def _length_controls(law: Any) -> tuple[float, float]:
    """(mean, CV) of a length law, as the two length controls show it."""
    if isinstance(law, FixedLength):
        return float(law.value), 0.0
    if isinstance(law, LognormalLength):
        return float(law.mean), float(law.cv)
    if isinstance(law, UniformLength):
        n = law.high - law.low + 1
        sd = math.sqrt((n * n - 1) / 12.0)
        return law.mean, round(sd / law.mean, 4)
    values = [float(v) for v in getattr(law, "values", [])]
    if values:  # empirical
        m = sum(values) / len(values)
        sd = math.sqrt(sum((v - m) ** 2 for v in values) / len(values))
        return round(m, 4), round(sd / m, 4)
    m = float(law.mean)  # geometric on 1, 2, ...: variance m (m - 1)
    return m, round(math.sqrt(max(m * (m - 1.0), 0.0)) / m, 4)


def controls_of(scn: Scenario) -> dict[str, Any]:
    """The value every control shows for a scenario."""
    a = scn.acceptance.alpha
    mode = (
        "beta"
        if isinstance(a, BetaAlpha)
        else "per-position"
        if isinstance(a, list)
        else "constant"
    )
    pm, pcv = _length_controls(scn.workload.prompt_tokens)
    om, ocv = _length_controls(scn.workload.output_tokens)
    hw = scn.hardware
    return {
        "rate": scn.workload.rate,
        "k": scn.spec.k,
        "adaptive": scn.spec.policy == "adaptive",
        "alpha_mode": mode,
        "alpha": scn.acceptance.mean_alpha,
        "alpha_list": ", ".join(f"{x:g}" for x in a) if isinstance(a, list) else "",
        "alpha_concentration": a.concentration if isinstance(a, BetaAlpha) else 10.0,
        "prompt_mean": pm,
        "prompt_cv": pcv,
        "output_mean": om,
        "output_cv": ocv,
        "gpu": hw if isinstance(hw, str) else hw.name,
        "target": scn.target,
        "drafter": scn.drafter.kind,
        "drafter_model": scn.drafter.model or "",
        "tp": scn.server.tp,
        "max_num_seqs": scn.server.max_num_seqs,
        "cost_source": scn.costs.source,
        "profile": scn.costs.profile or "",
        "requests": scn.workload.num_requests,
    }


# --------------------------------------------------------------------------- parsing


def _field(name: str) -> str:
    return CONTROL_FIELDS[name]


def _number(name: str, raw: Any) -> float:
    """A finite number typed into control ``name`` (a string from the page, or a JSON number)."""
    if isinstance(raw, bool) or raw is None:
        raise ScenarioError(_field(name), f"must be a number (got {raw!r})")
    if isinstance(raw, int | float):
        v = float(raw)
    else:
        text = str(raw).strip()
        try:
            v = float(text)
        except ValueError:
            shown = text if len(text) <= 40 else text[:37] + "..."
            raise ScenarioError(_field(name), f"must be a number (got {shown!r})") from None
    if not math.isfinite(v):
        raise ScenarioError(_field(name), f"must be a finite number (got {raw!r})")
    return v


def _integer(name: str, raw: Any) -> int:
    v = _number(name, raw)
    if v != int(v):
        raise ScenarioError(_field(name), f"must be a whole number (got {v:g})")
    return int(v)


def _text(name: str, raw: Any) -> str:
    if raw is None:
        return ""
    if not isinstance(raw, str | int | float) or isinstance(raw, bool):
        raise ScenarioError(_field(name), f"must be text (got {type(raw).__name__})")
    return str(raw).strip()


def _flag(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("true", "1", "on", "yes"):
        return True
    if text in ("false", "0", "off", "no", ""):
        return False
    raise ScenarioError(_field(name), f"must be true or false (got {raw!r})")


def _probabilities(name: str, raw: Any) -> list[float]:
    """A per-position acceptance list typed as ``0.9, 0.8 0.7`` (or sent as a JSON list)."""
    items = raw if isinstance(raw, list) else [t for t in re.split(r"[,\s;]+", str(raw)) if t]
    if not items:
        raise ScenarioError(
            _field(name), "per-position list is empty; type probabilities like 0.9, 0.8, 0.7"
        )
    return [_number(name, x) for x in items]


_PARSE: dict[str, Callable[[str, Any], Any]] = {
    "rate": _number,
    "k": _integer,
    "adaptive": _flag,
    "alpha_mode": _text,
    "alpha": _number,
    "alpha_list": _probabilities,
    "alpha_concentration": _number,
    "prompt_mean": _number,
    "prompt_cv": _number,
    "output_mean": _number,
    "output_cv": _number,
    "gpu": _text,
    "target": _text,
    "drafter": _text,
    "drafter_model": _text,
    "tp": _integer,
    "max_num_seqs": _integer,
    "cost_source": _text,
    "profile": _text,
    "requests": _integer,
}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
    if isinstance(a, list) and isinstance(b, str):  # a parsed list against the shown text
        return ", ".join(f"{x:g}" for x in a) == b
    return bool(a == b)


# --------------------------------------------------------------------------- controls -> overrides


def _context(target: str) -> int:
    """The target's context length (a generous stand-in when the name is bad: the scenario's own
    validation then reports it)."""
    try:
        return resolve_model(target, "target").max_context
    except ScenarioError:
        return 2 * 32768


def _length_law(prefix: str, mean: float, cv: float, base_law: Any, context: int) -> Any:
    if cv < 0:
        raise ScenarioError(
            _field(f"{prefix}_cv"), f"must be >= 0 (0 = every request the same length; got {cv:g})"
        )
    if cv == 0:
        if mean != int(mean):
            raise ScenarioError(
                _field(f"{prefix}_mean"),
                f"must be a whole number of tokens when the spread is 0 (got {mean:g})",
            )
        return int(mean)
    if isinstance(base_law, LognormalLength):
        lo, hi = base_law.min, base_law.max
    else:
        # prompt and output each at most half the context, so the longest request fits it
        hi = min(32768, context // 2, round(LENGTH_CLIP_MEANS * mean))
        lo, hi = 1, int(max(1, hi))
    return {"dist": "lognormal", "mean": mean, "cv": cv, "min": lo, "max": hi}


@dataclass(frozen=True)
class _Group:
    """Controls that set one scenario field together: the field is overridden only when one of
    them differs from what the base shows. The first control picks which of the others count
    (the alpha mode, the drafter kind, the cost source); the rest are not read."""

    controls: tuple[str, ...]
    build: Callable[[dict[str, Any], Scenario], dict[str, Any]]
    uses: Callable[[Any], tuple[str, ...]] | None = None

    def relevant(self, first: Any) -> tuple[str, ...]:
        return self.controls if self.uses is None else (self.controls[0], *self.uses(first))


def _alpha_uses(mode: Any) -> tuple[str, ...]:
    return {"constant": ("alpha",), "per-position": ("alpha_list",),
            "beta": ("alpha", "alpha_concentration")}.get(mode, ())


def _alpha(v: dict[str, Any], base: Scenario) -> dict[str, Any]:
    mode = v["alpha_mode"]
    if mode == "constant":
        return {"acceptance.alpha": v["alpha"]}
    if mode == "per-position":
        return {"acceptance.alpha": v["alpha_list"]}
    if mode == "beta":
        return {"acceptance.alpha": {"dist": "beta", "mean": v["alpha"],
                                     "concentration": v["alpha_concentration"]}}
    raise ScenarioError(
        _field("alpha_mode"), f"unknown mode {mode!r}; use one of {', '.join(ALPHA_MODES)}"
    )


def _drafter(v: dict[str, Any], base: Scenario) -> dict[str, Any]:
    kind = v["drafter"]
    block: dict[str, Any] = {"kind": kind}
    if kind == "model":
        block["model"] = v["drafter_model"] or None
    return {"drafter": block}


def _costs(v: dict[str, Any], base: Scenario) -> dict[str, Any]:
    profile = v["profile"] or None if v["cost_source"] == "profile" else base.costs.profile
    return {"costs.source": v["cost_source"], "costs.profile": profile}


def _lengths(prefix: str, field: str) -> Callable[[dict[str, Any], Scenario], dict[str, Any]]:
    def build(v: dict[str, Any], base: Scenario) -> dict[str, Any]:
        law = getattr(base.workload, field)
        mean, cv = v[f"{prefix}_mean"], v[f"{prefix}_cv"]
        return {f"workload.{field}": _length_law(prefix, mean, cv, law, _context(v["target"]))}

    return build


def _one(control: str) -> _Group:
    return _Group((control,), lambda v, base: {_field(control): v[control]})


_GROUPS: tuple[_Group, ...] = (
    _one("rate"),
    _one("k"),
    _Group(("adaptive",), lambda v, b: {"spec.policy": "adaptive" if v["adaptive"] else "fixed"}),
    _Group(("alpha_mode", "alpha", "alpha_list", "alpha_concentration"), _alpha, _alpha_uses),
    _Group(("prompt_mean", "prompt_cv"), _lengths("prompt", "prompt_tokens")),
    _Group(("output_mean", "output_cv"), _lengths("output", "output_tokens")),
    _one("gpu"),
    _one("target"),
    _Group(("drafter", "drafter_model"), _drafter, lambda k: ("drafter_model",) * (k == "model")),
    _one("tp"),
    _one("max_num_seqs"),
    _Group(("cost_source", "profile"), _costs, lambda src: ("profile",) * (src == "profile")),
    _one("requests"),
)


def scenario_with_controls(
    base: dict[str, Any], controls: dict[str, Any]
) -> tuple[Scenario, dict[str, Any]]:
    """The scenario the page shows: ``base`` with the controls that differ from it applied.

    Parameters
    ----------
    base
        The base scenario as plain data (what :meth:`Scenario.to_dict` gives).
    controls
        Control name -> value as typed (strings from text inputs, numbers, booleans); controls
        left out keep the base's value.

    Returns
    -------
    scenario, overrides
        The validated scenario and the dotted overrides that made it from the base.

    Raises
    ------
    ScenarioError
        Naming the scenario field at fault (``workload.rate``, ``hardware``, ...): a value that is
        not a number, out of range, an unknown name, or a combination the scenario refuses.
    """
    if not isinstance(controls, dict):
        raise ScenarioError("controls", "must be a mapping of control names to values")
    unknown = sorted(set(controls) - set(CONTROL_FIELDS))
    if unknown:
        raise ScenarioError(
            "controls", f"unknown control {unknown[0]!r}; known: {', '.join(CONTROL_FIELDS)}"
        )
    base_scn = scenario_from_dict(base)
    shown = controls_of(base_scn)
    values = dict(shown)

    def read(name: str) -> Any:
        if name in controls:
            values[name] = _PARSE[name](name, controls[name])
        return values[name]

    read("target")  # the length laws' clip reads the target's context
    overrides: dict[str, Any] = {}
    for group in _GROUPS:
        names = group.relevant(read(group.controls[0]))
        typed = [read(n) for n in names]
        if all(_same(v, shown[n]) for v, n in zip(typed, names, strict=True)):
            continue
        overrides.update(group.build(values, base_scn))
    if not overrides:
        return base_scn, {}
    return scenario_from_dict(apply_overrides(base_scn.to_dict(), overrides)), overrides


def error_field(exc: ScenarioError) -> tuple[str, str]:
    """``(field, message)`` of a :class:`ScenarioError`, with a whole-scenario check's own field
    taken from its message (``scenario: acceptance.alpha: list too short`` is about
    ``acceptance.alpha``)."""
    m = re.match(r"([a-z_]+(?:\.[a-z_]+)*): (.*)", exc.message)
    if exc.field == "scenario" and m:
        return m.group(1), m.group(2)
    return exc.field, exc.message


def control_for_error(exc: ScenarioError, controls: dict[str, Any]) -> str | None:
    """The control a :class:`ScenarioError` belongs beside, or ``None`` (shown above the panels).

    Acceptance errors go to the control of the chosen alpha mode.
    """
    field, _ = error_field(exc)
    if field == "runs":  # the simulation's replications: a page control, not a scenario field
        return "runs"
    if field == "warmup_requests":
        field = "workload.num_requests"
    if field.startswith("acceptance.alpha"):
        mode = str(controls.get("alpha_mode", "constant"))
        if field.endswith("concentration"):
            return "alpha_concentration"
        return "alpha_list" if mode == "per-position" else "alpha"
    best: tuple[int, str] | None = None
    for name, f in CONTROL_FIELDS.items():
        if name.startswith("alpha"):
            continue
        if field == f or field.startswith(f + ".") or field.startswith(f + "["):
            depth = f.count(".") + 1
            if best is None or depth > best[0]:
                best = (depth, name)
    if best is not None:
        return best[1]
    # a block's own check (``costs``: source profile needs a bundle; ``drafter``: kind model needs a
    # model) goes beside the block's first control
    if field in ("costs", "drafter", "spec", "server"):
        return next(n for n, f in CONTROL_FIELDS.items() if f.startswith(field + "."))
    return None
