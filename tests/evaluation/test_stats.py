"""Win rate, bootstrap intervals and the length-controlled rate against hand computations."""

import math

import numpy as np
import pytest

from orpo_pipeline.evaluation import stats


def test_bootstrap_interval_is_the_exact_bootstrap_distribution_quantiles():
    # 12 wins, 8 losses. A bootstrap resample's win rate is Binomial(20, 0.6) / 20; its CDF,
    # sum_{j<=k} C(20, j) 0.6^j 0.4^(20-j), is 0.021 at k=7, 0.057 at k=8, 0.949 at k=15 and
    # 0.984 at k=16, so the 2.5 % and 97.5 % quantiles are 8/20 and 16/20.
    outcomes = np.array([1.0] * 12 + [0.0] * 8)
    cdf = np.cumsum([math.comb(20, k) * 0.6**k * 0.4 ** (20 - k) for k in range(21)])
    expected = (np.argmax(cdf >= 0.025) / 20, np.argmax(cdf >= 0.975) / 20)
    assert expected == (0.4, 0.8)
    draws = stats.bootstrap_indices(20, num_resamples=20000, seed=0)
    assert stats.percentile_interval(outcomes[draws].mean(axis=1), 0.95) == expected


def test_bootstrap_is_seeded_and_degenerate_data_gives_a_point():
    draws = stats.bootstrap_indices(7, num_resamples=500, seed=3)
    assert stats.percentile_interval(np.ones(7)[draws].mean(axis=1), 0.95) == (1.0, 1.0)
    again = stats.bootstrap_indices(7, num_resamples=500, seed=3)
    assert (draws == again).all() and draws.shape == (500, 7)


def test_vectorised_fits_equal_one_fit_per_resample():
    rng = np.random.default_rng(0)
    y = rng.choice([0.0, 0.5, 1.0], size=(50, 12))
    diff = rng.normal(0, 80, size=(50, 12))
    rates = stats.length_controlled_rates(y, diff)
    one_by_one = [stats.length_controlled(y[r], diff[r]).rate for r in range(50)]
    np.testing.assert_allclose(rates, one_by_one, atol=1e-12)


def test_length_controlled_rate_matches_the_closed_form_of_two_length_groups():
    # Six answers 100 characters longer than the baseline's (5 wins, 1 loss, or 4 wins and two
    # ties: mean 5/6 either way) and two 100 characters shorter (1 win, 1 loss). The feature
    # tanh(Δ/sd) takes two values ±t, so the two-parameter fit is saturated:
    #   sigmoid(a + b t) = 5/6 and sigmoid(a - b t) = 1/2
    #   => a = (logit(5/6) + logit(1/2)) / 2 = ln(5) / 2, LC = sigmoid(a) = √5 / (1 + √5).
    expected = math.sqrt(5) / (1 + math.sqrt(5))  # 0.6910, below the raw 0.75
    diff = [100] * 6 + [-100] * 2
    for long_group in ([1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0.5, 0.5]):
        outcomes = [*long_group, 1, 0]
        fit = stats.length_controlled(outcomes, diff)
        assert stats.win_rate(outcomes) == 0.75
        assert fit.rate == pytest.approx(expected, abs=1e-6)
        assert fit.intercept == pytest.approx(math.log(5) / 2, abs=1e-5)
        t = math.tanh(100 / np.std(diff, ddof=1))
        assert fit.slope * t == pytest.approx((math.log(5) - 0) / 2, abs=1e-5)
        assert fit.scale == pytest.approx(np.std(diff, ddof=1))


def test_length_controlled_rate_without_length_differences_is_the_raw_rate():
    outcomes = [1, 1, 0, 0.5, 1]
    fit = stats.length_controlled(outcomes, [7] * 5)
    assert (fit.scale, fit.slope) == (0.0, 0.0)
    assert fit.rate == pytest.approx(0.7, abs=1e-6)


def test_separable_outcomes_stay_finite():
    fit = stats.length_controlled([1, 1, 1, 0, 0], [50, 40, 30, -20, -60])
    assert math.isfinite(fit.intercept) and abs(fit.slope) <= stats.PARAMETER_BOUND
    assert 0 < fit.rate < 1
    assert stats.length_controlled([1, 1, 1], [5, -3, 9]).rate == pytest.approx(1, abs=1e-6)
