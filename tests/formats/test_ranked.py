import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orpo_pipeline.formats import ConvertOptions
from orpo_pipeline.formats.ranked import ranked_pairs
from orpo_pipeline.formats.rows import RowError
from orpo_pipeline.records import Completion, RankedRecord
from tests.formats.conftest import texts, user


def uf_completion(response: str, overall, ratings) -> dict:
    aspects = ("instruction_following", "honesty", "truthfulness", "helpfulness")
    return {
        "model": "m",
        "response": response,
        "overall_score": overall,
        "annotations": {
            name: {"Rating": str(rating), "Rationale": "..."}
            for name, rating in zip(aspects, ratings, strict=True)
        },
    }


UF_ROW = {
    "source": "evol_instruct",
    "instruction": "Name a colour.",
    "completions": [
        uf_completion("Red.", 6.0, [5, 4, 4, 4]),
        uf_completion("Blue.", 9.0, [3, 3, "N/A", 3]),
        uf_completion("Green.", 3.0, [2, 2, 2, 2]),
        uf_completion("Potato.", 1.0, ["N/A", "N/A", "N/A", "N/A"]),
    ],
}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"score_source": "overall", "rejected": "worst"}, ("Blue.", "Potato.", 9.0, 1.0)),
        # "N/A" is missing, not zero: Blue's mean is 3, Potato has no mean and is left out.
        ({"score_source": "mean_aspects", "rejected": "worst"}, ("Red.", "Green.", 4.25, 2.0)),
        (
            {"score_source": "aspect", "aspect": "honesty", "rejected": "worst"},
            ("Red.", "Green.", 4.0, 2.0),
        ),
    ],
)
def test_ultrafeedback_score_sources(convert, options, expected):
    result = convert([UF_ROW], **options)
    assert result.format == "ultrafeedback"
    pair = result.pairs.row(0, named=True)
    assert pair["prompt"] == [user("Name a colour.")]
    got = (
        pair["chosen"][0]["content"],
        pair["rejected"][0]["content"],
        pair["score_chosen"],
        pair["score_rejected"],
    )
    assert got == expected


def test_ultrafeedback_all_pairs_and_all_lower(convert):
    all_pairs = convert([UF_ROW], rejected="all_pairs")
    assert all_pairs.pairs.height == 6  # C(4, 2), no ties
    all_lower = convert([UF_ROW], rejected="all_lower")
    assert {chosen for chosen, _ in texts(all_lower)} == {"Blue."}
    assert all_lower.pairs.height == 3
    assert all_lower.rows_converted == 1


def test_ultrafeedback_annotation_as_one_element_list(convert):
    row = {
        "instruction": "Q",
        "completions": [
            {"response": "A", "annotations": {"helpfulness": [{"Rating": "5"}]}},
            {"response": "B", "annotations": {"helpfulness": [{"Rating": "2"}]}},
        ],
    }
    result = convert([row], score_source="mean_aspects")
    assert texts(result) == [("A", "B")]


def test_nectar_rank_one_is_chosen(convert):
    # Regression (axolotl dpo/zephyr.py::nectar): the two worst answers, worst as chosen.
    row = {
        "prompt": "\n\nHuman: Tell me a joke.\n\nAssistant:",
        "answers": [
            {"answer": "Third", "model": "m3", "rank": 3},
            {"answer": "First", "model": "m1", "rank": 1},
            {"answer": "Second", "model": "m2", "rank": 2.0},
        ],
        "turns": 1,
        "num_responses": 3,
        "source": ["anthropic-hh"],
        "good_natured": True,
    }
    result = convert([row], rejected="worst")
    assert result.format == "nectar"
    pair = result.pairs.row(0, named=True)
    assert pair["prompt"] == [user("Tell me a joke.")]
    assert texts(result) == [("First", "Third")]
    assert (pair["score_chosen"], pair["score_rejected"]) == (-1.0, -3.0)


