"""`sdsim acceptance list | fit`: measured acceptance presets, and alpha from measurements.

Three numbers are kept apart here (see ``sdsim/data/acceptance/README.md``): ``alpha`` (the
model parameter, per drafted position given the earlier ones were accepted), the acceptance
length (tokens per verification step, accepted + 1) and ``draft_acceptance_rate`` (accepted over
drafted tokens, what servers report as their acceptance rate).
"""

from __future__ import annotations

__all__ = ["acceptance_app", "fit", "list_presets"]

import json
import math
from typing import Annotated, Any

import typer

from sdsim.acceptance import (
    alpha_for_length,
    alphas_from_position_rates,
    draft_acceptance_rate,
    expected_tokens_per_step,
    fit_positions,
    position_rates,
)
from sdsim.acceptance_presets import acceptance_presets, get_preset
from sdsim.cli.app import out
from sdsim.cli.tables import Column, fmt, render_table
from sdsim.errors import ScenarioError

acceptance_app = typer.Typer(
    no_args_is_help=True,
    help="Measured acceptance presets, and alpha fitted from acceptance lengths or rates.",
)


def _numbers(text: str, option: str) -> list[float]:
    vals = []
    for tok in text.replace(",", " ").split():
        try:
            vals.append(float(tok))
        except ValueError:
            raise ScenarioError(option, f"not a number: {tok!r}") from None
    if not vals:
        raise ScenarioError(option, "no values given")
    return vals


def _lengths(text: str) -> dict[int, float]:
    got: dict[int, float] = {}
    for tok in text.replace(",", " ").split():
        k, sep, v = tok.partition("=")
        if not sep:
            raise ScenarioError("--lengths", f"expected K=LENGTH pairs, got {tok!r}")
        try:
            got[int(k)] = float(v)
        except ValueError:
            raise ScenarioError("--lengths", f"expected K=LENGTH pairs, got {tok!r}") from None
    if not got:
        raise ScenarioError("--lengths", "no K=LENGTH pairs given")
    return got


def list_presets(
    json_out: Annotated[bool, typer.Option("--json", help="print the presets as JSON")] = False,
) -> None:
    """The measured acceptance presets (`acceptance: {preset: NAME}` in a scenario)."""
    presets = acceptance_presets()
    if json_out:
        out.print_json(
            json.dumps({n: {**p.__dict__, "alpha": list(p.alpha)} for n, p in presets.items()})
        )
        return
    rows = []
    for name in sorted(presets):
        p = presets[name]
        k = p.max_k
        rows.append(
            [name, str(k), expected_tokens_per_step(list(p.alpha), k),
             draft_acceptance_rate(list(p.alpha), k), min(p.alpha), max(p.alpha)]
        )
    render_table(
        "acceptance presets (sdsim/data/acceptance/README.md names every source)",
        [Column("preset", "label"), Column("k max", "text"), Column("length at k max", "num"),
         Column("draft acc. rate", "num"), Column("α min", "num"), Column("α max", "num")],
        rows,
        notes=["length: tokens per verification step (accepted + 1); draft acceptance rate: "
               "accepted / drafted tokens; α: the model parameter per position",
               "use in a scenario: acceptance: {preset: NAME}; details: sdsim acceptance fit "
               "--preset NAME"],
    )


