import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orpo_pipeline.errors import DataError
from orpo_pipeline.stages import STAGES, AnyStageConfig
from orpo_pipeline.stages.base import REASON, tag_rejects
from orpo_pipeline.stages.dedupe import DedupeConfig, dedupe
from orpo_pipeline.stages.filter import FilterConfig, filter_rows
from orpo_pipeline.stages.split import SPLIT, SplitConfig, split
from orpo_pipeline.stages.validate import ValidateConfig, validate
from tests.stages.conftest import make_pair, pairs_frame


def reasons(lf: pl.LazyFrame) -> list[str | None]:
    return lf.collect()[REASON].to_list()


def test_stage_dict_matches_the_config_union():
    tags = {member.model_fields["stage"].default for member in AnyStageConfig.__origin__.__args__}
    assert tags == set(STAGES)


def test_tag_rejects_names_the_first_failing_rule():
    lf = pl.LazyFrame({"n": [1, 5, 50, None]})
    rules = {"too_small": pl.col("n") > 2, "too_big": pl.col("n") < 10}
    assert reasons(tag_rejects(lf, rules)) == ["too_small", None, "too_big", "too_small"]


def test_validate_tags_each_broken_rule(frame_of):
    good = make_pair("q", "a", "b")
    ends_with_assistant = {**good, "prompt": [{"role": "assistant", "content": "hi"}]}
    two_answers = {**good, "chosen": good["chosen"] * 2}
    user_answer = {**good, "rejected": [{"role": "user", "content": "b"}]}
    blank = make_pair("q", "   ", "b")
    no_prompt = {**good, "prompt": []}
    odd_role = {**good, "prompt": [{"role": "narrator", "content": "x"}]}
    lf = frame_of(good, ends_with_assistant, two_answers, user_answer, blank, no_prompt, odd_role)
    assert reasons(validate(lf, ValidateConfig())) == [
        None,
        "prompt_not_ending_with_user_turn",
        "chosen_not_one_assistant_message",
        "rejected_not_one_assistant_message",
        "blank_message",
        "prompt_empty",
        "unknown_role",
    ]


def test_validate_rejects_a_frame_without_the_pair_schema():
    with pytest.raises(DataError, match="chosen: expected"):
        validate(pl.LazyFrame({"prompt": ["x"]}), ValidateConfig())


def test_filter_reasons_and_thresholds(frame_of):
    lf = frame_of(
        make_pair("q", "Same  answer", "same answer", score_chosen=2, score_rejected=1),
        make_pair("q", "Same answer", "Same answer ", score_chosen=2, score_rejected=1),
        make_pair("q", "ok", "a longer one", score_chosen=2, score_rejected=1),
        make_pair("q", "fine answer", "other answer", score_chosen=2, score_rejected=1.9),
        make_pair("q" * 50, "fine answer", "other answer", score_chosen=5, score_rejected=1),
        make_pair("q", "fine answer", "other answer", score_chosen=5, score_rejected=1),
    )
    config = FilterConfig(min_response_chars=3, max_prompt_chars=20, min_score_margin=0.5)
    assert reasons(filter_rows(lf, config)) == [
        None,
        "chosen_equals_rejected",
        "response_too_short",
        "score_margin_below_min",
        "prompt_too_long",
        None,
    ]
    casefolded = filter_rows(lf, FilterConfig(casefold=True))
    assert reasons(casefolded)[:2] == ["chosen_equals_rejected", "chosen_equals_rejected"]


def test_dedupe_keeps_the_first_row_in_source_order(frame_of):
    rows = [
        make_pair("Hello  world", "a", "b"),
        make_pair("Hello world", "a", "b"),
        make_pair("hello world", "a", "b"),
        make_pair("Hello world", "a", "c"),
    ]
    # Shuffle the physical order: the winner is chosen by `_row`, not by position.
    lf = frame_of(*rows).reverse()
    tagged = dedupe(lf, DedupeConfig()).sort("_row").collect()[REASON].to_list()
    assert tagged == [None, "duplicate", None, None]
    by_prompt = dedupe(lf, DedupeConfig(scope="prompt", casefold=True)).sort("_row").collect()
    assert by_prompt[REASON].to_list() == [None, "duplicate", "duplicate", "duplicate"]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from("xyz")), min_size=1, max_size=30))
def test_dedupe_is_idempotent_and_partitions_the_input(rows):
    lf = pairs_frame([make_pair(p, c, "r") for p, c in rows])
    tagged = dedupe(lf, DedupeConfig()).collect()
    kept = tagged.filter(pl.col(REASON).is_null()).drop(REASON)
    assert kept.height + tagged[REASON].is_not_null().sum() == len(rows)
    assert kept.height == len(set(rows))
    again = dedupe(kept.lazy(), DedupeConfig()).collect()
    assert again[REASON].is_null().all()


def test_split_keeps_prompt_groups_together_and_ignores_row_order():
    rows = [make_pair(f"prompt {i % 40}", f"a{i}", f"b{i}") for i in range(200)]
    config = SplitConfig(eval_size=30, seed=3)
    forward = split(pairs_frame(rows), config).collect()
    backward = split(pairs_frame(rows[::-1]), config).collect()
    assert set(forward.filter(pl.col(SPLIT) == "eval")["id"]) == set(
        backward.filter(pl.col(SPLIT) == "eval")["id"]
    )
    prompt = pl.col("prompt").list.first().struct.field("content")
    per_prompt = forward.group_by(prompt.alias("p")).agg(pl.col(SPLIT).n_unique())
    assert per_prompt[SPLIT].max() == 1
    # Groups are 5 pairs each, so at most 30 pairs and at least 25 are held out.
    assert 25 <= (forward[SPLIT] == "eval").sum() <= 30
    other_seed = split(pairs_frame(rows), SplitConfig(eval_size=30, seed=4)).collect()
    assert not other_seed[SPLIT].equals(forward[SPLIT])


def test_split_needs_exactly_one_size():
    with pytest.raises(ValueError, match="exactly one"):
        SplitConfig()
    with pytest.raises(ValueError, match="exactly one"):
        SplitConfig(eval_size=3, eval_fraction=0.1)
