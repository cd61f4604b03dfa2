"""The measured acceptance presets and the conversions between alpha, acceptance length,
per-position rates and the draft acceptance rate."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdsim import ScenarioError, load_scenario
from sdsim.acceptance import (
    alpha_for_length,
    alphas_from_position_rates,
    draft_acceptance_rate,
    expected_tokens_per_step,
    fit_positions,
    position_rates,
)
from sdsim.acceptance_presets import acceptance_presets, get_preset
from sdsim.cli import main
from tests.conftest import ROOT

DEFAULT = ROOT / "scenarios/default.yaml"
PRESETS = sorted(acceptance_presets())


@pytest.mark.parametrize("name", PRESETS)
def test_preset_round_trip_within_2_percent_of_its_source(name: str) -> None:
    # preset -> alpha -> acceptance length: the model's E[X] at every k the source measured is
    # within 2% of the published length (the presets' bar), and the stored alpha is what
    # `sdsim acceptance fit` derives from the published numbers (to the 4 decimals stored).
    p = get_preset(name)
    alpha = list(p.alpha)
    for k, length in p.measured_lengths().items():
        assert expected_tokens_per_step(alpha, k) == pytest.approx(length, rel=0.02), (name, k)
    m = p.measured
    refit = (
        fit_positions(p.measured_lengths())
        if "lengths" in m
        else alphas_from_position_rates(m["position_rates"])
    )
    np.testing.assert_allclose(alpha, refit, atol=1e-3)
    assert all(0.0 < a <= 1.0 for a in alpha)
    assert p.source.startswith("https://github.com/")


def test_preset_in_a_scenario_resolves_to_its_alpha_and_survives_a_round_trip() -> None:
    name = "llama-3.1-8b/eagle-3/mt-bench"
    scn = load_scenario(DEFAULT, {"acceptance.preset": name})
    assert scn.acceptance.preset == name
    assert scn.acceptance.alpha == list(get_preset(name).alpha)
    # the resolved scenario (what `run --out` writes) reloads to the same acceptance
    again = scn.with_overrides({"spec.k": 7})
    assert again.acceptance == scn.acceptance
    # an override of alpha replaces the preset, one of the preset keeps it
    assert scn.with_overrides({"acceptance.alpha": 0.6}).acceptance.preset is None
    other = scn.with_overrides({"acceptance.preset": "llama-3.1-8b/eagle-1/mt-bench"})
    assert other.acceptance.alpha == list(get_preset("llama-3.1-8b/eagle-1/mt-bench").alpha)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"acceptance.preset": "no/such/preset"}, "known: "),
        ({"acceptance.preset": "llama-3.1-8b/ngram/gsm8k"}, "up to 3; spec.k is 4"),
        ({"acceptance": {"preset": "llama-3.1-8b/ngram/gsm8k", "alpha": 0.5}}, "disagrees"),
    ],
)
def test_bad_presets_name_the_field(overrides: dict, needle: str) -> None:
    with pytest.raises(ScenarioError) as exc:
        load_scenario(DEFAULT, overrides)
    text = str(exc.value)
    assert text.startswith("acceptance."), text
    assert needle in text and "\n" not in text


@given(alpha=st.floats(0.0, 0.999), k=st.integers(1, 10))
def test_alpha_for_length_inverts_the_acceptance_length(alpha: float, k: int) -> None:
    got = alpha_for_length(expected_tokens_per_step(alpha, k), k)
    assert got == pytest.approx(alpha, abs=1e-9)


def test_a_preset_drives_the_simulation() -> None:
    # End to end: a scenario naming a preset simulates with its per-position alpha. Seed 1, 1,000
    # requests of 256 tokens (about 80,000 decode steps): the measured draft acceptance rate and
    # tokens per step sit within 2% of the model's (at k = 4: 0.500 and 3.000); the simulation
    # is about 1% low because a request's last step cannot accept past its final token.
    from sdsim import simulate
    from tests.conftest import small

    scn = small(
        **{
            "acceptance": {"preset": "llama-3.1-8b/eagle-3/mt-bench"},
            "workload.num_requests": 1000,
            "workload.output_tokens": 256,
        }
    )
    alpha = list(get_preset("llama-3.1-8b/eagle-3/mt-bench").alpha)
    s = simulate(scn, seed=1).summary
    assert s["draft_acceptance_rate"] == pytest.approx(draft_acceptance_rate(alpha, 4), rel=0.02)
    assert s["tokens_per_step_mean"] == pytest.approx(expected_tokens_per_step(alpha, 4), rel=0.02)


@given(alphas=st.lists(st.floats(0.01, 1.0), min_size=1, max_size=8))
def test_position_rates_and_conditional_alpha_are_inverse(alphas: list[float]) -> None:
    rates = position_rates(alphas, len(alphas))
    np.testing.assert_allclose(alphas_from_position_rates(list(rates)), alphas, rtol=1e-9)
    # vLLM's mean acceptance length is 1 + the sum of its per-position rates
    assert expected_tokens_per_step(alphas, len(alphas)) == pytest.approx(1 + rates.sum())


def test_draft_acceptance_rate_is_not_alpha() -> None:
    # accepted / drafted equals alpha at k = 1 only and falls with k at a constant alpha
    assert draft_acceptance_rate(0.7, 1) == pytest.approx(0.7)
    rates = [draft_acceptance_rate(0.7, k) for k in range(1, 9)]
    assert all(b < a for a, b in itertools.pairwise(rates))
    # vLLM issue 26191: 12,208 accepted of 33,712 drafted (0.362) with alpha about 0.74
    p = get_preset("llama-3.1-8b/eagle-3/mt-bench")
    assert draft_acceptance_rate(list(p.alpha), 7) == pytest.approx(12208 / 33712, abs=0.002)


def test_fit_positions_reproduces_exact_lengths() -> None:
    truth = [0.8, 0.7, 0.65, 0.6]
    lengths = {k: expected_tokens_per_step(truth, k) for k in (1, 2, 3, 4)}
    got = fit_positions(lengths, smoothness=0.0)
    np.testing.assert_allclose(got, truth, atol=1e-6)
    with pytest.raises(ValueError, match="k=2"):
        fit_positions({2: 3.5})


def test_cli_acceptance_fit_and_list(capsys: pytest.CaptureFixture[str]) -> None:
    main(["acceptance", "fit", "--length", "3.53", "--k", "7", "--json"])
    got = json.loads(capsys.readouterr().out)
    assert got["alpha"] == pytest.approx(0.743, abs=5e-4)
    assert got["draft_acceptance_rate"]["7"] == pytest.approx(2.53 / 7)
    # a server's "acceptance rate" 0.44 at k = 4 is alpha 0.70, not 0.44
    main(["acceptance", "fit", "--draft-acceptance-rate", "0.44", "--k", "4", "--json"])
    assert json.loads(capsys.readouterr().out)["alpha"] == pytest.approx(0.6975, abs=5e-4)
    main(["acceptance", "fit", "--position-rates", "0.74,0.54,0.41,0.31,0.23,0.17,0.13"])
    text = capsys.readouterr().out
    assert "α_j" in text and "draft acc. rate" in text
    assert all(len(line) <= 100 for line in text.splitlines())
    main(["acceptance", "list"])
    text = capsys.readouterr().out
    assert all(name in text for name in PRESETS)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--length", "9", "--k", "4"], "--length"),
        (["--length", "2.0"], "--k"),
        (["--position-rates", "0.5,0.7"], "--position-rates"),
        (["--preset", "nope"], "--preset"),
        ([], "exactly one"),
    ],
)
def test_cli_acceptance_fit_bad_input(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["acceptance", "fit", *args])
    assert exc.value.code == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and needle in line, line
