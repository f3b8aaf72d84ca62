"""Reject pairs whose prompt, or whole pair, already appears in another dataset."""

from pathlib import Path
from typing import ClassVar, Literal

import polars as pl
from pydantic import Field

from orpo_pipeline.exprs import contents, normalized
from orpo_pipeline.stages.base import StageConfig, tag_rejects
from orpo_pipeline.stages.reference import ANSWERS, scan_reference

FOUND_IN = "_found_in"
"""Column naming the first reference file that holds the row's prompt (or pair)."""


class CrossDedupeConfig(StageConfig):
    """Reject rows found in other datasets as `in_other_dataset`, and name the file in `_found_in`.

    Texts are compared as message contents joined by newlines (roles ignored), after NFKC and
    whitespace normalisation, so a plain prompt list matches single-turn prompts.
    """

    stage: Literal["cross_dedupe"] = "cross_dedupe"
    reject_labels: ClassVar[dict[str, str]] = {"in_other_dataset": FOUND_IN}
    others: tuple[Path, ...] = Field(min_length=1)
    """Reference files: canonical pair files (.parquet, .jsonl), or prompt lists (.txt with one
    prompt a line, or .parquet/.jsonl with a string `prompt` column)."""
    scope: Literal["prompt", "pair"] = "prompt"
    """Compare prompts, or whole pairs (then every reference must be a pair file)."""
    casefold: bool = False
    """Ignore case when comparing."""

    def reads(self) -> list[Path]:
        """The reference files."""
        return list(self.others)


def cross_dedupe(lf: pl.LazyFrame, config: CrossDedupeConfig) -> pl.LazyFrame:
    """Tag rows whose normalised text is in any of `config.others`; reads them lazily."""
    columns = ["prompt", *(ANSWERS if config.scope == "pair" else ())]
    keys = [f"_key_{c}" for c in columns]

    def keyed(frame: pl.LazyFrame, text: dict[str, pl.Expr]) -> pl.LazyFrame:
        return frame.with_columns(
            normalized(text[c], casefold=config.casefold).alias(key)
            for c, key in zip(columns, keys, strict=True)
        )

    references = pl.concat(
        keyed(
            scan_reference(path, with_answers=config.scope == "pair"),
            {c: pl.col(c) for c in columns},
        ).select(*keys, pl.lit(str(path)).alias(FOUND_IN))
        for path in config.others
    ).unique(subset=keys, keep="first", maintain_order=True)
    lf = keyed(lf, {c: contents(c) for c in columns})
    found = lf.join(references, on=keys, how="left", maintain_order="left").drop(keys)
    return tag_rejects(found, {"in_other_dataset": pl.col(FOUND_IN).is_null()})
