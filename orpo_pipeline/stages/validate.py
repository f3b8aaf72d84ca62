"""Check that frames have the canonical pair schema and that each row obeys the pair rules."""

from typing import Literal

import polars as pl

from orpo_pipeline.errors import DataError
from orpo_pipeline.exprs import any_blank_message
from orpo_pipeline.records import PAIR_SCHEMA
from orpo_pipeline.stages.base import StageConfig, tag_rejects

PROMPT_END_ROLES = ["user", "tool"]
ROLES = ["system", "user", "assistant", "tool"]


class ValidateConfig(StageConfig):
    """Reject rows that break the `PreferencePair` contract."""

    stage: Literal["validate"] = "validate"


def _roles(column: str) -> pl.Expr:
    return pl.col(column).list.eval(pl.element().struct.field("role"))


def _single_assistant_answer(column: str) -> pl.Expr:
    return (pl.col(column).list.len() == 1) & (_roles(column).list.first() == "assistant")


def validate(lf: pl.LazyFrame, config: ValidateConfig) -> pl.LazyFrame:
    """Tag rows that break the pair contract; raise if the columns themselves are wrong."""
    schema = lf.collect_schema()
    wrong = {
        name: f"expected {dtype}, found {schema.get(name, 'no such column')}"
        for name, dtype in PAIR_SCHEMA.items()
        if schema.get(name) != dtype
    }
    if wrong:
        details = "; ".join(f"{name}: {problem}" for name, problem in wrong.items())
        msg = f"frame does not have the canonical pair schema ({details})"
        raise DataError(msg)
    known_roles = _roles("prompt").list.eval(pl.element().is_in(ROLES)).list.all()
    return tag_rejects(
        lf,
        {
            "prompt_empty": pl.col("prompt").list.len() > 0,
            "unknown_role": known_roles,
            "prompt_not_ending_with_user_turn": _roles("prompt")
            .list.last()
            .is_in(PROMPT_END_ROLES),
            "chosen_not_one_assistant_message": _single_assistant_answer("chosen"),
            "rejected_not_one_assistant_message": _single_assistant_answer("rejected"),
            "blank_message": ~pl.any_horizontal(
                any_blank_message(c) for c in ("prompt", "chosen", "rejected")
            ),
        },
    )
