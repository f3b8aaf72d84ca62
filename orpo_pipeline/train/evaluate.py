"""Held-out evaluation (preference accuracy, margin, log-odds, NLL) and sample generations."""

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from orpo_pipeline.train.data import TokenizedPair
from orpo_pipeline.train.loss import SUMS, batch_loss, metric_sums, metrics_from_sums
from orpo_pipeline.train.policy import Collate

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import PreTrainedTokenizerBase


@torch.no_grad()
def evaluate(
    policy: torch.nn.Module,
    pairs: Sequence[TokenizedPair],
    *,
    collate: Collate,
    accelerator: "Accelerator",
    beta: float,
    nll_on_prompt: bool,
    batch_size: int,
) -> dict[str, float]:
    """Metrics of `policy` over all `pairs` (sharded across processes), TRL's names + `eval_`.

    `eval_rewards/accuracies` is the preference accuracy, `eval_rewards/margins` the mean margin,
    `eval_log_odds_chosen` the mean log-odds ratio, `eval_log_odds_ratio` the mean
    log σ(log-odds) and `eval_nll_loss` the token-weighted NLL.
    """
    policy.eval()
    sums = torch.zeros(len(SUMS), device=accelerator.device)
    shard = sorted(  # similar lengths share a batch: less padding, same sums
        pairs[accelerator.process_index :: accelerator.num_processes],
        key=lambda pair: pair.num_tokens,
    )
    for start in range(0, len(shard), batch_size):
        batch = collate(shard[start : start + batch_size]).to(accelerator.device)
        logps = policy(batch, nll_on_prompt=nll_on_prompt)
        out = batch_loss(logps, beta=beta)
        sums += metric_sums(logps, out)
    policy.train()
    return metrics_from_sums(accelerator.reduce(sums).tolist(), beta=beta, prefix="eval_")


@torch.no_grad()
def generate_samples(
    model: Any,
    tokenizer: "PreTrainedTokenizerBase",
    pairs: Sequence[TokenizedPair],
    rows: Sequence[dict[str, Any]],
    *,
    max_new_tokens: int,
) -> list[dict[str, Any]]:
    """Greedy answers to the prompts of `pairs`, next to the chosen answer of each row."""
    model.eval()
    samples = []
    device = next(model.parameters()).device
    for pair, row in zip(pairs, rows, strict=True):
        input_ids = torch.tensor([pair.prompt_ids], device=device)  # (1, T)
        output = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        answer = tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True)
        samples.append(
            {
                "id": row["id"],
                "prompt": row["prompt"],
                "completion": answer,
                "chosen": row["chosen"][-1]["content"],
            }
        )
    model.train()
    return samples