def fit(
    length: Annotated[
        float | None,
        typer.Option("--length", help="measured acceptance length (tokens per step) at --k"),
    ] = None,
    k: Annotated[int | None, typer.Option("--k", help="draft length of --length")] = None,
    lengths: Annotated[
        str | None,
        typer.Option("--lengths", help="acceptance lengths at several k: 2=2.36,3=2.79,..."),
    ] = None,
    position_rates_: Annotated[
        str | None,
        typer.Option(
            "--position-rates",
            help="vLLM's per-position acceptance (drafts accepted at position j / all drafts): "
            "0.74,0.54,...",
        ),
    ] = None,
    conditional: Annotated[
        str | None,
        typer.Option(
            "--conditional-rates",
            help="per-position alpha, each given the earlier positions were accepted (EAGLE's "
            "n-alpha): 0.8,0.78,...",
        ),
    ] = None,
    draft_rate: Annotated[
        float | None,
        typer.Option(
            "--draft-acceptance-rate",
            help="accepted / drafted tokens measured at --k (a server's 'acceptance rate')",
        ),
    ] = None,
    preset: Annotated[
        str | None, typer.Option("--preset", help="refit a preset's published measurement")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the fit as JSON")] = False,
) -> None:
    """Fit alpha (and per-position alpha) from measured acceptance.

    Give exactly one of: --length with --k; --draft-acceptance-rate with --k; --lengths;
    --position-rates; --conditional-rates; --preset.
    """
    given = [
        o
        for o, v in (
            ("--length", length),
            ("--draft-acceptance-rate", draft_rate),
            ("--lengths", lengths),
            ("--position-rates", position_rates_),
            ("--conditional-rates", conditional),
            ("--preset", preset),
        )
        if v is not None
    ]
    if len(given) != 1:
        raise ScenarioError(
            "acceptance fit",
            "give exactly one of --length (with --k), --draft-acceptance-rate (with --k), "
            f"--lengths, --position-rates, --conditional-rates, --preset (got {given or 'none'})",
        )
    measured: dict[int, float] = {}
    source = given[0]
    try:
        if length is not None or draft_rate is not None:
            if k is None or k < 1:
                raise ScenarioError("--k", f"{source} needs the draft length --k >= 1")
            if draft_rate is not None and not 0.0 <= draft_rate <= 1.0:
                raise ScenarioError("--draft-acceptance-rate", "must lie in [0, 1]")
            ell = length if length is not None else 1.0 + float(draft_rate or 0.0) * k
            alphas = [alpha_for_length(ell, k)] * k
            measured = {k: ell}
        elif lengths is not None:
            measured = _lengths(lengths)
            alphas = fit_positions(measured)
        elif position_rates_ is not None:
            rates = _numbers(position_rates_, "--position-rates")
            alphas = alphas_from_position_rates(rates)
            measured = {len(rates): 1.0 + sum(rates)}
        elif conditional is not None:
            alphas = _numbers(conditional, "--conditional-rates")
            if any(not 0.0 <= a <= 1.0 for a in alphas):
                raise ScenarioError("--conditional-rates", "must lie in [0, 1]")
        else:
            try:
                p = get_preset(str(preset))
            except KeyError as exc:
                raise ScenarioError("--preset", str(exc.args[0])) from None
            measured = p.measured_lengths()
            m = p.measured
            alphas = (
                fit_positions(measured)
                if "lengths" in m
                else alphas_from_position_rates(m["position_rates"])
            )
    except ValueError as exc:
        if isinstance(exc, ScenarioError):
            raise
        raise ScenarioError(source, str(exc)) from None
    _report(alphas, measured, source, json_out)


def _report(alphas: list[float], measured: dict[int, float], source: str, json_out: bool) -> None:
    kmax = len(alphas)
    surv = position_rates(alphas, kmax)
    length = expected_tokens_per_step(alphas, kmax)
    const = alpha_for_length(length, kmax) if kmax >= 1 and length > 1.0 else 0.0
    by_k = {kk: expected_tokens_per_step(alphas, kk) for kk in range(1, kmax + 1)}
    result: dict[str, Any] = {
        "alpha": const,
        "alpha_per_position": alphas,
        "k_max": kmax,
        "acceptance_length": {str(kk): v for kk, v in by_k.items()},
        "draft_acceptance_rate": {
            str(kk): draft_acceptance_rate(alphas, kk) for kk in range(1, kmax + 1)
        },
        "measured_acceptance_length": {str(kk): v for kk, v in measured.items()},
        "from": source,
    }
    if json_out:
        out.print_json(json.dumps(result))
        return
    rows = []
    for j in range(kmax):
        kk = j + 1
        meas = measured.get(kk, math.nan)
        rows.append(
            [str(kk), alphas[j], float(surv[j]), by_k[kk], draft_acceptance_rate(alphas, kk),
             meas, (by_k[kk] / meas - 1.0) if math.isfinite(meas) else math.nan]
        )
    render_table(
        f"alpha from {source}: constant alpha {const:.4f} (same acceptance length at k={kmax})",
        [Column("position / k", "label"), Column("α_j", "num"), Column("P(j accepted)", "num"),
         Column("length at k", "num"), Column("draft acc. rate", "num"),
         Column("measured length", "num"), Column("model - measured", "signed_pct")],
        rows,
        notes=[
            "α_j: accepted at position j given 1..j-1 were (the model parameter); P(j accepted) "
            "= α_1...α_j (vLLM's per-position rate); length at k: tokens per step drafting k; "
            "draft acc. rate: accepted / drafted tokens at k (not α)",
            "scenario: acceptance: {alpha: ["
            + ", ".join(fmt(round(a, 4)) for a in alphas)
            + f"]}}   or the constant acceptance: {{alpha: {const:.4f}}}",
        ],
    )


acceptance_app.command("list")(list_presets)
acceptance_app.command("fit")(fit)
