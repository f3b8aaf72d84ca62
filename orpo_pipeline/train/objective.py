"""The `Objective` interface every training objective implements, and the policy-only metrics.

An objective turns the policy's `PairLogps` (and the reference's, when it needs one) into a loss
and a vector of additive statistics; summed over micro-batches and processes, the statistics give
the logged metrics. The trainer knows nothing else about it.
"""

from typing import ClassVar, NamedTuple, Protocol

import torch

from orpo_pipeline.train.data import DataKind
from orpo_pipeline.train.loss import PairLogps

POLICY_SUMS = (
    "policy_pairs",
    "policy_chosen_logp",
    "policy_chosen_tokens",
    "policy_rejected_tokens",
    "policy_wins",
    "policy_margin",
)
"""Statistics every objective appends: the same held-out quality measures for every arm."""
REWARD_SUMS = (
    "losses",
    "chosen_rewards",
    "rejected_rewards",
    "reward_wins",
    "chosen_logps",
    "rejected_logps",
    "nll_sum",
    "nll_tokens",
)
"""Statistics of the implicit-reward objectives (DPO and CPO/SimPO), summed over micro-batches."""
REWARD_METRICS = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "nll_loss",
)
"""TRL's DPOTrainer/CPOTrainer metric names that those statistics give."""
POLICY_METRICS = ("chosen_nll", "logp_accuracy", "logp_margin")
"""Objective-independent metrics: per-token NLL of the chosen response, fraction of pairs whose
chosen response has the higher mean log-prob, and the mean of ℓ_w − ℓ_l."""


class LossBatch(NamedTuple):
    """What a loss needs besides the policy's log-probs.

    Under gradient accumulation over K micro-batches on W processes, `nll_tokens` and `num_pairs`
    are the window's totals divided by K·W, so the summed gradients equal one big batch's.
    """

    nll_tokens: torch.Tensor | float  # normaliser of token-mean NLL terms
    num_pairs: torch.Tensor | float  # normaliser of per-pair means
    reference: PairLogps | None = None  # the reference model's log-probs of the same pairs
    labels: torch.Tensor | None = None  # (B,) bool, desirable examples (labelled data only)

    @classmethod
    def alone(
        cls,
        logps: PairLogps,
        reference: PairLogps | None = None,
        labels: torch.Tensor | None = None,
    ) -> "LossBatch":
        """The normalisers of one batch on its own: TRL's loss of that batch."""
        return cls(logps.nll_tokens, logps.chosen.shape[0], reference, labels)


class ObjectiveOutput(NamedTuple):
    """A loss and its additive statistics, in the order of the objective's `sum_names`."""

    loss: torch.Tensor  # ()
    sums: torch.Tensor  # (len(sum_names),) detached


class Objective(Protocol):
    """A training objective: pure tensor math from log-probs to a loss and its metrics."""

    needs_reference: ClassVar[bool]
    """Whether `loss` reads `batch.reference` (a reference model's log-probs)."""
    data: ClassVar[DataKind]
    """What it trains on: pairs; completions (training never forwards a rejected answer); or
    labelled completions, each micro-batch with its KL completions (`data.Feed`)."""
    sum_names: ClassVar[tuple[str, ...]]
    """Names of the entries of `ObjectiveOutput.sums`."""
    metric_names: ClassVar[tuple[str, ...]]
    """Names of the metrics `metrics` returns (TRL's, then `POLICY_METRICS`)."""

    def loss(self, logps: PairLogps, batch: LossBatch) -> ObjectiveOutput:
        """The loss of one micro-batch and its statistics."""
        ...

    def metrics(self, sums: list[float], *, prefix: str = "") -> dict[str, float]:
        """Metrics from statistics summed over batches and processes."""
        ...


def policy_sums(logps: PairLogps) -> torch.Tensor:
    """The `POLICY_SUMS` statistics of one batch, shape (len(POLICY_SUMS),)."""
    chosen, rejected = logps.chosen.detach().float(), logps.rejected.detach().float()
    return torch.stack(
        [
            chosen.new_full((), float(chosen.shape[0])),  # a fill kernel: no host-to-device copy
            (chosen * logps.chosen_tokens).sum(),
            logps.chosen_tokens.sum().float(),
            logps.rejected_tokens.sum().float(),
            (chosen > rejected).float().sum(),
            (chosen - rejected).sum(),
        ]
    )


def policy_metrics(total: dict[str, float]) -> dict[str, float]:
    """`POLICY_METRICS` from summed statistics; accuracy and margin need rejected answers."""
    metrics = {"chosen_nll": -total["policy_chosen_logp"] / max(total["policy_chosen_tokens"], 1)}
    if total["policy_rejected_tokens"]:  # sft trains on chosen answers only
        metrics["logp_accuracy"] = total["policy_wins"] / total["policy_pairs"]
        metrics["logp_margin"] = total["policy_margin"] / total["policy_pairs"]
    return metrics


def named_sums(names: tuple[str, ...], sums: list[float]) -> dict[str, float]:
    """`sums` keyed by `names`."""
    return dict(zip(names, sums, strict=True))
