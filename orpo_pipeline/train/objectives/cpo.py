"""CPO (Xu et al. 2024, arXiv:2401.08417) and SimPO (Meng et al. 2024, arXiv:2405.14734).

Both are reference-free: the reward is β·log π(y|x), summed over tokens for CPO and averaged
(length-normalised) for SimPO, as in TRL's `CPOTrainer` (`loss_type="simpo"` for SimPO).
"""

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

CpoLossType = Literal["sigmoid", "ipo", "hinge", "simpo"]


@dataclass(frozen=True)
class Cpo:
    """L = mean pairwise loss on β·(r_w − r_l) + `cpo_alpha` · NLL of the chosen answers.

    sigmoid  −log σ(β·(r_w − r_l))          r = summed log-prob      (CPO Eq. 3)
    hinge    max(0, 1 − β·(r_w − r_l))      r = summed log-prob
    ipo      (r_w − r_l − 1/(2β))²          r = mean log-prob
    simpo    −log σ(β·(r_w − r_l) − γ)      r = mean log-prob        (SimPO Eq. 6)
    """

    beta: float
    loss_type: CpoLossType = "sigmoid"
    cpo_alpha: float = 1.0
    simpo_gamma: float = 0.5

    needs_reference: ClassVar[bool] = False
    data: ClassVar[DataKind] = "pairs"
    sum_names: ClassVar[tuple[str, ...]] = (*REWARD_SUMS, *POLICY_SUMS)
    metric_names: ClassVar[tuple[str, ...]] = (*REWARD_METRICS, *POLICY_METRICS)

    @classmethod
    def from_config(cls, config: "TrainConfig") -> "Cpo":
        """CPO with the config's β, loss type and NLL weight."""
        if config.beta == 0:
            msg = f"objective {config.objective} needs beta > 0"
            raise ConfigError(msg)
        return cls(beta=config.beta, loss_type=config.loss_type, cpo_alpha=config.cpo_alpha)

    def loss(self, logps: PairLogps, batch: LossBatch) -> ObjectiveOutput:
        """The mean pairwise loss plus the weighted chosen NLL."""
        average = self.loss_type in ("ipo", "simpo")
        chosen = (logps.chosen if average else logps.chosen_sums).float()
        rejected = (logps.rejected if average else logps.rejected_sums).float()
        logits = chosen - rejected
        if self.loss_type == "simpo":
            losses = -F.logsigmoid(self.beta * (logits - self.simpo_gamma / self.beta))
        elif self.loss_type == "sigmoid":
            losses = -F.logsigmoid(self.beta * logits)
        elif self.loss_type == "hinge":
            losses = torch.relu(1 - self.beta * logits)
        else:
            losses = (logits - 1 / (2 * self.beta)) ** 2
        nll = logps.nll_sum / batch.nll_tokens
        loss = losses.sum() / batch.num_pairs + self.cpo_alpha * nll
        chosen_rewards, rejected_rewards = (
            self.beta * chosen.detach(),
            self.beta * rejected.detach(),
        )
        sums = torch.stack(
            [
                losses.detach().sum(),
                chosen_rewards.sum(),
                rejected_rewards.sum(),
                (chosen_rewards > rejected_rewards).float().sum(),
                chosen.detach().sum(),
                rejected.detach().sum(),
                logps.nll_sum.detach().float(),
                logps.nll_tokens.float(),
            ]
        )
        return ObjectiveOutput(loss, torch.cat([sums, policy_sums(logps)]))

    def metrics(self, sums: list[float], *, prefix: str = "") -> dict[str, float]:
        """TRL's CPO metric names (without the mean logits)."""
        total = named_sums(self.sum_names, sums)
        pairs = total["policy_pairs"]
        nll = total["nll_sum"] / max(total["nll_tokens"], 1.0)
        chosen, rejected = total["chosen_rewards"] / pairs, total["rejected_rewards"] / pairs
        metrics = {
            "loss": total["losses"] / pairs + self.cpo_alpha * nll,
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


@dataclass(frozen=True)
class Simpo(Cpo):
    """SimPO: CPO's `simpo` loss; `cpo_alpha` weights an optional NLL term (0 in the paper)."""

    loss_type: CpoLossType = "simpo"

    @classmethod
    def from_config(cls, config: "TrainConfig") -> "Simpo":
        """SimPO with the config's β, γ and NLL weight."""
        if config.beta == 0:
            msg = "objective simpo needs beta > 0 (its margin term is γ/β)"
            raise ConfigError(msg)
        return cls(beta=config.beta, cpo_alpha=config.cpo_alpha, simpo_gamma=config.simpo_gamma)
