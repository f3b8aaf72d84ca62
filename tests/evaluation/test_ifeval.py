"""IFEval scoring through lm-eval's checkers, on hand-made responses, offline."""

import pytest

from orpo_pipeline.evaluation import ifeval

END = "Is there anything else I can help with?"
RECORDS = [
    {
        "key": 1,
        "prompt": "Answer in lowercase without commas.",
        "instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase"],
        "kwargs": [{}, {}],
    },
    {
        "key": 2,
        "prompt": "Give a title in double angular brackets and end with the phrase.",
        "instruction_id_list": ["detectable_format:title", "startend:end_checker"],
        "kwargs": [{}, {"end_phrase": END}],
    },
    {
        "key": 3,
        "prompt": "Answer in fewer than 3 sentences.",
        "instruction_id_list": ["length_constraints:number_sentences"],
        "kwargs": [{"relation": "less than", "num_sentences": 3}],
    },
    {
        "key": 4,
        "prompt": "Use at least two words in capitals.",
        "instruction_id_list": ["change_case:capital_word_frequency"],
        "kwargs": [{"capital_frequency": 2, "capital_relation": "at least"}],
    },
]
RESPONSES = [
    # both followed
    "this answer is written in plain english and in lowercase letters from start to end.",
    # title followed; the end phrase is followed only once the last line is dropped (loose)
    f"<<A Title>>\nThe body of the answer. {END}\n*thanks*",
    # two sentences, if 'Mr.' is known as an abbreviation (the Punkt English model)
    "Mr. Smith arrived at noon. He sat down.",
    # one capitalised word of the two asked for
    "i love THIS answer",
]


def test_hand_made_responses_pass_and_fail_known_instructions():
    checked = [ifeval.check_response(r, t) for r, t in zip(RECORDS, RESPONSES, strict=True)]
    assert [c["inst_level_strict"] for c in checked] == [
        [True, True],
        [True, False],
        [True],
        [False],
    ]
    assert [c["inst_level_loose"] for c in checked] == [[True, True], [True, True], [True], [False]]
    assert [c["prompt_level_strict"] for c in checked] == [True, False, True, False]
    assert [c["prompt_level_loose"] for c in checked] == [True, True, True, False]
    scores = ifeval.ifeval_scores(checked)
    assert scores == {
        "num_prompts": 4,
        "num_instructions": 6,
        "prompt_level_strict": 2 / 4,
        "inst_level_strict": 4 / 6,
        "prompt_level_loose": 3 / 4,
        "inst_level_loose": 5 / 6,
    }


@pytest.mark.parametrize(
    ("response", "followed"),
    [
        ("Mr. Smith arrived. Dr. Jones left. They met.", False),  # 3 sentences (Punkt)
        ("It rained. It poured.", True),
        ("", False),  # an empty answer follows nothing
    ],
)
def test_sentence_counting_uses_the_shipped_punkt_model(response, followed):
    checked = ifeval.check_response(RECORDS[2], response)
    assert checked["inst_level_strict"] == [followed]


def test_capital_words_are_counted_with_nltk_word_tokenize():
    assert ifeval.check_response(RECORDS[3], "I LOVE THIS")["prompt_level_strict"]


def test_shipped_records_spread_over_the_set_and_every_instruction_is_known():
    from lm_eval.tasks.ifeval.instructions_registry import INSTRUCTION_DICT

    every = ifeval.ifeval_records(541)
    assert len(every) == 541 and len({r["key"] for r in every}) == 541
    assert {i for r in every for i in r["instruction_id_list"]} <= set(INSTRUCTION_DICT)
    assert [r["key"] for r in ifeval.ifeval_records(2)] == [every[0]["key"], every[270]["key"]]