def shp_row(labels: int, score_a: int, score_b: int) -> dict:
    return {
        "post_id": "p1",
        "domain": "askscience",
        "upvote_ratio": 0.98,
        "history": "Why is the sky blue?",
        "c_root_id_A": "a",
        "c_root_id_B": "b",
        "created_at_utc_A": 2,
        "created_at_utc_B": 1,
        "score_A": score_a,
        "score_B": score_b,
        "human_ref_A": "Rayleigh scattering.",
        "human_ref_B": "Because it is.",
        "labels": labels,
        "seconds_difference": 1.0,
        "score_ratio": max(score_a, score_b) / min(score_a, score_b),
    }


def test_shp_labels_and_scores(convert):
    result = convert([shp_row(1, 30, 10), shp_row(0, 4, 12), shp_row(1, 3, 12)])
    assert result.format == "shp"
    assert texts(result) == [
        ("Rayleigh scattering.", "Because it is."),
        ("Because it is.", "Rayleigh scattering."),
    ]
    assert result.reject_counts() == {"labels_disagree_with_scores": 1}


def oasst_message(text: str, role: str, rank=None, replies=(), **extra) -> dict:
    return {
        "message_id": text,
        "text": text,
        "role": role,
        "rank": rank,
        "replies": list(replies),
        **extra,
    }


def test_oasst_tree_gives_pairs_per_prompter_node(convert):
    follow_up = oasst_message(
        "Why?",
        "prompter",
        replies=[
            oasst_message("Because.", "assistant", rank=1),
            oasst_message("Physics.", "assistant", rank=0),
            oasst_message("Deleted.", "assistant", rank=2, deleted=True),
        ],
    )
    root = oasst_message(
        "Sky colour?",
        "prompter",
        replies=[
            oasst_message("Blue.", "assistant", rank=0, replies=[follow_up]),
            oasst_message("Green.", "assistant", rank=1),
            oasst_message("Unranked.", "assistant"),
        ],
    )
    tree = {"message_tree_id": "t1", "tree_state": "ready_for_export", "prompt": root}
    result = convert([tree, root, {**tree, "tree_state": "growing"}], rejected="worst")
    assert result.format == "oasst"
    assert texts(result) == [("Blue.", "Green."), ("Physics.", "Because.")] * 2
    assert result.pairs.row(1, named=True)["prompt"] == [
        user("Sky colour?"),
        {"role": "assistant", "content": "Blue."},
        user("Why?"),
    ]
    assert result.reject_counts() == {"tree_not_ready": 1}


def test_oasst_tree_without_ranked_siblings(convert):
    root = oasst_message("Hi", "prompter", replies=[oasst_message("Hello", "assistant", rank=0)])
    assert convert([root]).reject_counts() == {"no_ranked_replies": 1}


def record(*scored: tuple[str, float | None]) -> RankedRecord:
    return RankedRecord(
        prompt=[user("Q")], completions=[Completion(content=t, score=s) for t, s in scored]
    )


@pytest.mark.parametrize(
    ("scored", "options", "reason"),
    [
        ((("a", 5.0), ("b", 5.0)), {}, "tie"),
        ((("a", 5.0), ("b", 4.5)), {"min_margin": 1.0}, "margin_below_min"),
        ((("a", 5.0), ("b", None)), {}, "missing_score"),
        ((("a", 5.0), ("a", 3.0)), {}, "too_few_completions"),
        ((("a", 5.0), ("  ", 3.0)), {}, "too_few_completions"),
    ],
)
def test_ranked_rows_without_a_pair(scored, options, reason):
    with pytest.raises(RowError) as caught:
        ranked_pairs(record(*scored), ConvertOptions(**options))
    assert caught.value.reason == reason


def test_ties_keep_allows_equal_scores_once_per_couple():
    options = ConvertOptions(ties="keep", rejected="all_pairs")
    pairs = ranked_pairs(record(("a", 5.0), ("b", 5.0), ("c", 1.0)), options)
    assert sorted((p.chosen, p.rejected) for p in pairs) == [("a", "b"), ("a", "c"), ("b", "c")]


