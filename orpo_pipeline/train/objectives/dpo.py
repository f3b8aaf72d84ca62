"""DPO (Rafailov et al. 2023, arXiv:2305.18290) with IPO and hinge losses and the RPO NLL term."""

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
import torch.nn.functional as F

from orpo_pipeline.errors import ConfigError
from orpo_pipeline.train.data import DataKind
from orpo_pipeline.train.loss import PairLogps
from orpo_pipeline.train.objective import (
    POLICY_METRICS,
    POLICY_SUMS,
    REWARD_METRICS,
    REWARD_SUMS,
    LossBatch,
    ObjectiveOutput,
    named_sums,
    policy_metrics,
    policy_sums,
)

if TYPE_CHECKING:
    from orpo_pipeline.train.config import TrainConfig

DpoLossType = Literal["sigmoid", "ipo", "hinge"]


def dpo_losses(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    *,
    beta: float,
    loss_type: DpoLossType,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
) -> torch.Tensor:
    """Per-pair losses from log π/π_ref of each answer (summed over its tokens); shape (B,).

        sigmoid  −log σ(β·Δ)                    Δ = log-ratio_w − log-ratio_l (DPO Eq. 7)
        hinge    max(0, 1 − β·Δ)                (SLiC, Zhao et al. 2023)
        ipo      (Δ̄ − 1/(2β))²                  Δ̄ with per-token log-ratios (IPO Eq. 17)

    IPO's log-ratios are divided by each answer's token count, as TRL does after confirming it
    with the IPO authors.
    """
    delta = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * delta)
    if loss_type == "hinge":
        return torch.relu(1 - beta * delta)
    mean_delta = chosen_logratios / chosen_tokens.clamp(min=1) - rejected_logratios / (
        rejected_tokens.clamp(min=1)
    )
    return (mean_delta - 1 / (2 * beta)) ** 2


@dataclass(frozen=True)
class Dpo:
    """TRL's `DPOTrainer` loss and reward metrics (summed log-probs, reverse-KL divergence)."""

    beta: float
    loss_type: DpoLossType = "sigmoid"
    rpo_alpha: float | None = None

    needs_reference: ClassVar[bool] = True
    data: ClassVar[DataKind] = "pairs"
    sum_names: ClassVar[tuple[str, ...]] = (*REWARD_SUMS, *POLICY_SUMS)
    metric_names: ClassVar[tuple[str, ...]] = (*REWARD_METRICS, *POLICY_METRICS)

    @classmethod
    def from_config(cls, config: "TrainConfig") -> "Dpo":
        """DPO with the config's β, loss type and RPO weight."""
        if config.loss_type == "ipo" and config.beta == 0:
            msg = "objective dpo with loss_type ipo needs beta > 0 (the target margin is 1/(2β))"
            raise ConfigError(msg)
        return cls(beta=config.beta, loss_type=config.loss_type, rpo_alpha=config.rpo_alpha)

    def loss(self, logps: PairLogps, batch: LossBatch) -> ObjectiveOutput:
        """Mean per-pair loss, plus `rpo_alpha` × the chosen NLL."""
        reference = batch.reference
        assert reference is not None, "dpo needs the reference log-probs"
        chosen_logratios = logps.chosen_sums.float() - reference.chosen_sums.float()
        rejected_logratios = logps.rejected_sums.float() - reference.rejected_sums.float()
        losses = dpo_losses(
            chosen_logratios,
            rejected_logratios,
            beta=self.beta,
            loss_type=self.loss_type,
            chosen_tokens=logps.chosen_tokens,
            rejected_tokens=logps.rejected_tokens,
        )
        loss = losses.sum() / batch.num_pairs
        if self.rpo_alpha is not None:
            loss = loss + self.rpo_alpha * logps.nll_sum / batch.nll_tokens
        chosen_rewards = self.beta * chosen_logratios.detach()
        rejected_rewards = self.beta * rejected_logratios.detach()
        sums = torch.stack(
            [
                losses.detach().sum(),
                chosen_rewards.sum(),
                rejected_rewards.sum(),
                (chosen_rewards > rejected_rewards).float().sum(),
                logps.chosen_sums.detach().float().sum(),
                logps.rejected_sums.detach().float().sum(),
                logps.nll_sum.detach().float(),
                logps.nll_tokens.float(),
            ]
        )
        return ObjectiveOutput(loss, torch.cat([sums, policy_sums(logps)]))

    def metrics(self, sums: list[float], *, prefix: str = "") -> dict[str, float]:
        """TRL's DPO metric names (without entropy, token accuracy and mean logits)."""
        total = named_sums(self.sum_names, sums)
        pairs = total["policy_pairs"]
        nll = total["nll_sum"] / max(total["nll_tokens"], 1.0)
        chosen, rejected = total["chosen_rewards"] / pairs, total["rejected_rewards"] / pairs
        metrics = {
            "loss": total["losses"] / pairs + (self.rpo_alpha or 0.0) * nll,
            "rewards/chosen": chosen,
            "rewards/rejected": rejected,
            "rewards/accuracies": total["reward_wins"] / pairs,
            "rewards/margins": chosen - rejected,
            "logps/chosen": total["chosen_logps"] / pairs,
            "logps/rejected": total["rejected_logps"] / pairs,
            "nll_loss": nll,
            **policy_metrics(total),
        }
        return {f"{prefix}{name}": value for name, value in metrics.items()}
