"""Token counts of texts with a Hugging Face tokenizer, for filters and the data card."""

from collections.abc import Callable
from typing import TYPE_CHECKING

import polars as pl

from orpo_pipeline.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def counting_tokenizer(name: str) -> "PreTrainedTokenizerBase":
    """The tokenizer of a model name or checkpoint path, for counting tokens (no chat template)."""
    from transformers import AutoTokenizer

    from orpo_pipeline.models import resolve_model

    try:
        return AutoTokenizer.from_pretrained(resolve_model(name))
    except OSError as error:
        msg = f"filter: cannot load tokenizer {name!r} ({error}); give a local checkpoint path"
        raise ConfigError(msg) from error


def token_counter(tokenizer: "PreTrainedTokenizerBase") -> Callable[[pl.Expr], pl.Expr]:
    """Text expression -> its token count (UInt32): message text only, no special tokens."""

    def count(texts: pl.Series) -> pl.Series:
        if texts.is_empty():  # the tokenizer cannot take an empty batch
            return pl.Series(texts.name, [], dtype=pl.UInt32)
        encoded = tokenizer(
            texts.fill_null("").to_list(),
            add_special_tokens=False,
            return_length=True,
            return_attention_mask=False,
        )
        return pl.Series(texts.name, encoded["length"], dtype=pl.UInt32)

    return lambda text: text.map_batches(count, return_dtype=pl.UInt32, is_elementwise=True)
