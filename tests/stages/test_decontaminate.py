import json

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from orpo_pipeline.exprs import simplified, user_turns
from orpo_pipeline.stages.base import REASON
from orpo_pipeline.stages.decontaminate import (
    EVAL_PROMPT,
    EVAL_SET,
    DecontaminateConfig,
    decontaminate,
)
from orpo_pipeline.stages.reference import EVAL_SETS, eval_set_path
from tests.stages.conftest import make_pair, pairs_frame

HAWAII = (
    "Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural "
    "experiences and must-see attractions."
)
"""MT-bench question 81, turn 1."""


def tagged(rows: list[dict], config: DecontaminateConfig) -> pl.DataFrame:
    return decontaminate(pairs_frame(rows), config).collect()


def test_shipped_eval_sets_have_the_documented_sizes():
    sizes = {name: len(pl.read_ndjson(eval_set_path(name))) for name in EVAL_SETS}
    assert sizes == {"mt_bench": 160, "alpaca_eval": 805, "arena_hard": 1250, "ifeval": 541}
    first = json.loads(eval_set_path("mt_bench").read_text().splitlines()[0])
    assert first == {"prompt": HAWAII}


def test_an_edited_mt_bench_question_is_contaminated():
    edited = (
        "You are a travel writer. COMPOSE an engaging travel-blog post about a recent trip to "
        "Hawaii; highlighting cultural experiences and must see sights!! Keep it short."
    )
    rows = [
        make_pair(edited, "a", "b"),
        make_pair("Write a travel blog post about a trip to Hawaii.", "a", "b"),
        make_pair("What is the capital of France?", "a", "b"),
    ]
    result = tagged(rows, DecontaminateConfig())
    assert result[REASON].to_list() == ["contaminated", None, None]
    assert result[EVAL_SET].to_list() == ["mt_bench", None, None]
    assert result[EVAL_PROMPT].to_list() == [HAWAII, None, None]


def test_a_short_eval_prompt_matches_only_a_whole_user_turn():
    conversation = {
        **make_pair("x", "a", "b"),
        "prompt": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": "who is  larry page"},
        ],
    }
    mention = make_pair("Who is Larry Page? I mean the founder, and what did he study?", "a", "b")
    result = tagged([conversation, mention], DecontaminateConfig())
    assert result[REASON].to_list() == ["contaminated", None]
    assert result[EVAL_SET].to_list() == ["alpaca_eval", None]
    assert result[EVAL_PROMPT][0] == "Who is Larry Page?"


def test_overlap_threshold_and_ngram_size():
    words = HAWAII.split()
    # The first half of the question (9 of 19 words) inside a longer request: 2 of its 12
    # distinct 8-grams, 5 of its 15 5-grams.
    half = "Please " + " ".join(words[:9]) + " and also list ten packing tips for a beach holiday."
    rows = [make_pair(half, "a", "b")]
    assert tagged(rows, DecontaminateConfig())[REASON].to_list() == [None]
    assert tagged(rows, DecontaminateConfig(min_overlap=0.15))[REASON].to_list() == ["contaminated"]
    five = DecontaminateConfig(ngram_size=5, min_overlap=0.3)
    assert tagged(rows, five)[REASON].to_list() == ["contaminated"]


def test_only_the_configured_sets_are_checked(tmp_path):
    rows = [
        make_pair(HAWAII, "a", "b"),
        make_pair("Name three moons of Jupiter, please.", "a", "b"),
    ]
    assert tagged(rows, DecontaminateConfig(sets=("ifeval",)))[REASON].to_list() == [None, None]
    own = tmp_path / "my_benchmark.txt"
    own.write_text("name three moons of jupiter please\n")
    result = tagged(rows, DecontaminateConfig(sets=(), extra=(own,)))
    assert result[REASON].to_list() == [None, "contaminated"]
    assert result[EVAL_SET].to_list() == [None, "my_benchmark"]


def test_needs_some_eval_prompts():
    with pytest.raises(ValidationError, match="at least one eval set"):
        DecontaminateConfig(sets=())


def test_empty_frame():
    assert tagged([], DecontaminateConfig()).height == 0


def test_user_turns_and_simplified():
    frame = pairs_frame([make_pair("Héllo,  WORLD!! it's_me", "a", "b")])
    result = frame.select(user_turns("prompt").list.eval(simplified(pl.element()))).collect()
    assert result.item().to_list() == ["héllo world it s me"]


SIMPLIFY_TEXT = st.sampled_from(list("aZ é\u00a0\t\n\r\x0b\x85\u2028\u2003\x1cﬁＡ①.,_!İß-"))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(alphabet=SIMPLIFY_TEXT, max_size=30), min_size=1, max_size=4))
def test_simplified_equals_the_plain_polars_chain(texts):
    frame = pl.DataFrame({"t": [*texts, "Plain ASCII,  text!"]})
    fast = frame.select(simplified(pl.col("t"))).to_series()
    plain = frame.select(
        pl.col("t")
        .str.normalize("NFKC")
        .str.to_lowercase()
        .str.replace_all(r"[^\w\s]|_", " ")
        .str.replace_all(r"\s+", " ")
        .str.strip_chars()
    ).to_series()
    assert fast.to_list() == plain.to_list()
    in_lists = frame.select(pl.concat_list("t").list.eval(simplified(pl.element()))).to_series()
    assert [row[0] for row in in_lists.to_list()] == plain.to_list()
