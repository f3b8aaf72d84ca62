import random

import pytest

from tests.formats.conftest import assistant, texts, user

SHAREGPT = {
    "id": "x",
    "conversations": [
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello, how can I help you today?"},
        {"from": "human", "value": "Tell me a fact."},
        {"from": "gpt", "value": "Honey never spoils."},
    ],
}


@pytest.mark.parametrize(
    ("row", "fmt"),
    [
        (SHAREGPT, "sharegpt"),
        (
            {"messages": [user("Tell me a fact."), assistant("Honey never spoils.")]},
            "openai_messages",
        ),
        (
            {"instruction": "Tell me a fact.", "input": "", "output": "Honey never spoils."},
            "alpaca",
        ),
        ({"prompt": "Tell me a fact.", "completion": "Honey never spoils."}, "prompt_completion"),
        (
            {
                "id": "t",
                "instruction": "Tell me a fact.",
                "instances": [{"input": "", "output": "Honey never spoils."}],
            },
            "alpaca",
        ),
    ],
)
def test_sft_layouts_detected_and_truncated(convert, row, fmt):
    result = convert([row], negatives="truncated")
    assert result.format == fmt
    assert result.kind == "sft"
    pair = result.pairs.row(0, named=True)
    assert pair["prompt"][-1] == user("Tell me a fact.")
    assert texts(result) == [("Honey never spoils.", "Honey")]
    assert pair["source"] == "input.jsonl#rejected=truncated"


def test_sharegpt_keeps_earlier_turns_in_the_prompt(convert):
    prompt = convert([SHAREGPT], negatives="truncated").pairs.row(0, named=True)["prompt"]
    assert prompt == [
        user("Hi"),
        assistant("Hello, how can I help you today?"),
        user("Tell me a fact."),
    ]


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        ([user("Only a question")], "no_final_answer"),
        ([{"role": "system", "content": "S"}, assistant("A")], "prompt_not_ending_with_user"),
        ([user("Q"), assistant("Word")], "answer_too_short"),
        ([user("Q"), {"role": "wizard", "content": "A"}], "unknown_role"),
        ([user("Q"), {"role": "assistant", "content": [{"type": "image_url"}]}], "wrong_type"),
    ],
)
def test_sft_rows_without_a_pair(convert, messages, reason):
    result = convert([{"messages": messages}], negatives="truncated")
    assert result.reject_counts() == {reason: 1}


def test_other_prompt_negatives_ignore_row_order(convert):
    rows = [
        {"instruction": f"Question {index}?", "output": f"Answer number {index}."}
        for index in range(30)
    ]
    rows.append({"instruction": "Question 0?", "output": "Answer number 0."})  # a duplicate
    first = convert(rows, negatives="other_prompt")
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    second = convert(shuffled, negatives="other_prompt")
    assert sorted(texts(first)) == sorted(texts(second))
    for chosen, rejected in texts(first):
        assert chosen != rejected
    assert first.pairs["source"].unique().to_list() == ["input.jsonl#rejected=other_prompt"]
    assert (
        convert(rows, negatives="other_prompt", seed=1).pairs["id"].to_list()
        != first.pairs["id"].to_list()
    )


def test_other_prompt_needs_another_prompt(convert):
    result = convert([{"instruction": "Alone?", "output": "Yes."}], negatives="other_prompt")
    assert result.reject_counts() == {"no_other_answer": 1}


def kto(prompt: str, answer: str, label: bool) -> dict:
    return {"messages": [user(prompt), assistant(answer)], "label": label}


def test_kto_pairs_within_a_prompt_and_sft_route_for_the_rest(convert):
    rows = [
        kto("Q1", "Good answer one.", True),
        kto("Q1", "Bad answer.", False),
        kto("Q2", "Only bad.", False),
        kto("Q3", "Only good here.", True),
        kto("Q4", "Also good here.", True),
    ]
    result = convert(rows, negatives="other_prompt")
    assert result.format == "kto"
    pairs = dict(zip(result.pairs["_line"].to_list(), texts(result), strict=True))
    assert pairs[2] == ("Good answer one.", "Bad answer.")
    assert pairs[4][0] == "Only good here."
    assert pairs[5][0] == "Also good here."
    assert result.reject_counts() == {"no_desirable_answer": 1}
    assert (result.rows_in, result.rows_converted) == (5, 4)
    sources = dict(
        zip(result.pairs["_line"].to_list(), result.pairs["source"].to_list(), strict=True)
    )
    assert sources[2] == "input.jsonl"
    assert sources[4] == "input.jsonl#rejected=other_prompt"


def test_kto_label_must_be_boolean(convert):
    rows = [kto("Q", "A", True), {**kto("Q", "B", True), "label": "yes"}]
    result = convert(rows, format="kto", negatives="truncated")
    assert "wrong_type" in result.reject_counts()
