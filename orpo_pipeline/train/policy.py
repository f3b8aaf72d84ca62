"""The two forward paths from tokenized pairs to `PairLogps`: the same numbers, different cost."""

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Literal

import torch
from torch import nn

from orpo_pipeline.errors import ConfigError
from orpo_pipeline.train.data import PreferenceBatch, PreferenceCollator, TokenizedPair
from orpo_pipeline.train.loss import PairLogps, pair_logps
from orpo_pipeline.train.packing import PackedPolicy, pack_pairs

MASKED_ATTENTION = {"sdpa", "eager", "flex_attention"}
"""Attention implementations that apply our block mask exactly: the first two as a 4-D additive
mask (orpo-reference §5.1b), FlexAttention as a `BlockMask`."""

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
    model: nn.Module,
    *,
    share_prompt: bool,
    pad_token_id: int,
    gradient_checkpointing: bool = False,
    attention: str = "auto",
    bucket_tokens: int | Literal["auto"] | None = "auto",
    compile_blocks: bool = False,
    device_type: str = "cpu",
) -> tuple[nn.Module, Collate]:
    """The policy wrapping `model` and the collate function that feeds it.

    With `share_prompt`, each pair is one `[prompt | chosen | rejected]` row under a block mask and
    only scored positions reach the LM head (`packing.PackedPolicy`); otherwise TRL's layout.
    With `gradient_checkpointing`, each decoder layer is recomputed in the backward pass.
    On `device_type` "cuda", "auto" means FlexAttention and widths in multiples of 128 tokens
    (`packing.bucket_shape`); elsewhere the model's own attention and tight packing.
    `compile_blocks` compiles each decoder layer with `torch.compile` (one graph shared by all).
    """
    on_cuda = device_type == "cuda"
    if attention == "auto":
        attention = "flex_attention" if on_cuda and share_prompt else None
    if bucket_tokens == "auto":
        bucket_tokens = 128 if on_cuda else None
    if attention == "flex_attention" and not on_cuda:
        msg = (
            f"attention: flex_attention trains on CUDA only (torch {torch.__version__} has no "
            f"FlexAttention backward pass on {device_type}); use sdpa or auto"
        )
        raise ConfigError(msg)
    if attention is not None and attention != model.config._attn_implementation:
        model.set_attn_implementation(attention)
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
    if compile_blocks:
        _compile_decoder_layers(model)
    if not share_prompt:
        return PaddedPolicy(model), PreferenceCollator(pad_token_id, bucket_tokens=bucket_tokens)
    attention = model.config._attn_implementation
    if attention not in MASKED_ATTENTION:
        msg = (
            f"share_prompt needs an attention implementation that applies block masks "
            f"({sorted(MASKED_ATTENTION)}); the model uses {attention!r}. Set share_prompt: false"
        )
        raise ConfigError(msg)
    collate = partial(
        pack_pairs, max_row_tokens=None, pad_token_id=pad_token_id, bucket_tokens=bucket_tokens
    )
    return PackedPolicy(model), collate


def _compile_decoder_layers(model: nn.Module) -> None:
    """`torch.compile` every decoder layer in place (regional compilation: the layers share one
    graph, so compile time does not grow with depth, and state-dict keys do not change)."""
    layers = getattr(model.get_decoder(), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        msg = f"compile needs a decoder with a `layers` list; {type(model).__name__} has none"
        raise ConfigError(msg)
    for layer in layers:
        layer.compile()
