import pytest

from orpo_pipeline.formats.preference import split_common_text
from orpo_pipeline.formats.rows import RowError
from tests.formats.conftest import assistant, texts, user


def hh(*turns: str) -> str:
    """An HH transcript from alternating Human / Assistant turns."""
    tags = ["Human", "Assistant"]
    return "".join(f"\n\n{tags[i % 2]}: {turn}" for i, turn in enumerate(turns))


# --- HH-RLHF: turn-level common prefix (data-reference §2.4) ----------------------------------


def test_hh_prompt_is_every_turn_before_the_last_answer(convert):
    row = {
        "chosen": hh("How do I bake bread?", "Flour, water.", "And then?", "Knead and bake."),
        "rejected": hh("How do I bake bread?", "Flour, water.", "And then?", "No idea."),
    }
    result = convert([row], format="hh_rlhf")
    pair = result.pairs.row(0, named=True)
    assert pair["prompt"] == [
        user("How do I bake bread?"),
        assistant("Flour, water."),
        user("And then?"),
    ]
    assert texts(result) == [("Knead and bake.", "No idea.")]


def test_hh_answers_sharing_leading_words_are_not_split_mid_word(convert):
    # A char-level prefix would cut "Sure, the answer is 4" / "...is 42" inside the number.
    row = {
        "chosen": hh("What is 6*7?", "Sure, the answer is 42."),
        "rejected": hh("What is 6*7?", "Sure, the answer is 4."),
    }
    assert texts(convert([row])) == [("Sure, the answer is 42.", "Sure, the answer is 4.")]


def test_hh_prompt_appears_exactly_once(convert):
    # Regression (yizhongw/EasyLM): the prompt was appended again after conversion.
    row = {"chosen": hh("Unique question?", "Yes."), "rejected": hh("Unique question?", "No.")}
    pair = convert([row]).pairs.row(0, named=True)
    everything = str(pair["prompt"]) + str(pair["chosen"]) + str(pair["rejected"])
    assert everything.count("Unique question?") == 1


@pytest.mark.parametrize(
    ("chosen", "rejected", "reason"),
    [
        (hh("Q?", "Same."), hh("Q?", "Same."), "identical_responses"),
        (hh("Q?", "A.", "More?"), hh("Q?", "A."), "response_missing"),
        (hh("Q?", "A.", "Next?", "B."), hh("Q?", "X.", "Next?", "B."), "diverges_before_last_turn"),
        (hh("Q?", ""), hh("Q?", "No."), "empty_response"),
        (hh("", "A."), hh("", "B."), "empty_message"),
        (hh("Q?", "A.") + "\n\nAssistant: B.", hh("Q?", "C."), "roles_not_alternating"),
        ("Human: no leading newlines", hh("Q?", "C."), "malformed_transcript"),
    ],
)
def test_hh_rows_that_cannot_be_pairs(convert, chosen, rejected, reason):
    result = convert([{"chosen": chosen, "rejected": rejected}], format="hh_rlhf")
    assert result.pairs.height == 0
    assert result.rejects["reason"].to_list() == [reason]


def test_hh_is_detected_before_trl(convert):
    assert convert([{"chosen": hh("Q?", "A."), "rejected": hh("Q?", "B.")}]).format == "hh_rlhf"


# --- TRL preference: standard / conversational, explicit / implicit ---------------------------


def test_trl_standard_explicit(convert):
    result = convert([{"prompt": "Sky colour?", "chosen": " Blue. ", "rejected": "Green."}])
    assert result.format == "trl_preference"
    assert result.pairs.row(0, named=True)["prompt"] == [user("Sky colour?")]
    assert texts(result) == [("Blue.", "Green.")]


@pytest.mark.parametrize(
    ("chosen", "rejected", "expected"),
    [
        ("The sky is blue.", "The sky is green.", ("The sky is ", "blue.", "green.")),
        # TRL's extract_prompt splits inside the number ("4" / "2." / "5.").
        ("The answer is 42.", "The answer is 45.", ("The answer is ", "42.", "45.")),
        ("Well\nyes", "Well\nno", ("Well\n", "yes", "no")),
    ],
)
def test_implicit_text_prompt_ends_at_a_word_boundary(chosen, rejected, expected):
    assert split_common_text(chosen, rejected) == expected


@pytest.mark.parametrize(
    ("chosen", "rejected", "reason"),
    [
        ("Same.", "Same.", "identical_responses"),
        ("Yes", "Yes, and more.", "response_missing"),
        ("Alpha beta", "Alphabet soup", "no_common_prompt"),
        (" x", "y", "no_common_prompt"),  # TRL wraps the index to -1 here
    ],
)
def test_implicit_text_prompt_rejects(chosen, rejected, reason):
    with pytest.raises(RowError) as caught:
        split_common_text(chosen, rejected)
    assert caught.value.reason == reason


