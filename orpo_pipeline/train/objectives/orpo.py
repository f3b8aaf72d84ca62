"""ORPO (Hong et al. 2024, arXiv:2403.07691): NLL + β·odds-ratio term, no reference model."""

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from orpo_pipeline.train.data import DataKind
from orpo_pipeline.train.loss import SUMS, PairLogps, metric_sums, metrics_from_sums, orpo_loss
from orpo_pipeline.train.objective import (
    POLICY_METRICS,
    POLICY_SUMS,
    LossBatch,
    ObjectiveOutput,
    named_sums,
    policy_metrics,
    policy_sums,
)

if TYPE_CHECKING:
    from orpo_pipeline.train.config import TrainConfig


@dataclass(frozen=True)
class Orpo:
    """TRL's `ORPOTrainer` loss and metrics; the math lives in `loss.orpo_loss`."""

    beta: float

    needs_reference: ClassVar[bool] = False
    data: ClassVar[DataKind] = "pairs"
    sum_names: ClassVar[tuple[str, ...]] = (*SUMS, *POLICY_SUMS)
    metric_names: ClassVar[tuple[str, ...]] = (
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
        *POLICY_METRICS,
    )

    @classmethod
    def from_config(cls, config: "TrainConfig") -> "Orpo":
        """ORPO with the config's β."""
        return cls(beta=config.beta)

    def loss(self, logps: PairLogps, batch: LossBatch) -> ObjectiveOutput:
        """L = NLL + β·L_OR (paper Eq. 6)."""
        out = orpo_loss(
            logps.chosen,
            logps.rejected,
            logps.nll_sum,
            beta=self.beta,
            nll_tokens=batch.nll_tokens,
            num_pairs=batch.num_pairs,
        )
        return ObjectiveOutput(out.loss, torch.cat([metric_sums(logps, out), policy_sums(logps)]))

    def metrics(self, sums: list[float], *, prefix: str = "") -> dict[str, float]:
        """TRL's ORPO metrics and the policy-only ones."""
        own = len(SUMS)
        metrics = metrics_from_sums(sums[:own], beta=self.beta)
        metrics |= policy_metrics(named_sums(POLICY_SUMS, sums[own:]))
        return {f"{prefix}{name}": value for name, value in metrics.items()}
