"""What every stage shares: a frozen config base, reject tagging, and the global-stage shape."""

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import polars as pl
from pydantic import BaseModel, ConfigDict

REASON = "_reason"
"""Column a filter-like stage fills with the name of the first failed rule (null keeps the row)."""
ROW = "_row"
"""Source-order row index added by the runner; order-dependent logic sorts by it."""


class StageConfig(BaseModel):
    """Base for stage configs: immutable, unknown keys are errors, docstrings become help."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    reject_labels: ClassVar[dict[str, str]] = {}
    """Reason -> the column naming what a row rejected for it matched (a cluster, an eval set);
    the data card counts that reason's rejects per value of the column."""

    parallel_shards: ClassVar[bool] = True
    """Whether the local executor may run several of the stage's shard tasks at once (not for a
    stage that runs a model: the model already uses every core)."""

    def reads(self) -> list[Path]:
        """Files the stage reads besides its input frame; their contents are part of its key."""
        return []


def tag_rejects(lf: pl.LazyFrame, rules: dict[str, pl.Expr]) -> pl.LazyFrame:
    """Add `_reason`: the name of the first rule whose keep-condition is false, or null.

    A null keep-condition counts as failed, so a row never passes by accident.

    >>> lf = pl.LazyFrame({"n": [1, 5, None]})
    >>> tag_rejects(lf, {"too_small": pl.col("n") > 2}).collect()["_reason"].to_list()
    ['too_small', None, 'too_small']
    """
    if not rules:
        return lf.with_columns(pl.lit(None, dtype=pl.String).alias(REASON))
    failed = [
        pl.when(~keep.fill_null(value=False)).then(pl.lit(name)) for name, keep in rules.items()
    ]
    return lf.with_columns(pl.coalesce(failed).alias(REASON))


class GlobalStage(NamedTuple):
    """A stage that needs every row at once, in two parts, so that it can run on shards.

    `keys` works row by row and returns `_row` plus the few small columns `decide` needs (a hash,
    a group); `decide` sees those for all rows and returns `_row` with `_reason` and any columns
    the stage adds. Only the keys of all rows are ever in memory together.
    """

    keys: Callable[[pl.LazyFrame, Any], pl.LazyFrame]
    decide: Callable[[pl.LazyFrame, Any], pl.LazyFrame]

    def __call__(self, lf: pl.LazyFrame, config: Any) -> pl.LazyFrame:
        """The whole stage on one frame: decide on its keys, join the outcome back by `_row`
        (a column the stage adds replaces the one an earlier stage of its kind added)."""
        decided = self.decide(self.keys(lf, config), config)
        added = [name for name in decided.collect_schema() if name != ROW]
        return lf.drop(added, strict=False).join(decided, on=ROW, how="left", maintain_order="left")
