import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from orpo_pipeline.errors import ConfigError
from orpo_pipeline.exprs import normalized
from orpo_pipeline.stages.base import REASON
from orpo_pipeline.stages.filter import FilterConfig, filter_rows
from tests.stages.conftest import make_pair, pairs_frame

OFF = {"drop_blank": False, "drop_identical": False}
LONG = "This answer is long enough to be judged by how it ends, " * 5


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A whitespace word-level tokenizer trained in-process: one token per word."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.train_from_iterator(
        ["a b c d e f"], trainers.WordLevelTrainer(special_tokens=["<unk>"])
    )
    path = tmp_path_factory.mktemp("tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>").save_pretrained(path)
    return str(path)


def reasons(rows: list[dict], **config) -> list[str | None]:
    return filter_rows(pairs_frame(rows), FilterConfig(**OFF, **config)).collect()[REASON].to_list()


def test_token_rules(tokenizer_dir):
    rows = [
        make_pair("w " * 3, "w " * 4, "w " * 4),
        make_pair("w " * 10, "w " * 4, "w " * 4),
        make_pair("w " * 6, "w " * 4, "w " * 4),
        make_pair("w " * 3, "w " * 1, "w " * 4),
        make_pair("w " * 3, "w " * 4, "w " * 9),
    ]
    result = reasons(
        rows,
        tokenizer=tokenizer_dir,
        max_length=10,
        max_prompt_tokens=5,
        min_response_tokens=2,
        max_response_tokens=8,
    )
    assert result == [
        None,
        "prompt_exceeds_max_length",
        "prompt_too_many_tokens",
        "response_too_few_tokens",
        "response_too_many_tokens",
    ]


def test_token_rules_need_a_tokenizer(tmp_path):
    with pytest.raises(ValidationError, match="max_length count tokens: set `tokenizer`"):
        FilterConfig(max_length=512)
    with pytest.raises(ConfigError, match="no such directory"):
        filter_rows(pairs_frame([]), FilterConfig(tokenizer=str(tmp_path / "nope"), max_length=8))


def test_length_ratio():
    rows = [
        make_pair("q", "a" * 10, "b" * 10),
        make_pair("q", "a" * 40, "b" * 10),
        make_pair("q", "a" * 2, "b" * 10),
    ]
    assert reasons(rows, min_length_ratio=0.5, max_length_ratio=3) == [
        None,
        "length_ratio_above_max",
        "length_ratio_below_min",
    ]


def test_refusals_in_the_chosen_answer_or_in_both():
    rows = [
        make_pair("q", "Sure, here it is.", "No."),
        make_pair("q", "I’m sorry, but I can’t help with that.", "Here you go."),
        make_pair("q", "As an AI language model, I cannot.", "I CANNOT FULFILL that request."),
    ]
    assert reasons(rows, drop_refusals="chosen") == [None, "chosen_is_refusal", "chosen_is_refusal"]
    assert reasons(rows, drop_refusals="both") == [None, None, "both_refuse"]
    assert reasons(rows, drop_refusals="chosen", refusal_phrases=("here it is",)) == [
        "chosen_is_refusal",
        None,
        None,
    ]
    special = make_pair("q", "Costs $5 (or more)? Yes.", "b")
    assert reasons([special], drop_refusals="chosen", refusal_phrases=("$5 (OR MORE)?",)) == [
        "chosen_is_refusal"
    ]
    assert reasons([special], drop_refusals="chosen", refusal_phrases=("$5 (or more)!",)) == [None]


@pytest.mark.parametrize(
    ("answer", "truncated"),
    [
        (LONG + "and so the last sentence stops in the middle of", True),
        (LONG + "It ends properly.", False),
        (LONG + "It ends with a list:\n- one\n- two)", False),
        ("Short answer without a full stop", False),
        ("```python\nprint('unclosed')\n", True),
        ("```python\nprint('closed')\n```", False),
        (LONG + "Steps:", True),
    ],
)
def test_truncated_answers(answer, truncated):
    rows = [make_pair("q", answer, "A fine rejected answer."), make_pair("q", "Fine.", answer)]
    expected = ["response_truncated" if truncated else None] * 2
    assert reasons(rows, drop_truncated=True) == expected


def test_non_letter_ratio_and_character_runs():
    rows = [
        make_pair("What is 2 + 2?", "Two plus two is four.", "It is five."),
        make_pair("q", "$$$ 1234 %%% #### 99", "It is five."),
        make_pair("q", "Wow" + "!" * 30, "It is five."),
        make_pair("q", "Ok", "Well" + " " * 40 + "fine, and ééééééé."),
    ]
    assert reasons(rows, max_non_letter_ratio=0.5) == [
        None,
        "too_many_non_letters",
        "too_many_non_letters",
        None,
    ]
    assert reasons(rows, max_char_run=10) == [None, None, "repeated_character_run", None]


def test_language():
    rows = [
        make_pair(
            "What is the capital of France?",
            "The capital of France is Paris.",
            "It is Lyon, I think.",
        ),
        make_pair(
            "What is the capital of France?",
            "La capitale de la France est Paris.",
            "It is Lyon, I think.",
        ),
    ]
    assert reasons(rows, language="en") == [None, "wrong_language"]
    assert reasons(rows, language="fr") == ["wrong_language", "wrong_language"]


TRICKY_TEXT = st.sampled_from(list("aZ é\u00a0\t\n\r\x0b\x85\u2028\u2003\x1cﬁＡ①."))


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=TRICKY_TEXT, max_size=30))
def test_normalized_fast_path_equals_the_plain_definition(text):
    frame = pl.DataFrame({"t": [text, "plain ascii  text"]})
    fast = frame.select(normalized(pl.col("t"))).to_series()
    plain = frame.select(
        pl.col("t").str.normalize("NFKC").str.replace_all(r"\s+", " ").str.strip_chars()
    ).to_series()
    assert fast.to_list() == plain.to_list()


answers = st.text(alphabet=st.sampled_from(list("ab !.$")), min_size=1, max_size=40)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(answers, answers, st.floats(0, 5), st.floats(0, 5)), min_size=1, max_size=20
    ),
    st.integers(0, 10),
    st.floats(0.2, 5),
    st.floats(0, 1),
    st.integers(2, 10),
    st.floats(0, 3),
)
def test_filters_are_monotone_as_thresholds_tighten(
    rows, min_chars, max_ratio, max_non_letters, max_run, margin
):
    lf = pairs_frame(
        [make_pair("q", c, r, score_chosen=sc, score_rejected=sr) for c, r, sc, sr in rows]
    )

    def kept(**config) -> set[int]:
        result = filter_rows(lf, FilterConfig(**config)).collect()
        return set(result.filter(pl.col(REASON).is_null())["_row"])

    loose = {
        "min_response_chars": min_chars,
        "max_length_ratio": max_ratio,
        "max_non_letter_ratio": max_non_letters,
        "max_char_run": max_run,
        "min_score_margin": margin,
    }
    tight = {
        "min_response_chars": min_chars + 3,
        "max_length_ratio": max_ratio / 2,
        "max_non_letter_ratio": max_non_letters / 2,
        "max_char_run": max_run - 1 if max_run > 2 else 2,
        "min_score_margin": margin + 0.5,
    }
    assert kept(**tight) <= kept(**loose) <= kept()
    for name, value in tight.items():
        assert kept(**{**loose, name: value}) <= kept(**loose)