def test_trl_conversational_implicit_and_explicit(convert):
    implicit = {
        "chosen": [user("Hi"), assistant("Hello!")],
        "rejected": [user("Hi"), assistant("Go away.")],
    }
    explicit = {
        "prompt": [{"role": "system", "content": "Be kind."}, user("Hi")],
        "chosen": [assistant("Hello!")],
        "rejected": [assistant("Go away.")],
        "score_chosen": 9,
        "score_rejected": 2.5,
    }
    result = convert([implicit, explicit])
    assert result.format == "trl_preference"
    rows = result.pairs.to_dicts()
    assert rows[0]["prompt"] == [user("Hi")]
    assert rows[1]["prompt"][0]["role"] == "system"
    assert (rows[1]["score_chosen"], rows[1]["score_rejected"]) == (9.0, 2.5)
    assert texts(result) == [("Hello!", "Go away.")] * 2


def test_trl_string_prompt_with_full_conversations_takes_the_conversation_prompt(convert):
    # UltraFeedback-binarized rows: prompt string + chosen/rejected full [user, assistant] lists.
    row = {
        "prompt": "Hi",
        "chosen": [user("Hi"), assistant("Hello!")],
        "rejected": [user("Hi"), assistant("Go away.")],
    }
    pair = convert([row]).pairs.row(0, named=True)
    assert pair["prompt"] == [user("Hi")]


def test_trl_conversational_identical_is_rejected_not_silently_split(convert):
    row = {"chosen": [user("Hi"), assistant("Yo")], "rejected": [user("Hi"), assistant("Yo")]}
    assert convert([row], format="trl_preference").reject_counts() == {"identical_responses": 1}


def test_trl_mixed_types_are_rejected(convert):
    row = {"chosen": "text", "rejected": [assistant("msg")]}
    result = convert([row], format="trl_preference")
    assert result.reject_counts() == {"wrong_type": 1}


# --- LLaMA-Factory and Alpaca-style pairs --------------------------------------------------------


def test_sharegpt_preference_maps_roles(convert):
    row = {
        "conversations": [{"from": "human", "value": "Hi"}],
        "chosen": {"from": "gpt", "value": "Hello!"},
        "rejected": {"from": "gpt", "value": "Bye."},
    }
    result = convert([row])
    assert result.format == "sharegpt_preference"
    assert result.pairs.row(0, named=True)["prompt"] == [user("Hi")]


def test_sharegpt_preference_answer_must_be_assistant(convert):
    row = {
        "conversations": [{"from": "human", "value": "Hi"}],
        "chosen": {"from": "human", "value": "Hello!"},
        "rejected": {"from": "gpt", "value": "Bye."},
    }
    assert convert([row]).reject_counts() == {"wrong_role": 1}


def test_llamafactory_v1_text_parts(convert):
    def msgs(answer):
        return [
            {"role": "system", "content": [{"type": "text", "value": "Sys"}], "loss_weight": 0.0},
            {"role": "user", "content": [{"type": "text", "value": "Q"}], "loss_weight": 0.0},
            {
                "role": "assistant",
                "content": [{"type": "text", "value": answer}],
                "loss_weight": 1.0,
            },
        ]

    result = convert([{"chosen_messages": msgs("Good"), "rejected_messages": msgs("Bad")}])
    assert result.format == "llamafactory_v1"
    assert result.pairs.row(0, named=True)["prompt"] == [
        {"role": "system", "content": "Sys"},
        user("Q"),
    ]
    assert texts(result) == [("Good", "Bad")]


@pytest.mark.parametrize(
    ("row", "prompt"),
    [
        ({"instruction": "Sum", "input": "1 2", "chosen": "3", "rejected": "4"}, "Sum\n1 2"),
        ({"instruction": "Sum", "input": "", "chosen": "3", "rejected": "4"}, "Sum"),
        ({"question": "Sum?", "system": "S", "chosen": "3", "rejected": "4"}, "Sum?"),
        ({"instruction": "Sum", "chosen_response": "3", "rejected_response": "4"}, "Sum"),
    ],
)
def test_alpaca_preference_variants(convert, row, prompt):
    result = convert([row])
    assert result.format == "alpaca_preference"
    assert result.pairs.row(0, named=True)["prompt"][-1] == user(prompt)
    assert texts(result) == [("3", "4")]


def test_alpaca_history_becomes_turns(convert):
    row = {"instruction": "And 2+2?", "history": [["1+1?", "2"]], "chosen": "4", "rejected": "5"}
    prompt = convert([row]).pairs.row(0, named=True)["prompt"]
    assert prompt == [user("1+1?"), assistant("2"), user("And 2+2?")]


def test_trl_list_prompt_with_full_conversations_is_not_repeated(convert):
    row = {
        "prompt": [user("Hi")],
        "chosen": [user("Hi"), assistant("Hello!")],
        "rejected": [user("Hi"), assistant("Go away.")],
    }
    assert convert([row]).pairs.row(0, named=True)["prompt"] == [user("Hi")]
