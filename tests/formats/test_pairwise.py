import json

import pytest

from tests.formats.conftest import assistant, texts, user


def arena(winner: str, answer_a="A is right.", answer_b="B is right.", **extra) -> dict:
    return {
        "question_id": "q1",
        "model_a": "m1",
        "model_b": "m2",
        "winner": winner,
        "judge": "arena_user",
        "conversation_a": [user("Which?"), assistant(answer_a)],
        "conversation_b": [user("Which?"), assistant(answer_b)],
        "turn": 1,
        **extra,
    }


def test_arena_winner_decides_and_ties_are_dropped(convert):
    rows = [
        arena("model_a"),
        arena("model_b", "C.", "D."),
        arena("tie", "E.", "F."),
        arena("tie (bothbad)", "G.", "H."),
        arena("model_c", "I.", "J."),
    ]
    result = convert(rows)
    assert result.format == "arena"
    assert texts(result) == [("A is right.", "B is right."), ("D.", "C.")]
    assert result.reject_counts() == {"tie": 2, "unknown_winner": 1}
    assert result.rows_in == result.rows_converted + result.rows_rejected


def test_arena_multi_turn_differs_before_last_answer(convert):
    row = arena("model_a")
    row["conversation_a"] = [user("Q1"), assistant("a1"), user("Q2"), assistant("a2")]
    row["conversation_b"] = [user("Q1"), assistant("b1"), user("Q2"), assistant("b2")]
    assert convert([row]).reject_counts() == {"diverges_before_last_turn": 1}


def test_judgments_in_both_orders_that_agree_give_one_pair(convert):
    rows = [arena("model_a"), arena("model_b", "B is right.", "A is right.")]
    result = convert(rows)
    assert texts(result) == [("A is right.", "B is right.")]
    assert (result.rows_converted, result.rows_rejected) == (2, 0)


@pytest.mark.parametrize(
    ("disagreement", "pairs", "reasons"),
    [
        ("drop", [], {"judgments_disagree": 3}),
        ("majority", [("A is right.", "B is right.")], {"outvoted": 1}),
    ],
)
def test_judgments_that_disagree(convert, disagreement, pairs, reasons):
    rows = [
        arena("model_a"),
        arena("model_a", "B is right.", "A is right."),  # shown swapped, prefers B
        arena("model_b", "B is right.", "A is right."),  # shown swapped, prefers A
    ]
    result = convert(rows, disagreement=disagreement)
    assert texts(result) == pairs
    assert result.reject_counts() == reasons


def test_majority_with_an_even_split_is_dropped(convert):
    rows = [arena("model_a"), arena("model_b")]
    assert convert(rows, disagreement="majority").reject_counts() == {"judgments_disagree": 2}


def test_arena_kaggle_json_encoded_turns(convert):
    row = {
        "id": 1,
        "model_a": "m1",
        "model_b": "m2",
        "prompt": json.dumps(["Hello?"]),
        "response_a": json.dumps(["Hi there."]),
        "response_b": json.dumps(["Go away."]),
        "winner_model_a": 1,
        "winner_model_b": 0,
        "winner_tie": 0,
    }
    tie = {**row, "response_a": json.dumps(["Other."]), "winner_model_a": 0, "winner_tie": 1}
    result = convert([row, tie])
    assert result.format == "arena_kaggle"
    assert texts(result) == [("Hi there.", "Go away.")]
    assert result.reject_counts() == {"tie": 1}


@pytest.mark.parametrize(
    ("preference", "expected"),
    [
        (1, ("one", "two")),
        (2.0, ("two", "one")),
        (0, "tie"),
        (None, "judge_error"),
        (1.5, "unknown_winner"),
    ],
)
def test_alpaca_eval_preferences(convert, preference, expected):
    row = {
        "instruction": "Say a number.",
        "output_1": "one",
        "generator_1": "text_davinci_003",
        "output_2": "two",
        "generator_2": "alpaca-7b",
        "annotator": "alpaca_eval_gpt4",
        "preference": preference,
    }
    result = convert([row])
    assert result.format == "alpaca_eval"
    if isinstance(expected, tuple):
        assert texts(result) == [expected]
    else:
        assert result.reject_counts() == {expected: 1}


def test_conversations_sharing_nothing_have_no_prompt(convert):
    row = arena("model_a")
    row["conversation_a"] = [user("One"), assistant("x")]
    row["conversation_b"] = [user("Two"), assistant("y")]
    assert convert([row]).reject_counts() == {"empty_prompt": 1}
