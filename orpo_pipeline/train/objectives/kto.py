"""KTO (Ethayarajh et al. 2024, arXiv:2402.01306): unpaired desirable/undesirable completions.

Each micro-batch forwards every example twice: its own completion, and the completion of
another example of the batch after its prompt (`data.Feed` with `kl`), whose log-ratios estimate
the reference point z₀ = KL(π‖π_ref), as TRL's `KTOTrainer` does. In `PairLogps` the first is the
"chosen" answer and the mismatched one the "rejected" answer.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from orpo_pipeline.errors import ConfigError
from orpo_pipeline.train.data import DataKind
from orpo_pipeline.train.loss import PairLogps
from orpo_pipeline.train.objective import (
    POLICY_SUMS,
    LossBatch,
    ObjectiveOutput,
    named_sums,
    policy_metrics,
)

if TYPE_CHECKING:
    from orpo_pipeline.train.config import TrainConfig


def kto_losses(
    logratios: torch.Tensor, kl: torch.Tensor, labels: torch.Tensor, *, beta: float
) -> torch.Tensor:
    """Per-example value loss (paper Eq. 7, without the weights); shape (B,).

    desirable    1 − σ(β·(r − z₀))       r = log π(y|x) − log π_ref(y|x), summed over tokens
    undesirable  1 − σ(β·(z₀ − r))       z₀ = the KL estimate, detached
    """
    return 1 - torch.sigmoid(beta * torch.where(labels, logratios - kl, kl - logratios))


@dataclass(frozen=True)
class Kto:
    """TRL's `KTOTrainer` loss (`loss_type="kto"`) and its metrics.

    L = Σ w(y)·loss(y) / examples, with w = `desirable_weight` or `undesirable_weight`. The KL
    estimate is the mean log-ratio of the micro-batch's mismatched completions, clamped at 0; TRL
    also averages it over processes, here each process estimates it from its own micro-batch.
    """

    beta: float
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    needs_reference: ClassVar[bool] = True
    data: ClassVar[DataKind] = "labelled"
    sum_names: ClassVar[tuple[str, ...]] = (
        "losses",
        "examples",
        "kl",
        "kl_batches",
        "chosen_count",
        "chosen_rewards",
        "chosen_logps",
        "rejected_count",
        "rejected_rewards",
        "rejected_logps",
        *POLICY_SUMS,
    )
    metric_names: ClassVar[tuple[str, ...]] = (
        "loss",
        "kl",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
        "chosen_nll",
    )

    @classmethod
    def from_config(cls, config: "TrainConfig") -> "Kto":
        """KTO with the config's β and class weights."""
        if config.beta == 0:
            msg = "objective kto needs beta > 0 (with β = 0 its loss is constant)"
            raise ConfigError(msg)
        return cls(
            beta=config.beta,
            desirable_weight=config.desirable_weight,
            undesirable_weight=config.undesirable_weight,
        )

    def loss(self, logps: PairLogps, batch: LossBatch) -> ObjectiveOutput:
        """The weighted mean value loss of the micro-batch's examples."""
        reference, labels = batch.reference, batch.labels
        assert reference is not None and labels is not None, "kto needs reference and labels"
        logratios = logps.chosen_sums.float() - reference.chosen_sums.float()
        kl_logratios = logps.rejected_sums.float() - reference.rejected_sums.float()
        kl = kl_logratios.detach().mean().clamp(min=0)
        weights = torch.where(labels, self.desirable_weight, self.undesirable_weight)
        losses = weights * kto_losses(logratios, kl, labels, beta=self.beta)
        loss = losses.sum() / batch.num_pairs
        desirable, undesirable = labels.float(), (~labels).float()
        rewards = self.beta * logratios.detach()
        sums = logps.chosen_sums.detach().float()
        tokens = logps.chosen_tokens.float()
        zero = kl.new_zeros(())
        stats = [
            losses.detach().sum(),
            kl.new_full((), float(labels.shape[0])),  # a fill kernel: no host-to-device copy
            kl,
            kl.new_ones(()),
            desirable.sum(),
            (rewards * desirable).sum(),
            (sums * desirable).sum(),
            undesirable.sum(),
            (rewards * undesirable).sum(),
            (sums * undesirable).sum(),
            # POLICY_SUMS: the NLL of the desirable completions; unpaired, so no accuracy or margin
            desirable.sum(),
            (sums * desirable).sum(),
            (tokens * desirable).sum(),
            zero,
            zero,
            zero,
        ]
        return ObjectiveOutput(loss, torch.stack(stats))

    def metrics(self, sums: list[float], *, prefix: str = "") -> dict[str, float]:
        """TRL's KTO metric names (without entropy and mean logits) and `chosen_nll`."""
        total = named_sums(self.sum_names, sums)
        metrics = {
            "loss": total["losses"] / total["examples"],
            "kl": total["kl"] / total["kl_batches"],
        }
        for side in ("chosen", "rejected"):  # TRL leaves out a side with no examples
            if total[f"{side}_count"]:
                metrics[f"rewards/{side}"] = total[f"{side}_rewards"] / total[f"{side}_count"]
                metrics[f"logps/{side}"] = total[f"{side}_logps"] / total[f"{side}_count"]
        if total["chosen_count"] and total["rejected_count"]:
            metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
        if total["chosen_count"]:
            metrics |= policy_metrics(total)
        return {f"{prefix}{name}": value for name, value in metrics.items()}
