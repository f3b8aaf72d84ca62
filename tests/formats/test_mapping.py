import pytest

from orpo_pipeline.errors import ConfigError
from orpo_pipeline.formats import FieldMapping, load_mapping
from tests.formats.conftest import texts, user


def test_preference_mapping_with_nested_fields(convert):
    rows = [
        {"meta": {"q": "Capital of France?"}, "good": "Paris.", "bad": "Lyon.", "sys": "Be brief."}
    ]
    mapping = load_mapping("{prompt: meta.q, chosen: good, rejected: bad, system: sys}")
    result = convert(rows, mapping=mapping)
    assert result.format == "mapping"
    assert result.kind == "preference"
    assert result.pairs.row(0, named=True)["prompt"] == [
        {"role": "system", "content": "Be brief."},
        user("Capital of France?"),
    ]
    assert texts(result) == [("Paris.", "Lyon.")]


def test_ranked_mapping_with_parallel_fields(convert):
    rows = [{"q": "Pick", "r1": "meh", "r2": "great", "r3": "bad", "s1": "3", "s2": 9, "s3": "N/A"}]
    mapping = FieldMapping(prompt="q", responses=("r1", "r2", "r3"), scores=("s1", "s2", "s3"))
    result = convert(rows, mapping=mapping, rejected="worst")
    assert result.kind == "ranked"
    assert texts(result) == [("great", "meh")]


def test_ranked_mapping_with_a_list_of_objects_and_ranks(convert):
    rows = [{"q": "Pick", "cands": [{"t": "second", "r": 2}, {"t": "first", "r": 1}]}]
    mapping = FieldMapping(prompt="q", responses=("cands",), response_text="t", ranks=("r",))
    assert texts(convert(rows, mapping=mapping)) == [("first", "second")]


def test_pairwise_mapping_with_winner_values(convert):
    rows = [
        {"q": "Pick", "x": "left", "y": "right", "verdict": "B"},
        {"q": "Pick 2", "x": "left", "y": "right", "verdict": 1.0},
        {"q": "Pick 3", "x": "left", "y": "right", "verdict": "draw"},
        {"q": "Pick 4", "x": "left", "y": "right", "verdict": "??"},
    ]
    mapping = load_mapping(
        "{prompt: q, responses: [x, y], winner: verdict,"
        " winner_values: {A: a, B: b, '1': a, draw: tie}}"
    )
    result = convert(rows, mapping=mapping)
    assert result.kind == "pairwise"
    assert texts(result) == [("right", "left"), ("left", "right")]
    assert result.reject_counts() == {"tie": 1, "unknown_winner": 1}


def test_sft_mapping(convert):
    rows = [{"question": "Say hi", "answer": "Hello there friend"}]
    mapping = FieldMapping(prompt="question", response="answer")
    result = convert(rows, mapping=mapping, negatives="truncated")
    assert result.kind == "sft"
    assert texts(result) == [("Hello there friend", "Hello")]


def test_missing_mapped_field_names_the_field(convert):
    result = convert(
        [{"q": "x", "good": "y"}], mapping=FieldMapping(prompt="q", chosen="good", rejected="bad")
    )
    assert result.rejects.select("reason", "detail").row(0) == (
        "missing_field",
        "field 'bad' is missing or null",
    )


def test_mapping_from_a_yaml_file(tmp_path):
    path = tmp_path / "mapping.yaml"
    path.write_text("prompt: q\nchosen: a\nrejected: b\n")
    assert load_mapping(str(path)) == FieldMapping(prompt="q", chosen="a", rejected="b")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{prompt: q}", "exactly one answer layout"),
        ("{prompt: q, chosen: a}", "go together"),
        ("{prompt: q, responses: [a, b]}", "exactly one of `scores`"),
        ("{prompt: q, responses: [a, b], winner: w}", "winner_values"),
        ("{prompt: q, responses: [a, b], scores: [s]}", "one score or rank field"),
        ("{prompt: q, chosen: a, rejected: b, colour: red}", "colour"),
        ("[prompt, q]", "should map names to fields"),
        ("{prompt: [", "not valid YAML"),
    ],
)
def test_invalid_mappings_explain_themselves(text, message):
    with pytest.raises(ConfigError, match=message):
        load_mapping(text)


def test_record_model_rules_become_reasons(convert):
    rows = [{"q": [], "answers": ["x", "y"], "s": [1, 2]}]
    mapping = FieldMapping(prompt="q", responses=("answers",), scores=("s",))
    result = convert(rows, mapping=mapping)
    assert result.reject_counts() == {"invalid_record": 1}
    assert result.rejects["detail"][0].startswith("prompt:")
