"""What every stage shares: a frozen config base and reject tagging."""

import polars as pl
from pydantic import BaseModel, ConfigDict

REASON = "_reason"
"""Column a filter-like stage fills with the name of the first failed rule (null keeps the row)."""
ROW = "_row"
"""Source-order row index added by the runner; order-dependent logic sorts by it."""


class StageConfig(BaseModel):
    """Base for stage configs: immutable, unknown keys are errors, docstrings become help."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


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
