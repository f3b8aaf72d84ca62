"""Pure statistics over per-prompt outcomes: win rate, bootstrap intervals, length control.

An outcome is the candidate's result on one prompt: 1 win, 0.5 tie, 0 loss. Functions that
take (R, N) arrays fit or summarise R resamples of N prompts at once.
"""

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

PARAMETER_BOUND = 20.0
"""|intercept| and |slope| of the length regression stay below this: when the outcomes are
separable (e.g. every prompt won) the unbounded fit runs to infinity; at the bound the
length-controlled rate is sigmoid(20), i.e. 1 to 9 digits."""


class LengthFit(NamedTuple):
    """The length regression logit P(win) = intercept + slope * tanh(Δlength / sd(Δlength))."""

    rate: float
    """The length-controlled win rate: sigmoid(intercept), the rate at equal length."""
    intercept: float
    slope: float
    scale: float
    """sd(Δlength), the unit of Δlength in the regression (0 when every Δlength is equal)."""


def win_rate(outcomes: Sequence[float] | np.ndarray) -> float:
    """Mean outcome: wins count 1, ties 0.5, losses 0."""
    return float(np.mean(outcomes))


def length_features(length_diff: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """tanh(Δ / sd(Δ)) along the last axis, as AlpacaEval-LC uses it, and sd(Δ) (the sample
    sd; where it is 0 the features are 0)."""
    n = length_diff.shape[-1]
    scale = np.std(length_diff, axis=-1, ddof=1, keepdims=True) if n > 1 else np.zeros((1, 1))
    safe = np.where(scale > 0, scale, 1.0)
    return np.where(scale > 0, np.tanh(length_diff / safe), 0.0), scale[..., 0]


def fit_logistic(outcomes: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-likelihood intercepts and slopes of logit P(win) = a + b * x, one fit per row of
    (R, N) soft targets and features, by Newton's method on all rows at once; parameters are
    kept within ±PARAMETER_BOUND, and a row whose features are constant keeps b = 0."""
    theta = np.zeros((outcomes.shape[0], 2))  # (R, 2): intercept, slope
    identified = features.std(axis=1) > 0
    for _ in range(100):
        z = theta[:, :1] + theta[:, 1:] * features  # (R, N)
        p = 1 / (1 + np.exp(-z))
        r, w = p - outcomes, np.maximum(p * (1 - p), 1e-12)
        g0, g1 = r.sum(1), (r * features).sum(1)
        h00, h01, h11 = w.sum(1), (w * features).sum(1), (w * features**2).sum(1)
        det = h00 * h11 - h01**2
        solvable = identified & (det > 0)  # det is 0 when a resample's features are constant
        det = np.where(solvable, det, 1.0)
        step_a = np.where(solvable, (h11 * g0 - h01 * g1) / det, g0 / h00)
        step_b = np.where(solvable, (h00 * g1 - h01 * g0) / det, 0.0)
        previous = theta
        theta = np.clip(
            theta - np.stack([step_a, step_b], axis=1), -PARAMETER_BOUND, PARAMETER_BOUND
        )
        if np.abs(theta - previous).max() < 1e-12:
            break
    return theta[:, 0], theta[:, 1]


def length_controlled_rates(outcomes: np.ndarray, length_diff: np.ndarray) -> np.ndarray:
    """The length-controlled win rate of each row of (R, N) outcomes and length differences."""
    features, _ = length_features(length_diff)
    intercept, _ = fit_logistic(outcomes, features)
    return 1 / (1 + np.exp(-intercept))


def length_controlled(
    outcomes: Sequence[float] | np.ndarray, length_diff: Sequence[float] | np.ndarray
) -> LengthFit:
    """AlpacaEval-LC for one model against one baseline: fit logit P(win) = a + b * tanh(Δ/sd)
    on every prompt (ties are targets of 0.5), and report sigmoid(a), the win rate predicted
    when both answers have the same length.

    AlpacaEval-LC also fits a per-instruction difficulty term shared across many models; with
    one pair of models it is not identified and is left out.
    """
    y = np.asarray(outcomes, dtype=float)[None]
    features, scale = length_features(np.asarray(length_diff, dtype=float)[None])
    intercept, slope = fit_logistic(y, features)
    a, b = float(intercept[0]), float(slope[0])
    return LengthFit(1 / (1 + math.exp(-a)), a, b, float(scale[0]))


def bootstrap_indices(num_items: int, *, num_resamples: int, seed: int) -> np.ndarray:
    """(R, N) item indices: R resamples of the N items with replacement, seeded."""
    return np.random.default_rng(seed).integers(0, num_items, size=(num_resamples, num_items))


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central `confidence` interval of bootstrap values (inverted-CDF percentiles)."""
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail], method="inverted_cdf")
    return float(low), float(high)
