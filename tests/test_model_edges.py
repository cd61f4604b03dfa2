"""Edges of the acceptance laws and the mean-field formula that mutation testing (``make
mutation``, notes/testing.md) found untested: input checks, boundaries, the per-position forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sdsim.acceptance import (
    AcceptanceSampler,
    expected_tokens_per_step,
    position_probs,
    steps_to_finish_pmf,
    steps_to_finish_table,
    tokens_per_step_var,
)


@pytest.mark.parametrize("alpha", [1.5, -0.1, math.nan, [0.5, 1.2], [0.5, -0.2], [math.inf, 0.1]])
def test_alpha_outside_0_1_is_refused(alpha: object) -> None:
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        position_probs(alpha, 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        expected_tokens_per_step(alpha, 2)  # type: ignore[arg-type]


def test_position_probs_checks_length_and_k() -> None:
    with pytest.raises(ValueError, match=r"per-position alpha has 2 entries, needs >= k=3"):
        position_probs([0.5, 0.5], 3)
    with pytest.raises(ValueError, match=r"k must be >= 0, got -1"):
        position_probs(0.5, -1)
    np.testing.assert_array_equal(position_probs([0.9, 0.8, 0.7], 2), [0.9, 0.8])
    # the boundaries themselves are probabilities
    np.testing.assert_array_equal(position_probs([0.0, 1.0], 2), [0.0, 1.0])


def test_expected_tokens_per_position_and_constant() -> None:
    # 1 + a1 + a1 a2 + a1 a2 a3
    assert expected_tokens_per_step([0.9, 0.5, 0.2], 3) == pytest.approx(1 + 0.9 + 0.45 + 0.09)
    assert expected_tokens_per_step(np.array([0.9, 0.5, 0.2]), 1) == pytest.approx(1.9)
    assert expected_tokens_per_step(0.5, 2) == pytest.approx(1.75)
    assert expected_tokens_per_step(1.0, 3) == 4.0 and expected_tokens_per_step(0.0, 3) == 1.0
    # variance of X in {1, 2} with P(2) = 0.5
    assert tokens_per_step_var(0.5, 1) == pytest.approx(0.25)


def test_steps_to_finish_edges() -> None:
    np.testing.assert_array_equal(steps_to_finish_pmf(0, 0.7, 3), [1.0])
    with pytest.raises(ValueError, match=r"n must be >= 0, got -1"):
        steps_to_finish_pmf(-1, 0.7, 3)
    assert steps_to_finish_table(5, 0.7, 2).shape == (6, 6)
    with pytest.raises(ValueError, match=r"n_max=8193 too large for the exact table"):
        steps_to_finish_table(8193, 0.7, 2)
    # with alpha = 0 every step emits one token: exactly n steps
    assert steps_to_finish_pmf(4, 0.0, 3)[4] == 1.0


def test_sampler_k1_boundaries_and_ties() -> None:
    u = (np.arange(1000) + 0.5) / 1000  # an even grid of uniforms
    s = AcceptanceSampler()
    got = s.sample(u, 1, np.full(1000, 0.3))
    assert got.dtype == np.int64 and got.sum() == 300  # P(accept) = alpha at k = 1
    assert (s.sample(u, 3, np.zeros(1000)) == 0).all()
    assert (s.sample(u, 3, np.ones(1000)) == 3).all()
    assert (s.sample(u, 0, np.full(1000, 0.9)) == 0).all()
    with pytest.raises(ValueError, match="alpha is required without per-position probabilities"):
        s.sample(u, 2)
    # per-position: accepted >= m iff u < a1 ... am (strictly)
    pos = AcceptanceSampler(np.array([0.5, 0.5]))
    np.testing.assert_array_equal(pos.sample(np.array([0.5, 0.25, 0.2]), 2), [0, 1, 2])


def test_mean_field_edges() -> None:
    import warnings

    from sdsim.analytic.meanfield import (
        best_k,
        break_even_rate,
        break_even_utilisation,
        mean_latency,
        saturation_rate,
        speedup,
    )

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero warning at saturation
        got = mean_latency(0.1, 0.05, [0, 10, 20, 30])
    np.testing.assert_allclose(got[:2], [0.1, 0.2])
    assert np.isinf(got[2:]).all()
    assert saturation_rate(0.05) == pytest.approx(20.0)
    assert saturation_rate(0.0) == math.inf and saturation_rate(-1.0) == math.inf
    np.testing.assert_allclose(speedup(0.5, 2.0, [0.0, 0.5]), [2.0, 0.0])
    # r* = (1 - C1R) / (C2R - C1R), kept only inside [0, 1)
    assert break_even_utilisation(0.5, 2.0) == pytest.approx(1 / 3)
    assert break_even_utilisation(1.0, 2.0) == 0.0
    assert math.isnan(break_even_utilisation(0.5, 0.5))
    assert math.isnan(break_even_utilisation(0.5, 1.0))  # r* = 1: never crosses below 1
    assert math.isnan(break_even_utilisation(1.5, 2.0))  # r* < 0
    assert break_even_rate(0.5, 2.0, 0.05) == pytest.approx(1 / 3 / 0.05)
    assert math.isnan(break_even_rate(0.5, 2.0, 0.0))
    assert math.isnan(break_even_rate(0.5, 0.5, 0.05))
    # k = 4 is faster alone, k = 0 costs the others less: the best k falls with load
    coeffs = {0: (1.0, 0.05), 4: (0.5, 0.08)}
    assert best_k(coeffs, [1.0, 11.0, 15.0, 30.0]) == {1.0: 4, 11.0: 0, 15.0: 0, 30.0: None}
