import polars as pl
import pytest

from orpo_pipeline.records import PAIR_SCHEMA, pair_id
from orpo_pipeline.stages.base import ROW


def make_pair(prompt: str, chosen: str, rejected: str, **scores: float) -> dict:
    p = [{"role": "user", "content": prompt}]
    c = [{"role": "assistant", "content": chosen}]
    r = [{"role": "assistant", "content": rejected}]
    return {
        "id": pair_id(p, c, r),
        "prompt": p,
        "chosen": c,
        "rejected": r,
        "source": "test",
        "score_chosen": scores.get("score_chosen"),
        "score_rejected": scores.get("score_rejected"),
    }


def pairs_frame(rows: list[dict]) -> pl.LazyFrame:
    return pl.LazyFrame(rows, schema=PAIR_SCHEMA).with_row_index(ROW)


@pytest.fixture
def frame_of():
    return lambda *rows: pairs_frame(list(rows))
