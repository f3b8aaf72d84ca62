"""Split pairs into train and eval by prompt, so no prompt lands in both."""

from typing import Literal

import polars as pl
from pydantic import Field, model_validator

from orpo_pipeline.exprs import messages_text, normalized, stable_hash
from orpo_pipeline.stages.base import StageConfig

SPLIT = "_split"
"""Column holding "train" or "eval" after the split stage."""


class SplitConfig(StageConfig):
    """Assign each prompt group to train or eval by a seeded content hash."""

    stage: Literal["split"] = "split"
    eval_size: int | None = Field(default=None, ge=1)
    """Pairs to hold out (whole prompt groups are taken until the next would overshoot)."""
    eval_fraction: float | None = Field(default=None, gt=0, lt=1)
    """Fraction of prompt groups to hold out (set this or `eval_size`)."""
    seed: int = 0
    """Changes which prompts are held out."""

    @model_validator(mode="after")
    def _one_size(self) -> "SplitConfig":
        if (self.eval_size is None) == (self.eval_fraction is None):
            msg = "set exactly one of eval_size and eval_fraction"
            raise ValueError(msg)
        return self


def split(lf: pl.LazyFrame, config: SplitConfig) -> pl.LazyFrame:
    """Add `_split`; the assignment depends on prompt text and seed only, not on row order."""
    group = stable_hash(normalized(messages_text("prompt")), salt=f"split:{config.seed}")
    lf = lf.with_columns(group.alias("_group"))
    if config.eval_fraction is not None:
        cutoff = int(config.eval_fraction * 2**64)
        return lf.with_columns(
            pl.when(pl.col("_group") < cutoff)
            .then(pl.lit("eval"))
            .otherwise(pl.lit("train"))
            .alias(SPLIT)
        ).drop("_group")
    sizes = lf.group_by("_group").agg(pl.len().alias("_size")).sort("_group")
    eval_groups = sizes.filter(pl.col("_size").cum_sum() <= config.eval_size).select(
        "_group", pl.lit("eval").alias(SPLIT)
    )
    return (
        lf.join(eval_groups, on="_group", how="left", maintain_order="left")
        .with_columns(pl.col(SPLIT).fill_null("train"))
        .drop("_group")
    )
