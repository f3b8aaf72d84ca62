"""Exact dedupe on normalised text, keeping the first row in source order."""

from typing import Literal

import polars as pl

from orpo_pipeline.exprs import messages_text, normalized
from orpo_pipeline.stages.base import ROW, StageConfig, tag_rejects

KEY_COLUMNS = {"pair": ("prompt", "chosen", "rejected"), "prompt": ("prompt",)}


class DedupeConfig(StageConfig):
    """Reject every later copy of a pair (or of a prompt) as `duplicate`."""

    stage: Literal["dedupe"] = "dedupe"
    scope: Literal["pair", "prompt"] = "pair"
    """Compare whole pairs, or prompts only (one pair per prompt)."""
    casefold: bool = False
    """Ignore case when comparing (NFKC and whitespace are always normalised)."""


def dedupe(lf: pl.LazyFrame, config: DedupeConfig) -> pl.LazyFrame:
    """Tag all but the first row (by `_row`) of each group of equal normalised text.

    Rows are grouped by a 64-bit hash of their normalised texts, an in-memory key only (never
    stored): four times faster than grouping by the texts, and two different rows share a key
    with probability ~ rows**2 / 2**65 (3e-8 for a million rows).
    """
    hashes = [
        normalized(messages_text(column), casefold=config.casefold).hash().alias(column)
        for column in KEY_COLUMNS[config.scope]
    ]
    key = pl.struct(hashes).hash()
    first_seen = pl.int_range(pl.len()).over(key, order_by=ROW) == 0
    return tag_rejects(lf, {"duplicate": first_seen})
