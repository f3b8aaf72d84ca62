"""Turn judged responses into preference pairs; every prompt without a pair gets its reason."""

import hashlib
import random
from functools import partial
from typing import Any, Literal, Self

import polars as pl
from pydantic import Field, model_validator

from orpo_pipeline.formats.generate import prompt_key
from orpo_pipeline.records import PAIR_SCHEMA, pair_id
from orpo_pipeline.stages.base import REASON, ROW, StageConfig
from orpo_pipeline.stages.judge import COMPARISON, JUDGE_COLUMNS
from orpo_pipeline.stages.sample import RESPONSES

PAIRS_PER_PROMPT = 256
"""A pair's `_row` is the prompt's `_row` * 256 + its index, so rows stay unique and ordered
when one prompt gives several pairs (16 responses give at most 120)."""
JUDGMENT = pl.Struct(
    {
        "judge": pl.String,
        "seconds": pl.Float64,
        "responses": pl.List(pl.String),
        "finish_reasons": pl.List(pl.String),
        "scores": pl.List(pl.Float64),
        "comparisons": pl.List(COMPARISON),
        "chosen_index": pl.Int64,
        "rejected_index": pl.Int64,
    }
)
"""Everything the judge said about the prompt, kept with each pair (and each rejected prompt)."""
CONSUMED = (RESPONSES, *JUDGE_COLUMNS, "id")
REASONS = ("generation_empty_or_truncated", "judge_disagreed", "all_tied", "below_margin")


class BinarizeConfig(StageConfig):
    """Make pairs from each prompt's judged responses.

    Rules: `best_vs_worst` (one pair), `best_vs_random` (the best against a seeded random
    lower-scored response) or `all_above_margin` (every two responses whose scores differ by at
    least `min_margin`). Prompts without a pair are rejected, with the first reason that holds:
    `generation_empty_or_truncated` (fewer than two usable responses), `judge_disagreed` (every
    comparison was a tie because the two orders disagreed), `all_tied` (all scores equal),
    `below_margin` (no two scores `min_margin` apart).
    """

    stage: Literal["binarize"] = "binarize"
    rule: Literal["best_vs_worst", "best_vs_random", "all_above_margin"] = "best_vs_worst"
    """Which responses become chosen and rejected."""
    min_margin: float = Field(default=0.0, ge=0.0)
    """Smallest score(chosen) - score(rejected) kept; 0 keeps every strict difference."""
    ties: Literal["drop", "keep"] = "drop"
    """Whether two responses with equal scores may form a pair (in response order)."""
    seed: int = 0
    """best_vs_random: each prompt draws from hash(seed, prompt)."""

    @model_validator(mode="after")
    def _check_ties(self) -> Self:
        if self.ties == "keep" and self.min_margin > 0:
            msg = "ties='keep' contradicts min_margin > 0; choose one"
            raise ValueError(msg)
        return self


def _candidates(scores: list[float | None], config: BinarizeConfig, key: str) -> list[tuple]:
    """(chosen, rejected) response indices for one prompt, best first."""
    judged = [i for i, s in enumerate(scores) if s is not None]

    def allowed(i: int, j: int) -> bool:
        gap = scores[i] - scores[j]
        return gap >= config.min_margin and (gap > 0 or config.ties == "keep")

    best = max(judged, key=lambda i: (scores[i], -i))
    if config.rule == "best_vs_worst":
        worst = min(judged, key=lambda i: (scores[i], -i))
        return [(best, worst)] if worst != best and allowed(best, worst) else []
    if config.rule == "best_vs_random":
        lower = [j for j in judged if j != best and allowed(best, j)]
        draw = random.Random(hashlib.sha256(f"{config.seed}|{key}".encode()).digest())
        return [(best, draw.choice(lower))] if lower else []
    ranked = sorted(judged, key=lambda i: (-scores[i], i))
    return [(i, j) for n, i in enumerate(ranked) for j in ranked[n + 1 :] if allowed(i, j)]


def _no_pair_reason(row: dict[str, Any], config: BinarizeConfig) -> str | None:
    """Why a prompt cannot give any pair whatever the rule, if it cannot."""
    scores = [s for s in row["scores"] if s is not None]
    if len(scores) < 2:
        return "generation_empty_or_truncated"
    comparisons = row["comparisons"]
    if comparisons and all(c["reason"] == "order_disagreement" for c in comparisons):
        return "judge_disagreed"
    if len(set(scores)) == 1 and config.ties == "drop":
        return "all_tied"
    return None


def _pairs(row: dict[str, Any], config: BinarizeConfig) -> list[dict[str, Any]]:
    """The output rows of one prompt: its pairs, or one rejected row with the reason."""
    texts = [r["text"] for r in row[RESPONSES]]
    judgment = {
        "judge": row["judge"],
        "seconds": row["judge_seconds"],
        "responses": texts,
        "finish_reasons": [r["finish_reason"] for r in row[RESPONSES]],
        "scores": row["scores"],
        "comparisons": row["comparisons"],
    }
    base = {k: v for k, v in row.items() if k not in CONSUMED}
    reason = _no_pair_reason(row, config)
    pairs = [] if reason else _candidates(row["scores"], config, prompt_key(row["prompt"]))
    if not pairs:
        return [
            base
            | {
                "id": None,
                ROW: row[ROW] * PAIRS_PER_PROMPT,
                REASON: reason or "below_margin",
                "judgment": judgment | {"chosen_index": None, "rejected_index": None},
            }
        ]
    out = []
    for k, (i, j) in enumerate(pairs):
        chosen = [{"role": "assistant", "content": texts[i]}]
        rejected = [{"role": "assistant", "content": texts[j]}]
        out.append(
            base
            | {
                "id": pair_id(row["prompt"], chosen, rejected),
                "chosen": chosen,
                "rejected": rejected,
                "score_chosen": row["scores"][i],
                "score_rejected": row["scores"][j],
                ROW: row[ROW] * PAIRS_PER_PROMPT + k,
                REASON: None,
                "judgment": judgment | {"chosen_index": i, "rejected_index": j},
            }
        )
    return out


def _output_schema(schema: pl.Schema) -> dict[str, pl.DataType]:
    kept = {name: dtype for name, dtype in schema.items() if name not in CONSUMED}
    return dict(PAIR_SCHEMA) | kept | {ROW: pl.UInt64, "judgment": JUDGMENT, REASON: pl.String}


def _binarize_frame(frame: pl.DataFrame, config: BinarizeConfig) -> pl.DataFrame:
    schema = _output_schema(frame.schema)
    rows = [pair for row in frame.iter_rows(named=True) for pair in _pairs(row, config)]
    return pl.DataFrame(rows, schema=schema)


def binarize(lf: pl.LazyFrame, config: BinarizeConfig) -> pl.LazyFrame:
    """Pair rows (canonical pair columns plus `judgment`) and rejected prompts (`_reason`)."""
    schema = _output_schema(lf.collect_schema())
    return lf.map_batches(partial(_binarize_frame, config=config), schema=schema)
