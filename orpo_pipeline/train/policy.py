"""The two forward paths from tokenized pairs to `PairLogps`: the same numbers, different cost."""

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from torch import nn

from orpo_pipeline.errors import ConfigError
from orpo_pipeline.train.data import PreferenceBatch, PreferenceCollator, TokenizedPair
from orpo_pipeline.train.loss import PairLogps, pair_logps
from orpo_pipeline.train.packing import PackedPolicy, pack_pairs

MASKED_ATTENTION = {"sdpa", "eager"}
"""Attention implementations that apply a custom 4-D mask exactly (orpo-reference §5.1b)."""

Collate = Callable[[Sequence[TokenizedPair]], Any]


class PaddedPolicy(nn.Module):
    """TRL's layout: chosen rows, then rejected rows, one forward with full (2B, T, V) logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: PreferenceBatch, *, nll_on_prompt: bool) -> PairLogps:
        """Mean response log-probs of both answers and the chosen NLL sum, in fp32."""
        logits = self.model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
        ).logits
        return pair_logps(logits, batch, nll_on_prompt=nll_on_prompt)


def build_policy(
    model: nn.Module, *, share_prompt: bool, pad_token_id: int, gradient_checkpointing: bool = False
) -> tuple[nn.Module, Collate]:
    """The policy wrapping `model` and the collate function that feeds it.

    With `share_prompt`, each pair is one `[prompt | chosen | rejected]` row under a block mask and
    only scored positions reach the LM head (`packing.PackedPolicy`); otherwise TRL's layout.
    With `gradient_checkpointing`, each decoder layer is recomputed in the backward pass.
    """
    if gradient_checkpointing:
        # Non-reentrant: works with frozen inputs (LoRA) and keyword arguments (the 4-D mask).
        # transformers < 5.23 has the same switch under its older name.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
        else:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
    if not share_prompt:
        return PaddedPolicy(model), PreferenceCollator(pad_token_id)
    attention = model.config._attn_implementation
    if attention not in MASKED_ATTENTION:
        msg = (
            f"share_prompt needs an attention implementation that applies 4-D masks "
            f"({sorted(MASKED_ATTENTION)}); the model uses {attention!r}. Set share_prompt: false"
        )
        raise ConfigError(msg)
    return PackedPolicy(model), partial(pack_pairs, max_row_tokens=None, pad_token_id=pad_token_id)
