"""Sample a mixture of sources: weights over the `source` column, seeded per row."""

from typing import Literal

import polars as pl
from pydantic import Field, model_validator

from orpo_pipeline.exprs import stable_hash
from orpo_pipeline.stages.base import REASON, ROW, GlobalStage, StageConfig, tag_rejects


class MixConfig(StageConfig):
    """Keep a sample of each source; reject the rest as `not_sampled`.

    Set either `weights` with `size`, or `fractions`:

    - `weights` + `size`: source s gets `size * w_s / sum(w)` rows. No source is oversampled: if
      one has fewer rows than its share, every share shrinks so the ratios still hold, and fewer
      than `size` rows are kept.
    - `fractions`: source s keeps `round(f_s * rows of s)` rows.

    Which rows a source keeps is decided by sha256 of the pair `id` and `seed` (ties broken by
    `_row`), so the sample does not depend on row order. Rows of sources not named are rejected
    as `source_not_in_mix`.
    """

    stage: Literal["mix"] = "mix"
    weights: dict[str, float] | None = None
    """Relative weight of each source (values >= 0); needs `size`."""
    size: int | None = Field(default=None, ge=1)
    """Rows to keep in all, at most."""
    fractions: dict[str, float] | None = None
    """Share of each source's rows to keep, in [0, 1]."""
    seed: int = 0
    """Changes which rows are sampled."""

    @model_validator(mode="after")
    def _one_mode(self) -> "MixConfig":
        if (self.weights is None) == (self.fractions is None):
            msg = "set either `weights` (with `size`) or `fractions`"
            raise ValueError(msg)
        if (self.weights is None) != (self.size is None):
            msg = "`weights` and `size` go together"
            raise ValueError(msg)
        shares = self.weights or self.fractions or {}
        if any(value < 0 for value in shares.values()) or not any(shares.values()):
            msg = "weights and fractions must be >= 0, and at least one > 0"
            raise ValueError(msg)
        if self.fractions is not None and any(value > 1 for value in self.fractions.values()):
            msg = "fractions must be at most 1"
            raise ValueError(msg)
        return self


def _quota(config: MixConfig) -> pl.Expr:
    """Rows to keep of the row's source (null for sources not in the mix)."""
    shares = config.weights or config.fractions or {}
    share = pl.col("source").replace_strict(shares, default=None, return_dtype=pl.Float64)
    available = pl.len().over("source")
    if config.fractions is not None:
        return (share * available).round()
    # Rows per unit of weight: as `size` asks, or fewer where a source would run out.
    scale = pl.min_horizontal(
        pl.lit(config.size / sum(shares.values())), (available / share).filter(share > 0).min()
    )
    return (share * scale).round(6).floor()  # so that 0.1 + 0.2 + 0.7 != 1 costs no row


def _keys(lf: pl.LazyFrame, config: MixConfig) -> pl.LazyFrame:
    """`_row`, `source` and `_draw`: the seeded sha256 of the pair `id`."""
    draw = stable_hash(pl.col("id"), salt=f"mix:{config.seed}").alias("_draw")
    return lf.select(ROW, "source", draw)


def _decide(keys: pl.LazyFrame, config: MixConfig) -> pl.LazyFrame:
    """Tag rows outside each source's seeded sample as `not_sampled`."""
    listed = list(config.weights or config.fractions or {})
    rank = pl.int_range(pl.len()).over("source", order_by=["_draw", ROW])
    rules = {
        "source_not_in_mix": pl.col("source").is_in(listed),
        "not_sampled": rank < _quota(config),
    }
    return tag_rejects(keys, rules).select(ROW, REASON)


mix = GlobalStage(_keys, _decide)
"""Tag rows outside each source's seeded sample as `not_sampled`."""
