import math

import pytest
import torch

from orpo_pipeline.train.loss import (
    LOGP_MAX,
    log1mexp,
    metric_sums,
    metrics_from_sums,
    orpo_loss,
    sequence_logps,
    token_logps,
)


def test_loss_matches_hand_computation():
    """Two pairs, NLL 6 nats over 3 tokens, β = 0.1.

    pair 1: ℓ_w = −1, ℓ_l = −2
        log(1 − e^−1) = −0.458675, log(1 − e^−2) = −0.145413
        log_odds = (−1 + 2) − (−0.458675 + 0.145413) = 1.313262
        log σ(1.313262) = −log(1 + e^−1.313262) = −0.238183
    pair 2: ℓ_w = −0.5, ℓ_l = −0.25
        log(1 − e^−0.5) = −0.932752, log(1 − e^−0.25) = −1.508692
        log_odds = (−0.5 + 0.25) − (−0.932752 + 1.508692) = −0.825939
        log σ(−0.825939) = −1.189070
    L = 6 / 3 − 0.1 · (−0.238183 − 1.189070) / 2 = 2 + 0.1 · 0.713627 = 2.071363
    """
    out = orpo_loss(
        torch.tensor([-1.0, -0.5]),
        torch.tensor([-2.0, -0.25]),
        torch.tensor(6.0),
        beta=0.1,
        nll_tokens=3,
        num_pairs=2,
    )
    assert out.loss.item() == pytest.approx(2.071363, abs=1e-6)
    assert out.nll.item() == pytest.approx(2.0)
    assert out.log_odds.tolist() == pytest.approx([1.313262, -0.825939], abs=1e-6)
    assert out.log_odds_ratio.tolist() == pytest.approx([-0.238183, -1.189070], abs=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([-0.1, -0.05])
    assert out.rejected_rewards.tolist() == pytest.approx([-0.2, -0.025])


def test_log1mexp_is_finite_and_accurate_near_zero_and_far_below():
    x = torch.tensor([-1e-7, -1e-4, -0.5, -math.log(2), -1.0, -10.0, -50.0])
    expected = [  # float64 reference, each branch where it is exact
        math.log1p(-math.exp(v)) if v < -0.7 else math.log(-math.expm1(v)) for v in x.tolist()
    ]
    got = log1mexp(x)
    assert got.dtype == torch.float32
    assert torch.isfinite(got).all()
    assert got.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-30)
    assert log1mexp(torch.tensor(-50.0)).item() == pytest.approx(-math.exp(-50.0), rel=1e-3)


def test_beta_zero_gives_the_nll():
    chosen, rejected = torch.tensor([-1.2, -0.3]), torch.tensor([-0.7, -2.0])
    out = orpo_loss(chosen, rejected, torch.tensor(5.0), beta=0.0, nll_tokens=4, num_pairs=2)
    assert out.loss.item() == out.nll.item() == 1.25


def test_certain_responses_give_a_finite_loss_and_gradient():
    """ℓ = 0 (P = 1) makes log(1 − P) infinite without the clamp (trl #1473)."""
    chosen = torch.tensor([0.0, -1e-9], requires_grad=True)
    rejected = torch.tensor([0.0, -3.0], requires_grad=True)
    out = orpo_loss(chosen, rejected, torch.tensor(1.0), beta=1.0, nll_tokens=1, num_pairs=2)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()
    assert log1mexp(torch.tensor(LOGP_MAX)).item() == pytest.approx(math.log(1e-6), rel=1e-3)


def test_loss_is_lower_when_the_chosen_response_is_likelier():
    def loss(chosen: float, rejected: float) -> float:
        return orpo_loss(
            torch.tensor([chosen]),
            torch.tensor([rejected]),
            torch.tensor(0.0),
            beta=0.1,
            nll_tokens=1,
            num_pairs=1,
        ).loss.item()

    assert loss(-1.0, -3.0) < loss(-2.0, -2.0) < loss(-3.0, -1.0)


def test_sequence_logps_are_length_normalised_means_over_the_mask():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    input_ids = torch.tensor([[1, 2, 3, 4, 0], [5, 6, 1, 0, 0]])
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 0, 0]], dtype=torch.bool)
    logps = token_logps(logits, input_ids, mask)  # (2, 4), targets are input_ids[:, 1:]
    full = logits.log_softmax(-1)
    assert logps[0].tolist() == pytest.approx([0, full[0, 1, 3].item(), full[0, 2, 4].item(), 0])
    means = sequence_logps(logps, mask[:, 1:])
    assert means[0].item() == pytest.approx((full[0, 1, 3] + full[0, 2, 4]).item() / 2)
    assert means[1].item() == pytest.approx((full[1, 0, 6] + full[1, 1, 1]).item() / 2)


def test_metrics_use_trl_names_and_weight_the_nll_by_tokens():
    from orpo_pipeline.train.loss import PairLogps

    def sums(chosen, rejected, nll_sum, tokens):
        logps = PairLogps(
            torch.tensor(chosen),
            torch.tensor(rejected),
            torch.tensor(nll_sum),
            torch.tensor(tokens),
            torch.ones(len(chosen)),
            torch.ones(len(chosen)),
        )
        out = orpo_loss(
            logps.chosen,
            logps.rejected,
            logps.nll_sum,
            beta=0.5,
            nll_tokens=tokens,
            num_pairs=len(chosen),
        )
        return metric_sums(logps, out)

    total = sums([-1.0], [-2.0], 2.0, 1) + sums([-3.0, -1.0], [-1.0, -1.5], 30.0, 9)
    metrics = metrics_from_sums(total.tolist(), beta=0.5, prefix="eval_")
    assert metrics["eval_nll_loss"] == pytest.approx(32 / 10)
    assert metrics["eval_rewards/accuracies"] == pytest.approx(2 / 3)
    assert metrics["eval_logps/chosen"] == pytest.approx(-5 / 3)
    assert metrics["eval_rewards/margins"] == pytest.approx(0.5 * (-5 / 3 + 4.5 / 3))
    assert set(metrics) == {
        f"eval_{name}"
        for name in (
            "loss",
            "nll_loss",
            "log_odds_ratio",
            "log_odds_chosen",
            "rewards/chosen",
            "rewards/rejected",
            "rewards/accuracies",
            "rewards/margins",
            "logps/chosen",
            "logps/rejected",
        )
    }
