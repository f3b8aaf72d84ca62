"""The vectorised UltraFeedback path (formats/vectorized.py) gives exactly the per-row
converter's result under every ranked option: pairs, ids, rejects, provenance and counts."""

import copy
import itertools
import json
import math
import random

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orpo_pipeline.formats import ConvertOptions, convert_files, vectorized
from orpo_pipeline.formats.ranked import UF_ASPECTS
from tests.formats.conftest import write_jsonl
from tests.formats.test_ranked import UF_ROW, uf_completion
from tests.formats.test_vectorized import assert_same, converted_here, jsonl, per_row

pytestmark = pytest.mark.usefixtures("small_slices")

SOURCES = [
    (None, None),
    ("overall", None),
    ("mean_aspects", None),
    ("aspect", "honesty"),
    ("aspect", "correctness"),  # an aspect the JSON Lines decoder does not know
    ("rank", None),
]
REJECTED = ["random_lower", "worst", "all_lower", "all_pairs"]
KNOBS = [{}, {"ties": "keep"}, {"min_margin": 1.5}, {"seed": 3}]
OPTIONS = [
    {"score_source": source, "aspect": aspect, "rejected": rejected, **KNOBS[(i + j) % 4]}
    for i, (source, aspect) in enumerate(SOURCES)
    for j, rejected in enumerate(REJECTED)
]
"""Every score source with every rejected rule, and each of them with every knob (ties, margin,
another seed): all pairs of the three, in 24 combinations instead of 96."""


def options(knobs: dict, **more) -> ConvertOptions:
    return ConvertOptions(format="ultrafeedback", **knobs, **more)


