"""Exact dedupe on normalised text, keeping the first row in source order."""

from typing import Literal

import polars as pl

from orpo_pipeline.exprs import messages_text, normalized
from orpo_pipeline.stages.base import REASON, ROW, GlobalStage, StageConfig, tag_rejects

KEY_COLUMNS = {"pair": ("prompt", "chosen", "rejected"), "prompt": ("prompt",)}


class DedupeConfig(StageConfig):
    """Reject every later copy of a pair (or of a prompt) as `duplicate`."""

    stage: Literal["dedupe"] = "dedupe"
    scope: Literal["pair", "prompt"] = "pair"
    """Compare whole pairs, or prompts only (one pair per prompt)."""
    casefold: bool = False
    """Ignore case when comparing (NFKC and whitespace are always normalised)."""


def _keys(lf: pl.LazyFrame, config: DedupeConfig) -> pl.LazyFrame:
    """`_row` and `_key`: a 64-bit hash of the row's normalised texts.

    The key lives in memory only (never stored): grouping by it is four times faster than by the
    texts, and two different rows share one with probability ~ rows**2 / 2**65 (3e-8 for a
    million rows, 3e-6 for ten million).
    """
    hashes = [
        normalized(messages_text(column), casefold=config.casefold).hash().alias(column)
        for column in KEY_COLUMNS[config.scope]
    ]
    return lf.select(ROW, pl.struct(hashes).hash().alias("_key"))


def _decide(keys: pl.LazyFrame, config: DedupeConfig) -> pl.LazyFrame:
    """Tag all but the first row (least `_row`) of each key; independent of row order."""
    first_seen = pl.col(ROW) == pl.col(ROW).min().over("_key")
    return tag_rejects(keys, {"duplicate": first_seen}).select(ROW, REASON)


dedupe = GlobalStage(_keys, _decide)
"""Tag all but the first row (by `_row`) of each group of equal normalised text."""
