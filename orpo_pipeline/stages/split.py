"""Split pairs into train and eval by prompt, so no prompt lands in both."""

from typing import Literal

import polars as pl
from pydantic import Field, model_validator

from orpo_pipeline.exprs import messages_text, normalized, stable_hash
from orpo_pipeline.stages.base import ROW, GlobalStage, StageConfig

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


def _keys(lf: pl.LazyFrame, config: SplitConfig) -> pl.LazyFrame:
    """`_row` and `_group`: a seeded sha256 of the normalised prompt."""
    group = stable_hash(normalized(messages_text("prompt")), salt=f"split:{config.seed}")
    return lf.select(ROW, group.alias("_group"))


def _decide(keys: pl.LazyFrame, config: SplitConfig) -> pl.LazyFrame:
    """`_row` and `_split`; depends on prompt text and seed only, not on row order."""
    if config.eval_fraction is not None:
        cutoff = int(config.eval_fraction * 2**64)
        in_eval = pl.col("_group") < cutoff
        return keys.select(
            ROW, pl.when(in_eval).then(pl.lit("eval")).otherwise(pl.lit("train")).alias(SPLIT)
        )
    sizes = keys.group_by("_group").agg(pl.len().alias("_size")).sort("_group")
    eval_groups = sizes.filter(pl.col("_size").cum_sum() <= config.eval_size).select(
        "_group", pl.lit("eval").alias(SPLIT)
    )
    return keys.join(eval_groups, on="_group", how="left").select(
        ROW, pl.col(SPLIT).fill_null("train")
    )


split = GlobalStage(_keys, _decide)
"""Add `_split`: whole prompt groups go to train or eval."""
