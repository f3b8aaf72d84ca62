"""Supervised fine-tuning: token-mean NLL of the chosen answers (TRL's `SFTTrainer`)."""

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from orpo_pipeline.train.data import DataKind
from orpo_pipeline.train.loss import PairLogps
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
class Sft:
    """NLL of the chosen answer, over its tokens (and the prompt's with `nll_on_prompt`).

    The default span is the response only, as TRL's `completion_only_loss` for prompt-completion
    data. Rejected answers are never trained on, so training skips their forward pass.
    """

    needs_reference: ClassVar[bool] = False
    data: ClassVar[DataKind] = "completions"
    sum_names: ClassVar[tuple[str, ...]] = ("nll_sum", "nll_tokens", *POLICY_SUMS)
    metric_names: ClassVar[tuple[str, ...]] = ("loss", "nll_loss", *POLICY_METRICS)

    @classmethod
    def from_config(cls, config: "TrainConfig") -> "Sft":
        """SFT has no settings of its own."""
        return cls()

    def loss(self, logps: PairLogps, batch: LossBatch) -> ObjectiveOutput:
        """L = −Σ log p(chosen tokens) / tokens."""
        nll_sum = logps.nll_sum.detach().float()
        sums = torch.cat([torch.stack([nll_sum, logps.nll_tokens.float()]), policy_sums(logps)])
        return ObjectiveOutput(logps.nll_sum / batch.nll_tokens, sums)

    def metrics(self, sums: list[float], *, prefix: str = "") -> dict[str, float]:
        """`loss` (= `nll_loss`, token-weighted) and the policy-only metrics."""
        total = named_sums(self.sum_names, sums)
        nll = total["nll_sum"] / max(total["nll_tokens"], 1.0)
        metrics = {"loss": nll, "nll_loss": nll, **policy_metrics(total)}
        return {f"{prefix}{name}": value for name, value in metrics.items()}