def test_random_lower_position_is_not_fixed():
    # Regression (H4 v1): random.seed(42) inside the per-row function made the "random"
    # rejected the same position for every row.
    picks = set()
    for index in range(40):
        prompt_record = RankedRecord(
            prompt=[user(f"Q{index}")],
            completions=[
                Completion(content=t, score=s) for t, s in [("a", 9), ("b", 2), ("c", 1), ("d", 3)]
            ],
        )
        picks.add(ranked_pairs(prompt_record, ConvertOptions())[0].rejected)
    assert picks == {"b", "c", "d"}


def test_invalid_knob_combinations():
    with pytest.raises(ValueError, match="needs `aspect`"):
        ConvertOptions(score_source="aspect")
    with pytest.raises(ValueError, match="contradicts"):
        ConvertOptions(ties="keep", min_margin=1)


# --- property tests (data-reference §9) ------------------------------------------------------

scores = st.one_of(st.none(), st.integers(0, 4).map(float))
completions_strategy = st.lists(
    st.tuples(st.sampled_from("abcdefg"), scores), min_size=2, max_size=7
)
knobs = st.fixed_dictionaries(
    {
        "rejected": st.sampled_from(["random_lower", "worst", "all_lower", "all_pairs"]),
        "ties": st.sampled_from(["drop", "keep"]),
        "seed": st.integers(0, 3),
    }
)


def pairs_or_reason(scored, options):
    try:
        return ranked_pairs(record(*scored), options)
    except RowError as error:
        return error.reason


@settings(max_examples=200, deadline=None)
@given(scored=completions_strategy, knob=knobs)
def test_pairs_are_ordered_distinct_and_from_the_row(scored, knob):
    options = ConvertOptions(**knob)
    pairs = pairs_or_reason(scored, options)
    if isinstance(pairs, str):
        return
    by_text = {}
    for text, score in scored:
        if score is not None:
            by_text.setdefault(text, score)
    for pair in pairs:
        assert pair.chosen != pair.rejected
        assert pair.score_chosen == by_text[pair.chosen]
        assert pair.score_rejected == by_text[pair.rejected]
        if options.ties == "drop":
            assert pair.score_chosen > pair.score_rejected
        else:
            assert pair.score_chosen >= pair.score_rejected
        if options.rejected != "all_pairs":
            assert pair.score_chosen == max(by_text.values())


@settings(max_examples=100, deadline=None)
@given(scored=completions_strategy, knob=knobs)
def test_pairs_are_deterministic(scored, knob):
    options = ConvertOptions(**knob)
    assert pairs_or_reason(scored, options) == pairs_or_reason(scored, options)


@settings(max_examples=25, deadline=None)
@given(
    rows=st.lists(completions_strategy, min_size=1, max_size=6),
    knob=knobs,
    shuffle_seed=st.integers(0, 1000),
)
def test_output_does_not_depend_on_row_order(tmp_path_factory, rows, knob, shuffle_seed):
    from orpo_pipeline.formats import convert_files
    from tests.formats.conftest import write_jsonl

    lines = [
        {
            "prompt": f"\n\nHuman: Q{index}\n\nAssistant:",
            "answers": [{"answer": t, "rank": None if s is None else int(s)} for t, s in scored],
        }
        for index, scored in enumerate(rows)
    ]
    shuffled = lines[:]
    random.Random(shuffle_seed).shuffle(shuffled)
    folder = tmp_path_factory.mktemp("order")
    results = [
        convert_files([write_jsonl(folder / name, data)], ConvertOptions(format="nectar", **knob))
        for name, data in (("a.jsonl", lines), ("b.jsonl", shuffled))
    ]
    columns = ["id", "score_chosen", "score_rejected"]
    first, second = (result.pairs.select(columns).sort(columns) for result in results)
    assert first.equals(second)
    assert results[0].reject_counts() == results[1].reject_counts()
