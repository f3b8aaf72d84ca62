"""Held-out evaluation (any objective's metrics plus policy-only ones) and sample generations."""

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from orpo_pipeline.train.data import Feed, TokenizedPair
from orpo_pipeline.train.objective import LossBatch
from orpo_pipeline.train.policy import Collate

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import PreTrainedTokenizerBase

    from orpo_pipeline.train.objective import Objective
    from orpo_pipeline.train.reference import Reference


def eval_batches(
    sizes: Sequence[int], *, batch_size: int, rank: int, world: int
) -> list[list[int]]:
    """Process `rank`'s evaluation batches: its shard of the examples, by length (less padding)."""
    shard = sorted(range(rank, len(sizes), world), key=lambda i: sizes[i])
    return [shard[start : start + batch_size] for start in range(0, len(shard), batch_size)]


@torch.no_grad()
def evaluate(
    policy: torch.nn.Module,
    feed: Feed,
    *,
    collate: Collate,
    accelerator: "Accelerator",
    objective: "Objective",
    reference: "Reference | None",
    nll_on_prompt: bool,
    batch_size: int,
) -> dict[str, float]:
    """The objective's metrics over all of `feed` (sharded across processes), prefixed `eval_`.

    Besides the objective's own (TRL's names: `eval_rewards/accuracies`, `eval_nll_loss`, ...),
    every objective reports `eval_chosen_nll`, `eval_logp_accuracy` and `eval_logp_margin`,
    which depend on the policy alone and so compare objectives on equal terms.
    """
    policy.eval()
    sums = torch.zeros(len(objective.sum_names), device=accelerator.device)
    for indices in eval_batches(
        feed.sizes,
        batch_size=batch_size,
        rank=accelerator.process_index,
        world=accelerator.num_processes,
    ):
        pairs, keys = feed.arrange(indices)
        batch = collate(pairs).to(accelerator.device)
        labels = feed.label_tensor(indices)
        labels = labels.to(accelerator.device) if labels is not None else None
        logps = policy(batch, nll_on_prompt=nll_on_prompt)
        ref = reference(batch, keys, "eval") if objective.needs_reference else None
        sums += objective.loss(logps, LossBatch.alone(logps, ref, labels)).sums
    policy.train()
    return objective.metrics(accelerator.reduce(sums).tolist(), prefix="eval_")


@torch.no_grad()
def generate_samples(
    model: Any,
    tokenizer: "PreTrainedTokenizerBase",
    pairs: Sequence[TokenizedPair],
    rows: Sequence[dict[str, Any]],
    *,
    max_new_tokens: int,
) -> list[dict[str, Any]]:
    """Greedy answers to the prompts of `pairs`, next to the chosen answer (or the completion)
    of each row."""
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
                "chosen": row["chosen" if "chosen" in row else "completion"][-1]["content"],
            }
        )
    model.train()
    return samples
