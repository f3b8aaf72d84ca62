"""The ORPO loss as pure tensor math (Hong et al. 2024, arXiv:2403.07691, §4).

Shapes: B pairs, T tokens, V vocabulary; batch rows are the B chosen rows, then the B rejected.
"""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from orpo_pipeline.train.data import PreferenceBatch

LOGP_MAX = -1e-6
"""ℓ is clamped to this before log(1 − e^ℓ): ℓ = 0 would make the odds infinite (trl #1473)."""


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − eˣ) for x < 0, in fp32.

    Branch at −ln 2 to avoid cancellation: `log1p(−eˣ)` is exact for very negative x and
    `log(−expm1(x))` near 0⁻ (Mächler 2012; TRL PR #4763).
    """
    x = x.float()
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log p(token t | tokens < t) in fp32 where `mask[:, t]`, 0 elsewhere; shape (2B, T − 1).

    Only the masked positions go through the fp32 log-softmax, so padding costs nothing here.
    """
    targets, keep = input_ids[:, 1:], mask[:, 1:]  # (2B, T-1)
    picked = logits[:, :-1][keep].float()  # (N, V)
    logps = picked.gather(-1, targets[keep].unsqueeze(-1)).squeeze(-1) - picked.logsumexp(-1)
    out = torch.zeros(targets.shape, dtype=torch.float32, device=logits.device)
    out[keep] = logps
    return out


def sequence_logps(logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean log-prob over the masked tokens of each row: ℓ = log P(y|x) of paper Eq. 3; (rows,).

    Length-normalised as in TRL (`average_log_prob=True`) and the paper; a summed log-prob would
    change the method.
    """
    return (logps * mask).sum(-1) / mask.sum(-1).clamp(min=1)


class PairLogps(NamedTuple):
    """What the loss needs from one forward pass."""

    chosen: torch.Tensor  # (B,) ℓ_w, mean log-prob of the chosen response
    rejected: torch.Tensor  # (B,) ℓ_l
    nll_sum: torch.Tensor  # () summed NLL of the chosen rows
    nll_tokens: torch.Tensor  # () tokens in nll_sum
    chosen_tokens: torch.Tensor  # (B,) tokens of each chosen response
    rejected_tokens: torch.Tensor  # (B,) tokens of each rejected response

    @property
    def chosen_sums(self) -> torch.Tensor:
        """(B,) summed log-prob of each chosen response, log π(y_w|x) as DPO uses it."""
        return self.chosen * self.chosen_tokens

    @property
    def rejected_sums(self) -> torch.Tensor:
        """(B,) summed log-prob of each rejected response."""
        return self.rejected * self.rejected_tokens


def pair_logps(logits: torch.Tensor, batch: PreferenceBatch, *, nll_on_prompt: bool) -> PairLogps:
    """Response log-probs of both sides and the chosen NLL from logits of shape (2B, T, V).

    Position 0 is never predicted, so every mask is read from position 1 on.
    """
    num_pairs = batch.num_pairs
    in_nll = batch.nll_mask(nll_on_prompt=nll_on_prompt)
    logps = token_logps(logits, batch.input_ids, in_nll | batch.completion_mask)  # (2B, T-1)
    means = sequence_logps(logps, batch.completion_mask[:, 1:])  # (2B,)
    counts = batch.completion_mask[:, 1:].sum(-1)  # (2B,)
    scored = in_nll[:, 1:]
    return PairLogps(
        means[:num_pairs],
        means[num_pairs:],
        -(logps * scored).sum(),
        scored.sum(),
        counts[:num_pairs],
        counts[num_pairs:],
    )


class OrpoLossOutput(NamedTuple):
    """The loss and its parts; per-pair tensors have shape (B,)."""

    loss: torch.Tensor  # ()
    nll: torch.Tensor  # ()
    log_odds_ratio: torch.Tensor  # (B,) log σ(log_odds), the term weighted by β
    log_odds: torch.Tensor  # (B,) log(odds(y_w|x) / odds(y_l|x))
    chosen_rewards: torch.Tensor  # (B,) β·ℓ_w, detached
    rejected_rewards: torch.Tensor  # (B,) β·ℓ_l, detached


def orpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    nll_sum: torch.Tensor,
    *,
    beta: float,
    nll_tokens: torch.Tensor | float,
    num_pairs: torch.Tensor | float,
) -> OrpoLossOutput:
    """L = NLL + β·L_OR (paper Eq. 6) from mean response log-probs ℓ_w, ℓ_l.

        odds(y|x) = P / (1 − P), P = e^ℓ                               (Eq. 4)
        log_odds  = (ℓ_w − ℓ_l) − (log(1 − e^ℓ_w) − log(1 − e^ℓ_l))   (log of Eq. 5)
        L_OR      = −log σ(log_odds)                                   (Eq. 7)
        L         = nll_sum / nll_tokens − β · Σ log σ(log_odds) / num_pairs

    With `nll_tokens` = tokens in `nll_sum` and `num_pairs` = B this is TRL's loss. Under gradient
    accumulation over K micro-batches, pass the window's totals divided by K: the summed gradients
    are then those of one big batch, weighted by tokens (NLL) and by pairs (odds ratio).
    ℓ is clamped to `LOGP_MAX` inside the log-odds so no input yields inf or NaN.
    """
    chosen, rejected = chosen_logps.float(), rejected_logps.float()
    safe_chosen, safe_rejected = chosen.clamp(max=LOGP_MAX), rejected.clamp(max=LOGP_MAX)
    log_odds = (safe_chosen - safe_rejected) - (log1mexp(safe_chosen) - log1mexp(safe_rejected))
    log_odds_ratio = F.logsigmoid(log_odds)
    nll = nll_sum / nll_tokens
    loss = nll - beta * log_odds_ratio.sum() / num_pairs
    return OrpoLossOutput(
        loss,
        nll,
        log_odds_ratio,
        log_odds,
        beta * chosen.detach(),
        beta * rejected.detach(),
    )


SUMS = (
    "nll_sum",
    "nll_tokens",
    "pairs",
    "log_odds_ratio",
    "log_odds",
    "chosen",
    "rejected",
    "wins",
)
"""Order of the entries of `metric_sums`."""


def batch_loss(logps: PairLogps, *, beta: float) -> OrpoLossOutput:
    """TRL's loss of one batch alone: the NLL over its tokens, the odds ratio over its pairs."""
    return orpo_loss(
        logps.chosen,
        logps.rejected,
        logps.nll_sum,
        beta=beta,
        nll_tokens=logps.nll_tokens,
        num_pairs=logps.chosen.shape[0],
    )


def metric_sums(logps: PairLogps, out: OrpoLossOutput) -> torch.Tensor:
    """Additive statistics of one batch, shape (len(SUMS),); summed over batches and ranks."""
    wins = (out.chosen_rewards > out.rejected_rewards).float()
    return torch.stack(
        [
            logps.nll_sum.detach().float(),
            logps.nll_tokens.float(),
            torch.tensor(float(len(wins)), device=wins.device),
            out.log_odds_ratio.detach().sum(),
            out.log_odds.detach().sum(),
            logps.chosen.detach().float().sum(),
            logps.rejected.detach().float().sum(),
            wins.sum(),
        ]
    )


def metrics_from_sums(sums: list[float], *, beta: float, prefix: str = "") -> dict[str, float]:
    """TRL's metric names and meanings from summed statistics (NLL token-weighted)."""
    total = dict(zip(SUMS, sums, strict=True))
    pairs = total["pairs"]
    nll = total["nll_sum"] / max(total["nll_tokens"], 1.0)
    chosen, rejected = total["chosen"] / pairs, total["rejected"] / pairs
    metrics = {
        "loss": nll - beta * total["log_odds_ratio"] / pairs,
        "nll_loss": nll,
        "log_odds_ratio": total["log_odds_ratio"] / pairs,
        "log_odds_chosen": total["log_odds"] / pairs,
        "rewards/chosen": beta * chosen,
        "rewards/rejected": beta * rejected,
        "rewards/accuracies": total["wins"] / pairs,
        "rewards/margins": beta * (chosen - rejected),
        "logps/chosen": chosen,
        "logps/rejected": rejected,
    }
    return {f"{prefix}{name}": value for name, value in metrics.items()}