def realistic_rows(count: int, seed: int = 0) -> list[dict]:
    """Rows shaped like OpenBMB/UltraFeedback: four completions rated on four aspects (strings,
    some 'N/A'), an overall score, ties and repeated answers among them."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        completions = []
        for answer in range(4):
            ratings = [rng.choice(["1", "2", "3", "4", "5", "5", "N/A"]) for _ in UF_ASPECTS]
            text = rng.choice([f"Answer {answer} to {index}: é😀 “quoted”.", "Same answer."])
            overall = rng.choice([1.0, 6.5, 7.0, 7.5, 8.0, 10.0])
            completions.append(uf_completion(text, overall, ratings))
        rows.append(
            {
                "source": "evol_instruct",
                "instruction": f"Question {index}: what is {index} + {index}?\nExplain.",
                "models": ["m"] * 4,
                "completions": completions,
                "correct_answers": ["None"],
            }
        )
    return rows


def test_the_ranked_test_row_and_realistic_rows_under_every_option(tmp_path, monkeypatch):
    monkeypatch.setattr(vectorized, "SLICE_ROWS", 25)  # three slices
    rows = [UF_ROW, *realistic_rows(60)]
    rows[5]["instruction"] = "   "  # rejected per row: empty prompt message
    rows[6]["completions"] = rows[6]["completions"][:1]  # too few completions
    path = write_jsonl(tmp_path / "uf.jsonl", rows)  # (an emoji \u-escaped would go per row)
    parquet = tmp_path / "uf.parquet"
    pl.DataFrame(rows).write_parquet(parquet)
    for knobs in OPTIONS:
        for file in (path, parquet):
            fast = convert_files([file], options(knobs))
            assert_same(fast, per_row([file], options(knobs), monkeypatch))
        if knobs["score_source"] in (None, "overall", "mean_aspects"):
            both = convert_files([path, parquet], options(knobs))
            assert_same(both, per_row([path, parquet], options(knobs), monkeypatch))
            # every converted row took the fast path, on both file kinds
            assert converted_here(path, options(knobs)) == fast.pairs.height > 0
            assert converted_here(parquet, options(knobs)) == fast.pairs.height


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_annotations_as_one_element_lists(tmp_path, monkeypatch, kind):
    rows = realistic_rows(20, seed=1)
    for row in rows:
        for completion in row["completions"]:
            annotations = completion["annotations"]
            completion["annotations"] = {name: [value] for name, value in annotations.items()}
    path = tmp_path / f"uf.{kind}"
    if kind == "jsonl":
        path.write_text(jsonl(rows), encoding="utf-8")
    else:
        pl.DataFrame(rows).write_parquet(path)
    for knobs in ({"score_source": "mean_aspects"}, {"score_source": "overall"}):
        fast = convert_files([path], options(knobs))
        assert_same(fast, per_row([path], options(knobs), monkeypatch))
    # JSON Lines sends listed aspects per row; Parquet has the shape in its schema
    assert converted_here(path, options({})) == (0 if kind == "jsonl" else fast.pairs.height)


def test_repeated_keys_go_per_row(tmp_path, monkeypatch):
    """Python's json keeps a repeated key's last value, Polars the first: such lines must be
    converted per row (each would otherwise give other pairs here)."""
    good = {
        "response": "Good.",
        "overall_score": 9,
        "model": "m",
        "annotations": {"honesty": {"Rating": "5"}},
    }
    bad = {"response": "Bad.", "overall_score": 2, "annotations": {"honesty": {"Rating": "1"}}}
    line = json.dumps({"instruction": "q", "completions": [good, bad]})
    edits = [
        ("", ""),
        ('"overall_score": 9', '"overall_score": 9, "overall_score": 1'),
        ('"Rating": "5"}', '"Rating": "5", "Rating": "0"}'),
        ('"honesty": {"Rating": "5"}', '"honesty": {"Rating": "5"}, "honesty": {}'),
        ('"model": "m"', '"annotations": {}'),
        ('"response": "Good."', '"response": "Good.", "response": "Bad."'),
        ('"Good."', "7"),  # a number Polars would decode as the string "7"
        ('"honesty": {"Rating": "5"}', '"correctness": {"Rating": "5"}'),  # not decoded here
        ('"q", "completions"', '"q", "instruction": "r", "completions"'),
        ('"annotations": {"honesty": {"Rating": "1"}}', '"annotations": null'),
    ]
    lines = [line.replace(old, new) for old, new in edits]
    path = tmp_path / "uf.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for knobs in (
        {},
        {"score_source": "mean_aspects"},
        {"score_source": "aspect", "aspect": "honesty"},
    ):
        fast = convert_files([path], options(knobs))
        assert_same(fast, per_row([path], options(knobs), monkeypatch))
        assert converted_here(path, options(knobs)) == 1  # only the first line


# --- hypothesis: rows of every shape parse_ultrafeedback meets --------------------------------

TEXT = st.lists(
    st.sampled_from(
        [
            "word",
            "Same.",
            " ",
            "\n",
            "\x1c",
            "\xa0",
            "\u2028",
            "é",
            "😀",
            '"',
            "\\",
            "Human:",
            "Assistant: ",
            '"Rating": "1",',
            ',"response":',
        ]
    ),
    max_size=3,
).map("".join)
ODD_NUMBER = st.one_of(
    st.none(),
    st.sampled_from(["4.5", " 4", "-0", "1e3", "abc", "٤", "", "07", "1" * 20]),
    st.sampled_from([1, 3, 4.5, -0.0, 0, True, 10**20]),
    st.floats(allow_nan=True, allow_infinity=True),
)


def weighted(common, rare, times: int = 4):
    """`common` drawn about `times` times as often as `rare`."""
    return st.integers(0, times).flatmap(lambda draw: rare if draw == 0 else common)


RATING = weighted(st.sampled_from(["1", "2", "3", "4", "5", "N/A", 4]), ODD_NUMBER, times=20)
ANNOTATION = weighted(
    st.fixed_dictionaries(
        {"Rating": RATING}, optional={"Rationale": weighted(st.just("Ok."), TEXT)}
    ),
    st.one_of(
        st.builds(lambda rating: [{"Rating": rating}], RATING),
        st.sampled_from([{}, [], "5", None, [5], {"Rationale": "no rating"}]),
    ),
    times=40,
)
ASPECTS = weighted(
    st.fixed_dictionaries(dict.fromkeys(UF_ASPECTS, ANNOTATION)),
    st.dictionaries(st.sampled_from([*UF_ASPECTS, "correctness"]), ANNOTATION, max_size=5),
    times=8,
)
ANSWER = weighted(st.sampled_from(["A.", "B.", " B. ", "C.", "Same.", "é 😀", "D\\"]), TEXT)
GOOD_COMPLETION = st.fixed_dictionaries(
    {
        "response": ANSWER,
        "overall_score": weighted(st.sampled_from([1.0, 2, 7.5, "8", 10.0]), ODD_NUMBER, 8),
        "annotations": ASPECTS,
    },
    optional={"model": st.just("m")},
)
ODD_COMPLETION = st.one_of(
    st.fixed_dictionaries(
        {"response": st.one_of(ANSWER, st.none(), st.just(3))},
        optional={
            "overall_score": ODD_NUMBER,
            "annotations": st.one_of(ASPECTS, st.sampled_from([None, [], "x"])),
        },
    ),
    st.sampled_from([None, "text"]),
)


ROW = st.fixed_dictionaries(
    {
        "instruction": weighted(
            st.text(max_size=5).map("Q ".__add__), st.one_of(TEXT, st.none(), st.just(7))
        ),
        "completions": weighted(
            st.lists(weighted(GOOD_COMPLETION, ODD_COMPLETION, 8), min_size=2, max_size=5),
            st.one_of(st.lists(ODD_COMPLETION, max_size=2), st.none()),
        ),
    },
    optional={"source": st.just("sharegpt")},
)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(ROW, min_size=1, max_size=10), knobs=st.sampled_from(OPTIONS))
def test_any_rows_row_for_row(tmp_path, monkeypatch, rows, knobs):
    path = tmp_path / "uf.jsonl"
    path.write_text(jsonl(rows), encoding="utf-8")
    for role_markers in ("split", "keep"):
        chosen = options(knobs, role_markers=role_markers)
        assert_same(convert_files([path], chosen), per_row([path], chosen, monkeypatch))


WELL_FORMED = st.lists(
    st.tuples(
        st.sampled_from(["A.", "B.", "C.", "D.", " B. ", "é 😀", "x\\y"]),
        st.sampled_from([1.0, 2.5, 7, 7.5, 10.0, None]),
        st.lists(st.sampled_from(["1", "3", "5", "N/A", 4]), min_size=4, max_size=4),
    ),
    min_size=2,
    max_size=5,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    drawn=st.lists(st.tuples(st.text(min_size=1, max_size=8), WELL_FORMED), min_size=1, max_size=8),
    knobs=st.sampled_from(OPTIONS),
)
def test_well_formed_rows_take_the_fast_path(tmp_path, monkeypatch, drawn, knobs):
    """JSON Lines and Parquet; every converted row of these takes the fast path (when the
    instruction holds no character the two paths strip differently)."""
    rows = [
        {
            "instruction": "Q " + question,
            "completions": [
                # an explicit `"overall_score": null` goes per row (it might hide a repeat)
                {k: v for k, v in uf_completion(text, score, ratings).items() if v is not None}
                for text, score, ratings in answers
            ],
        }
        for question, answers in drawn
    ]
    path = write_jsonl(tmp_path / "uf.jsonl", rows)
    parquet = tmp_path / "uf.parquet"
    typed = copy.deepcopy(rows)
    for row in typed:  # Parquet needs one type per column
        for completion in row["completions"]:
            if "overall_score" in completion:
                completion["overall_score"] = float(completion["overall_score"])
            for annotation in completion["annotations"].values():
                annotation["Rating"] = str(annotation["Rating"])
    pl.DataFrame(typed).write_parquet(parquet)
    plain = not any(ch in "\x1c\x1d\x1e\x1f\x00\x01" for q, _ in drawn for ch in q) and not any(
        q.lstrip().startswith(("Human:", "Assistant:")) for q, _ in drawn
    )
    for file in (path, parquet):
        chosen = options(knobs)
        fast = convert_files([file], chosen)
        assert_same(fast, per_row([file], chosen, monkeypatch))
        if plain and knobs["score_source"] != "rank" and knobs.get("aspect") != "correctness":
            assert converted_here(file, chosen) == fast.pairs.height


def _parquet_rows(rating, overall) -> list[dict]:
    """Rows for a Parquet file whose ratings and overall scores take the given values in turn,
    with null completions, responses, annotations and aspects among them."""
    values = itertools.cycle(rating)
    scores = itertools.cycle(overall)
    rows = []
    for index in range(24):
        completions = [
            {
                "response": ["A.", "B.", " B. ", "C.", "D."][(index + k) % 5],
                "overall_score": next(scores),
                "annotations": {name: {"Rating": next(values)} for name in UF_ASPECTS},
            }
            for k in range(4)
        ]
        if index % 6 == 1:
            completions[1] = None
        if index % 6 == 2:
            completions[2]["response"] = None
        if index % 6 == 3:
            completions[0]["annotations"] = None
        if index % 6 == 4:
            completions[3]["annotations"]["honesty"] = None
        rows.append({"instruction": f"Q{index % 7}", "completions": completions})
    return rows


PARQUET_VALUES = {
    pl.Float64: [4.0, math.nan, math.inf, 4.5, None, 2.0, -0.0, 5.0],
    pl.Float32: [7.5, None, 2.25, math.nan, 9.0],
    pl.Int64: [7, None, 3, 10],
    pl.Int32: [1, 5, None, 3, 4],
    pl.String: ["7.5", "N/A", "9", "-0.5", "2", "10"],
    pl.Boolean: [True, False, None],
}
ODD_STRINGS = ["7.5", " 4", "-0", "1e3", "abc", "9", "2", "N/A"]
"""Strings only Python's `float` reads (or reads as -0.0): their rows go per row."""


