"""Binarize: rules, margins, ties and the reason of every prompt that gives no pair."""

import polars as pl
import pytest

from orpo_pipeline.records import PAIR_SCHEMA
from orpo_pipeline.stages.binarize import PAIRS_PER_PROMPT, BinarizeConfig, binarize
from orpo_pipeline.stages.judge import JUDGE_COLUMNS
from orpo_pipeline.stages.sample import RESPONSE

PROMPT = [{"role": "user", "content": "why is the sky blue"}]


def judged(scores, finish=None, comparisons=None):
    """A judged frame, one row per entry of `scores`."""
    rows = []
    for row, row_scores in enumerate(scores):
        reasons = finish[row] if finish else ["stop"] * len(row_scores)
        rows.append(
            {
                "id": "0" * 32,
                "prompt": [{"role": "user", "content": f"question {row}"}],
                "source": "test",
                "_row": row,
                "responses": [
                    {
                        "text": f"answer {row}-{i}" if r != "empty" else "",
                        "finish_reason": r,
                        "num_tokens": 3,
                    }
                    for i, r in enumerate(reasons)
                ],
                "scores": row_scores,
                "comparisons": comparisons[row] if comparisons else [],
                "judge": '{"judge": "stub"}',
                "judge_seconds": 0.5,
            }
        )
    schema = {
        "id": pl.String,
        "prompt": PAIR_SCHEMA["prompt"],
        "source": pl.String,
        "_row": pl.UInt32,
        "responses": pl.List(RESPONSE),
        **JUDGE_COLUMNS,
    }
    return pl.LazyFrame(rows, schema=schema)


def run(frame, **config):
    return binarize(frame, BinarizeConfig(**config)).collect()


def test_best_vs_worst_makes_one_pair_with_scores_and_judgment():
    out = run(judged([[0.2, 0.9, 0.5, 0.1]]))
    assert out.height == 1
    row = out.row(0, named=True)
    assert row["_reason"] is None
    assert row["chosen"][0]["content"] == "answer 0-1"
    assert row["rejected"][0]["content"] == "answer 0-3"
    assert (row["score_chosen"], row["score_rejected"]) == (0.9, 0.1)
    assert row["judgment"]["chosen_index"] == 1 and row["judgment"]["rejected_index"] == 3
    assert row["judgment"]["scores"] == [0.2, 0.9, 0.5, 0.1]
    assert len(row["id"]) == 32 and row["id"] != "0" * 32
    assert out.schema["chosen"] == PAIR_SCHEMA["chosen"]


def test_all_above_margin_keeps_every_pair_apart_enough_with_unique_rows():
    out = run(judged([[0.0, 1.0, 0.5], [3.0, 2.0, 1.0]]), rule="all_above_margin", min_margin=0.6)
    pairs = [
        (r["_row"] // PAIRS_PER_PROMPT, r["score_chosen"], r["score_rejected"])
        for r in out.iter_rows(named=True)
    ]
    assert pairs == [(0, 1.0, 0.0), (1, 3.0, 2.0), (1, 3.0, 1.0), (1, 2.0, 1.0)]
    assert out["_reason"].is_null().all()
    assert out["_row"].to_list() == sorted(out["_row"].to_list())
    assert out["_row"].n_unique() == out.height


def test_best_vs_random_draws_a_lower_response_by_seed_not_by_row_order():
    scores = [[0.9, 0.1, 0.2, 0.3, 0.4]] * 1
    first = run(judged(scores), rule="best_vs_random", seed=1)
    again = run(judged(scores), rule="best_vs_random", seed=1)
    assert first.equals(again)
    draws = {
        run(judged(scores), rule="best_vs_random", seed=s)["score_rejected"][0] for s in range(12)
    }
    assert draws <= {0.1, 0.2, 0.3, 0.4} and len(draws) > 1
    assert first["score_chosen"][0] == 0.9


@pytest.mark.parametrize(
    ("scores", "finish", "comparisons", "config", "reason"),
    [
        (
            [[0.5, None, None]],
            [["stop", "length", "empty"]],
            None,
            {},
            "generation_empty_or_truncated",
        ),
        (
            [[0.5, 0.5]],
            None,
            [
                [
                    {
                        "first": 0,
                        "second": 1,
                        "verdict_ab": "A",
                        "verdict_ba": "A",
                        "p_first_ab": 0.9,
                        "p_first_ba": 0.1,
                        "winner": None,
                        "reason": "order_disagreement",
                    }
                ]
            ],
            {},
            "judge_disagreed",
        ),
        ([[0.5, 0.5, 0.5]], None, None, {}, "all_tied"),
        ([[0.5, 0.6, 0.55]], None, None, {"min_margin": 0.2}, "below_margin"),
        (
            [[0.5, 0.6, 0.55]],
            None,
            None,
            {"rule": "best_vs_random", "min_margin": 0.2},
            "below_margin",
        ),
    ],
)
def test_prompts_without_a_pair_are_rejected_with_their_reason(
    scores, finish, comparisons, config, reason
):
    out = run(judged(scores, finish, comparisons), **config)
    assert out["_reason"].to_list() == [reason]
    assert out["judgment"][0]["scores"] == scores[0]  # the judgment travels with the reject


def test_ties_keep_pairs_equal_scores_in_response_order():
    out = run(judged([[0.5, 0.5]]), ties="keep")
    assert out["_reason"].to_list() == [None]
    assert out["chosen"][0][0]["content"] == "answer 0-0"


def test_ties_keep_contradicts_a_margin():
    with pytest.raises(ValueError, match="contradicts"):
        BinarizeConfig(ties="keep", min_margin=0.1)


def test_counts_reconcile_on_a_mixed_frame():
    frame = judged([[0.1, 0.9], [0.5, 0.5], [None, 0.3], [0.0, 0.2, 0.4]])
    out = run(frame, rule="all_above_margin")
    kept = out.filter(pl.col("_reason").is_null())
    assert kept.height == 1 + 3
    assert out.filter(pl.col("_reason").is_not_null())["_reason"].to_list() == [
        "all_tied",
        "generation_empty_or_truncated",
    ]
    assert set(out["_row"] // PAIRS_PER_PROMPT) == {0, 1, 2, 3}
