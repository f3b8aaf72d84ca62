"""Reject pairs whose prompt contains an evaluation prompt (exactly, or by word n-gram overlap)."""

import functools
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import polars as pl
from pydantic import Field, model_validator

from orpo_pipeline.exprs import simplified, user_turns
from orpo_pipeline.stages.base import StageConfig, tag_rejects
from orpo_pipeline.stages.reference import EVAL_SETS, EvalSet, eval_set_path, scan_reference
from orpo_pipeline.stages.shingles import shingle_hashes

EVAL_SET = "_eval_set"
"""Column naming the eval set whose prompt the row matched."""
EVAL_PROMPT = "_eval_prompt"
"""Column holding the matched eval prompt, as shipped."""
_MATCH = pl.Struct({EVAL_SET: pl.String, EVAL_PROMPT: pl.String})
_CHUNK_ROWS = 16_384


class DecontaminateConfig(StageConfig):
    """Reject pairs whose prompt matches an evaluation prompt, as `contaminated`.

    Texts are compared `simplified` (lower case, no punctuation). A prompt matches an eval prompt
    when one of its user turns equals it, or when at least `min_overlap` of the eval prompt's
    distinct word `ngram_size`-grams occur in the prompt's user turns (open-instruct's rule:
    8-grams, 0.5). Eval prompts shorter than `ngram_size` words match only exactly. The first
    match (exact before overlap, then in `sets` and file order) is named in `_eval_set` and
    `_eval_prompt`.
    """

    stage: Literal["decontaminate"] = "decontaminate"
    reject_labels: ClassVar[dict[str, str]] = {"contaminated": EVAL_SET}
    sets: tuple[EvalSet, ...] = EVAL_SETS
    """Shipped eval prompt sets: MT-bench (both turns), AlpacaEval, Arena-Hard (v0.1 and v2.0),
    IFEval."""
    extra: tuple[Path, ...] = ()
    """Own eval prompt files (.txt with one prompt a line, or .jsonl/.parquet with a `prompt`
    column); the file stem names the set."""
    ngram_size: int = Field(default=8, ge=1)
    """Words per n-gram (open-instruct: 8; NeMo Curator and GPT-3: 13; datatrove: 12)."""
    min_overlap: float = Field(default=0.5, gt=0, le=1)
    """Share of an eval prompt's distinct n-grams that must occur in the training prompt."""

    def reads(self) -> list[Path]:
        """The shipped eval set files, then the own ones."""
        return [*(eval_set_path(name) for name in self.sets), *self.extra]

    @model_validator(mode="after")
    def _some_prompts(self) -> "DecontaminateConfig":
        if not self.sets and not self.extra:
            msg = "name at least one eval set in `sets` or a file in `extra`"
            raise ValueError(msg)
        return self


class _EvalIndex:
    """Eval prompts by simplified text and by n-gram hash."""

    def __init__(self, evals: pl.DataFrame, ngram_size: int) -> None:
        self.evals = evals.with_row_index("_eval")
        self.exact = self.evals.select("_key", "_eval").unique("_key", keep="first")
        long_enough = self.evals.filter(pl.col("_key").str.count_matches(" ") + 1 >= ngram_size)
        hashes, starts = shingle_hashes(long_enough["_key"], size=ngram_size, unit="word")
        ngrams = pl.DataFrame(
            {"_hash": hashes, "_eval": np.repeat(long_enough["_eval"].to_numpy(), np.diff(starts))}
        ).unique()
        self.ngrams = ngrams.join(
            ngrams.group_by("_eval").len("_num_ngrams"), on="_eval", how="left"
        )
        self.hashes = pl.Series(np.unique(hashes)).implode()

    def matches(self, turns: pl.Series, config: DecontaminateConfig) -> pl.Series:
        """Per row of user-turn lists: the first eval prompt it matches, or null."""
        rows = pl.DataFrame({"_turns": turns}).with_row_index("_position")
        exact = (
            rows.explode("_turns")
            .join(self.exact, left_on="_turns", right_on="_key")
            .group_by("_position")
            .agg(pl.col("_eval").min().alias("_exact"))
        )
        overlap = pl.concat(
            [
                self._overlaps(turns.slice(begin, _CHUNK_ROWS), begin, config)
                for begin in range(0, max(len(turns), 1), _CHUNK_ROWS)
            ],
            how="vertical",
        )
        first = (
            rows.join(exact, on="_position", how="left", maintain_order="left")
            .join(overlap, on="_position", how="left", maintain_order="left")
            .select(pl.coalesce("_exact", "_overlap").alias("_eval"))
            .join(self.evals, on="_eval", how="left", maintain_order="left")
        )
        return first.select(pl.struct(EVAL_SET, EVAL_PROMPT)).to_series()

    def _overlaps(self, turns: pl.Series, offset: int, config: DecontaminateConfig) -> pl.DataFrame:
        hashes, starts = shingle_hashes(turns.list.join(" "), size=config.ngram_size, unit="word")
        hit = pl.Series(hashes).is_in(self.hashes).to_numpy()  # a hash set: 30x np.isin
        positions = np.repeat(np.arange(len(turns)) + offset, np.diff(starts))
        return (
            pl.DataFrame({"_position": positions[hit], "_hash": hashes[hit]})
            .unique()
            .join(self.ngrams, on="_hash")
            .group_by("_position", "_eval", "_num_ngrams")
            .len("_shared")
            .filter(pl.col("_shared") >= config.min_overlap * pl.col("_num_ngrams"))
            .group_by("_position")
            .agg(pl.col("_eval").min().alias("_overlap"))
            .with_columns(pl.col("_position").cast(pl.UInt32))
        )


def _scan_evals(config: DecontaminateConfig) -> pl.LazyFrame:
    names = [*config.sets, *(path.stem for path in config.extra)]
    sources = zip(names, config.reads(), strict=True)
    return pl.concat(
        scan_reference(path).select(
            pl.lit(name).alias(EVAL_SET),
            pl.col("prompt").alias(EVAL_PROMPT),
            simplified(pl.col("prompt")).alias("_key"),
        )
        for name, path in sources
    )


def decontaminate(lf: pl.LazyFrame, config: DecontaminateConfig) -> pl.LazyFrame:
    """Tag rows whose prompt matches an eval prompt; add `_eval_set` and `_eval_prompt`.

    The eval sets are scanned lazily and indexed once, when the plan first runs.
    """
    evals = _scan_evals(config)
    index = functools.cache(lambda: _EvalIndex(evals.collect(), config.ngram_size))
    turns = user_turns("prompt").list.eval(simplified(pl.element()))
    match = turns.map_batches(
        lambda batch: index().matches(batch, config), return_dtype=_MATCH, is_elementwise=True
    )
    lf = lf.with_columns(match.alias("_match")).unnest("_match")
    return tag_rejects(lf, {"contaminated": pl.col(EVAL_SET).is_null()})