@pytest.mark.parametrize(
    ("rating", "overall", "odd"),
    [
        (pl.Float64, pl.Int64, False),
        (pl.Int32, pl.String, False),
        (pl.String, pl.Float32, False),
        (pl.Int32, pl.String, True),
        (pl.Boolean, pl.Boolean, False),
    ],
    ids=str,
)
def test_parquet_column_types_as_python_reads_them(tmp_path, monkeypatch, rating, overall, odd):
    overall_values = ODD_STRINGS if odd else PARQUET_VALUES[overall]
    rows = _parquet_rows(PARQUET_VALUES[rating], overall_values)
    aspect = pl.Struct({"Rating": rating})
    completion = pl.Struct(
        {
            "response": pl.String,
            "overall_score": overall,
            "annotations": pl.Struct(dict.fromkeys(UF_ASPECTS, aspect)),
        }
    )
    schema = {"instruction": pl.String, "completions": pl.List(completion)}
    path = tmp_path / "uf.parquet"
    pl.DataFrame(rows, schema=schema).write_parquet(path)
    for knobs in OPTIONS[::5]:
        fast = convert_files([path], options(knobs))
        assert_same(fast, per_row([path], options(knobs), monkeypatch))
    # rows with a null completion or response are rejected per row; booleans are no scores
    here = converted_here(path, options({"score_source": "overall"}))
    assert here == 0 if overall == pl.Boolean or odd else here >= 10


