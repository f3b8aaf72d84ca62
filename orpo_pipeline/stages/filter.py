"""Row filters that tag rejected pairs with a reason."""

from typing import Literal

import polars as pl
from pydantic import Field

from orpo_pipeline.exprs import answer_text, any_blank_message, messages_text, normalized
from orpo_pipeline.stages.base import StageConfig, tag_rejects


class FilterConfig(StageConfig):
    """Drop pairs that cannot teach a preference, each with its own reason."""

    stage: Literal["filter"] = "filter"
    drop_blank: bool = True
    """Reject pairs with an empty or whitespace-only message (`blank_message`)."""
    drop_identical: bool = True
    """Reject pairs whose answers are equal after normalisation (`chosen_equals_rejected`)."""
    casefold: bool = False
    """Ignore case when comparing answers."""
    min_response_chars: int = Field(default=0, ge=0)
    """Reject pairs with an answer shorter than this (`response_too_short`)."""
    max_response_chars: int | None = Field(default=None, ge=1)
    """Reject pairs with an answer longer than this (`response_too_long`)."""
    max_prompt_chars: int | None = Field(default=None, ge=1)
    """Reject pairs whose prompt text is longer than this (`prompt_too_long`)."""
    min_score_margin: float | None = None
    """Reject pairs with score_chosen - score_rejected below this (`score_margin_below_min`)."""


def filter_rows(lf: pl.LazyFrame, config: FilterConfig) -> pl.LazyFrame:
    """Tag the first failing rule of each row in `_reason`."""
    chosen_chars = answer_text("chosen").str.len_chars()
    rejected_chars = answer_text("rejected").str.len_chars()
    rules: dict[str, pl.Expr] = {}
    if config.drop_blank:
        rules["blank_message"] = ~pl.any_horizontal(
            any_blank_message(c) for c in ("prompt", "chosen", "rejected")
        )
    if config.drop_identical:
        rules["chosen_equals_rejected"] = normalized(
            answer_text("chosen"), casefold=config.casefold
        ) != normalized(answer_text("rejected"), casefold=config.casefold)
    if config.min_response_chars:
        rules["response_too_short"] = pl.min_horizontal(chosen_chars, rejected_chars) >= (
            config.min_response_chars
        )
    if config.max_response_chars is not None:
        rules["response_too_long"] = pl.max_horizontal(chosen_chars, rejected_chars) <= (
            config.max_response_chars
        )
    if config.max_prompt_chars is not None:
        rules["prompt_too_long"] = messages_text("prompt").str.len_chars() <= config.max_prompt_chars
    if config.min_score_margin is not None:
        margin = pl.col("score_chosen") - pl.col("score_rejected")
        rules["score_margin_below_min"] = margin >= config.min_score_margin
    return tag_rejects(lf, rules)