@pytest.mark.parametrize(
    "shape", ["no annotations", "null annotations", "no overall_score", "string aspect"]
)
def test_parquet_and_jsonl_shapes_with_parts_missing(tmp_path, monkeypatch, shape):
    rows = realistic_rows(12, seed=2)
    for row in rows:
        for completion in row["completions"]:
            if shape == "no annotations":
                del completion["annotations"]
            elif shape == "null annotations":
                completion["annotations"] = None
            elif shape == "no overall_score":
                del completion["overall_score"]
            else:
                completion["annotations"]["honesty"] = "5"
    jsonl_path = write_jsonl(tmp_path / "uf.jsonl", rows)
    parquet = tmp_path / "uf.parquet"
    pl.DataFrame(rows).write_parquet(parquet)
    for path, knobs in itertools.product((jsonl_path, parquet), OPTIONS[::3]):
        fast = convert_files([path], options(knobs))
        assert_same(fast, per_row([path], options(knobs), monkeypatch))
    source = "mean_aspects" if shape == "no overall_score" else "overall"
    for path in (jsonl_path, parquet):
        fast = convert_files([path], options({"score_source": source}))
        here = converted_here(path, options({"score_source": source}))
        # JSON Lines: an aspect "5" fails the decode, an explicit null might hide a repeat
        odd_json = shape in ("string aspect", "null annotations") and path == jsonl_path
        assert here == (0 if odd_json else fast.pairs.height)
