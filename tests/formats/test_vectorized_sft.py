"""The vectorised SFT converter (formats/vectorized_sft.py) gives exactly the per-row converter's
result for Alpaca, ShareGPT and OpenAI messages: pairs, ids, rejects, provenance and counts, for
every negatives option, on real files, several files at once and hypothesis-generated rows."""

import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orpo_pipeline.errors import DataError
from orpo_pipeline.formats import (
    ConversionResult,
    ConvertOptions,
    convert_files,
    vectorized,
    vectorized_sft,
)
from orpo_pipeline.formats.convert import detect_format
from orpo_pipeline.formats.vectorized import PY_WHITESPACE
from tests.formats.conftest import TEST_DATA
from tests.formats.test_generate import tiny_model_dir  # noqa: F401 (a fixture)
from tests.formats.test_vectorized import TEXT, assert_same, converted_here, jsonl

SFT_FORMATS = ("alpaca", "sharegpt", "openai_messages")
NEGATIVES = [
    {"negatives": "other_prompt"},
    {"negatives": "other_prompt", "seed": 7},
    {"negatives": "truncated"},
    {"negatives": "truncated", "truncate_fraction": 0.2},
]


def per_row(paths: list[Path], options: ConvertOptions, monkeypatch) -> ConversionResult:
    with monkeypatch.context() as patch:
        patch.setattr(vectorized_sft, "_BUILDERS", {})
        patch.setattr(vectorized, "_BUILDERS", {})
        return convert_files(paths, options)


def fast_share(paths: list[Path], options: ConvertOptions) -> int:
    """Rows whose target the vectorised path found."""
    found = [vectorized_sft.fast_targets(path, options.format, options) for path in paths]
    return sum(fast.targets.height for fast in found if fast is not None)


def _vendored_sft_files() -> list[Path]:
    """Every vendored real file detected as one of the three SFT formats."""
    found = []
    for path in sorted(TEST_DATA.rglob("*")):
        if path.name.endswith((".jsonl", ".jsonl.gz", ".parquet", ".json")) and path.is_file():
            try:
                if detect_format(path) in SFT_FORMATS:
                    found.append(path)
            except DataError:  # not a file of rows
                continue
    return found


VENDORED = _vendored_sft_files()


def test_python_whitespace_is_what_python_strips():
    assert set(PY_WHITESPACE) == {c for c in map(chr, range(0x110000)) if c.isspace()}


def test_the_vendored_sft_files_are_found():
    names = {path.name for path in VENDORED}
    assert {"train.jsonl", "toy_chat_fine_tuning.jsonl", "dummy_conversation.json"} <= names
    assert {"alpaca_en_demo.json", "identity.json", "seed_tasks.jsonl"} <= names


@pytest.mark.parametrize("knobs", NEGATIVES, ids=lambda k: "-".join(map(str, k.values())))
@pytest.mark.parametrize("path", VENDORED, ids=lambda p: p.name)
def test_every_vendored_sft_file_row_for_row(path, knobs, monkeypatch):
    options = ConvertOptions(format=detect_format(path), **knobs)
    fast = convert_files([path], options)
    assert_same(fast, per_row([path], options, monkeypatch))
    if path.name in FAST_ROWS:
        assert fast_share([path], options) == FAST_ROWS[path.name]


FAST_ROWS = {
    "train.jsonl": 10,
    "toy_chat_fine_tuning.jsonl": 4,
    "alpaca_en_demo.json": 200,
    "identity.json": 91,
    "dummy_conversation.json": 500,
    "glaive_toolcall_en_demo.json": 200,
    "v1_sft_demo.jsonl": 200,  # text parts: [{"type": "text", "value": ...}]
    "seed_tasks.jsonl": 0,  # self-instruct instances are read per row
}
"""Rows of each vendored file the vectorised path takes (the others go per row)."""


@pytest.mark.parametrize("knobs", NEGATIVES, ids=lambda k: "-".join(map(str, k.values())))
def test_several_files_at_once_row_for_row(knobs, monkeypatch):
    """The negatives pick across files: fast and per-row targets of every file together (the
    same file twice included)."""
    alpaca = [
        TEST_DATA / "alpaca-response-sft" / "train.jsonl",
        TEST_DATA / "self-instruct" / "data" / "seed_tasks.jsonl",
        TEST_DATA / "llamafactory-demo-data" / "identity.json",
        TEST_DATA / "alpaca-response-sft" / "train.jsonl",
    ]
    options = ConvertOptions(format="alpaca", **knobs)
    fast = convert_files(alpaca, options)
    assert_same(fast, per_row(alpaca, options, monkeypatch))
    assert fast_share(alpaca, options) == 10 + 91 + 10


@pytest.fixture(scope="module")
def real_as_columns(tmp_path_factory) -> dict[str, list[Path]]:
    """The vendored JSON-array files of each format as JSON Lines and Parquet (the file kinds
    the vectorised path reads), with a blank line and a broken row added to the JSON Lines."""
    folder = tmp_path_factory.mktemp("sft")
    sources = {
        "alpaca": [
            "llamafactory-demo-data/alpaca_en_demo.json",
            "llamafactory-demo-data/identity.json",
        ],
        "sharegpt": ["fastchat-dummy-sharegpt/dummy_conversation.json"],
        "openai_messages": ["openai-cookbook-toy-chat/toy_chat_fine_tuning.jsonl"],
    }
    files: dict[str, list[Path]] = {}
    for name, relatives in sources.items():
        for relative in relatives:
            source = TEST_DATA / relative
            text = source.read_text(encoding="utf-8")
            rows = (
                [json.loads(line) for line in text.splitlines()]
                if source.suffix == ".jsonl"
                else json.loads(text)
            )
            stem = source.name.split(".")[0]
            lines = [json.dumps(row, ensure_ascii=i % 2 == 0) for i, row in enumerate(rows)]
            lines[3:3] = ["", '{"broken": ']
            (folder / f"{stem}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
            pl.DataFrame(rows, infer_schema_length=None).write_parquet(folder / f"{stem}.parquet")
            files.setdefault(name, []).extend(
                [folder / f"{stem}.jsonl", folder / f"{stem}.parquet"]
            )
    return files


@pytest.mark.parametrize("knobs", NEGATIVES[:3], ids=lambda k: "-".join(map(str, k.values())))
@pytest.mark.parametrize("name", SFT_FORMATS)
def test_real_rows_as_jsonl_and_parquet_row_for_row(real_as_columns, name, knobs, monkeypatch):
    paths = real_as_columns[name]
    options = ConvertOptions(format=name, **knobs)
    fast = convert_files(paths, options)
    assert_same(fast, per_row(paths, options, monkeypatch))
    for path in paths:  # nearly all rows take the vectorised path
        each = convert_files([path], options)
        assert fast_share([path], options) >= 0.95 * (each.rows_in - 1) - 1, path


def test_model_negatives_row_for_row(tmp_path, monkeypatch, tiny_model_dir):  # noqa: F811
    rows = [
        {"instruction": "tell me a fact about honey", "output": "honey never spoils"},
        {"instruction": "what is the sky colour", "input": "why", "output": "it is blue"},
        {"instruction": "why bees", "output": "bees tell a fact", "system": "be brief"},
        {"instruction": "what is it", "output": ""},
        {"instruction": "fact", "output": "Assistant: the sky"},
    ]
    path = tmp_path / "a.jsonl"
    path.write_text(jsonl(rows), encoding="utf-8")
    knobs = {"negatives": "model", "model": str(tiny_model_dir), "max_new_tokens": 4}
    fast = convert_files(
        [path], ConvertOptions(format="alpaca", cache_dir=tmp_path / "c1", **knobs)
    )
    options = ConvertOptions(format="alpaca", cache_dir=tmp_path / "c2", **knobs)
    assert_same(fast, per_row([path], options, monkeypatch))
    assert fast_share([path], options) == 3


# --- hypothesis: rows of every shape the per-row parsers meet ---------------------------------

ROLE = st.sampled_from(
    ["user", "assistant", "system", "Assistant", "gpt", "human", "tool", "bogus"]
)
LABELLED = st.one_of(TEXT, TEXT.map(lambda t: "Assistant: " + t), st.just(" Human: hi"))
ANSWER = st.one_of(st.sampled_from(["yes", "no", "It is so.", "one two three four"]), LABELLED)
OPTIONAL_TEXT = st.one_of(st.none(), TEXT, st.integers(0, 3))


def alpaca_rows():
    plain = st.fixed_dictionaries(
        {"instruction": st.one_of(TEXT, st.just("Say hi"))},
        optional={
            "input": OPTIONAL_TEXT,
            "system": OPTIONAL_TEXT,
            "output": st.one_of(ANSWER, st.none(), st.integers()),
            "response": ANSWER,
            "history": st.one_of(
                st.none(),
                st.just([]),
                st.lists(st.lists(TEXT, min_size=2, max_size=2), min_size=1, max_size=2),
                st.sampled_from([[["q"]], [["q", 1]], [["q", None]], "q", [["q", "a", "b"]]]),
            ),
            "question": TEXT,
        },
    )
    instances = st.fixed_dictionaries(
        {
            "instruction": TEXT,
            "instances": st.lists(
                st.fixed_dictionaries({"input": TEXT, "output": ANSWER}), max_size=2
            ),
        }
    )
    odd = st.fixed_dictionaries({}, optional={"question": TEXT, "completion": OPTIONAL_TEXT})
    return st.one_of(plain, plain, plain, instances, odd)


def messages(role_key: str, content_key: str):
    message = st.fixed_dictionaries(
        {role_key: ROLE, content_key: st.one_of(TEXT, TEXT, st.none(), st.integers())}
    )
    turns = st.lists(st.tuples(TEXT, ANSWER), min_size=1, max_size=2).map(
        lambda turns: [
            m
            for q, a in turns
            for m in (
                {role_key: "human" if role_key == "from" else "user", content_key: q},
                {role_key: "gpt" if role_key == "from" else "assistant", content_key: a},
            )
        ]
    )
    return st.one_of(turns, turns, st.lists(message, max_size=4))


def sharegpt_rows():
    return st.fixed_dictionaries(
        {"conversations": messages("from", "value")},
        optional={"system": OPTIONAL_TEXT, "id": st.integers()},
    )


def openai_rows():
    part = st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                "type": st.sampled_from(["text", "text", "image_url", None]),
                "text": st.one_of(TEXT, TEXT, st.none(), st.integers()),
                "value": TEXT,
                "content": TEXT,
            },
        ),
        TEXT,
    )
    one_part = st.builds(lambda t: {"type": "text", "text": t}, TEXT)
    content = st.one_of(TEXT, st.lists(part, max_size=3), one_part)
    message = st.fixed_dictionaries(
        {"role": ROLE, "content": content}, optional={"loss_weight": st.floats(0, 1)}
    )
    plain_parts = st.builds(
        lambda q, a, key: [
            {"role": "user", "content": [{"type": "text", key: q}]},
            {"role": "assistant", "content": [{"type": "text", key: a}, {key: "!"}]},
        ],
        TEXT,
        ANSWER,
        st.sampled_from(["text", "value"]),
    )
    conversation = st.one_of(
        messages("role", "content"), plain_parts, st.lists(message, max_size=3)
    )
    return st.fixed_dictionaries({"messages": conversation})


ROWS = {"alpaca": alpaca_rows(), "sharegpt": sharegpt_rows(), "openai_messages": openai_rows()}


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.sampled_from(SFT_FORMATS).flatmap(
        lambda name: st.tuples(st.just(name), st.lists(ROWS[name], min_size=1, max_size=14))
    ),
    st.sampled_from(NEGATIVES),
    st.sampled_from(["split", "keep"]),
)
def test_sft_rows_row_for_row(tmp_path, monkeypatch, case, knobs, role_markers):
    name, rows = case
    rows = rows + rows[:2]  # repeated prompts and answers: the cycle looks further
    half = len(rows) // 2
    paths = [tmp_path / "a.jsonl", tmp_path / "b.json"]
    paths[0].write_text(jsonl(rows[:half]), encoding="utf-8")
    # A JSON array: items on lines of their own, or (one in three) all on one line.
    indent = None if len(rows) % 3 == 0 else 1
    paths[1].write_text(json.dumps(rows[half:], indent=indent), encoding="utf-8")
    options = ConvertOptions(format=name, role_markers=role_markers, **knobs)
    fast = convert_files(paths, options)
    assert_same(fast, per_row(paths, options, monkeypatch))
    try:  # as Parquet, where the rows' types fit in columns (and Arrow reads them)
        pl.DataFrame(rows, infer_schema_length=None).write_parquet(tmp_path / "c.parquet")
        pq.read_table(tmp_path / "c.parquet")
    except (pl.exceptions.PolarsError, pa.ArrowException, TypeError, ValueError, OverflowError):
        return
    paths = [tmp_path / "c.parquet", paths[0]]
    assert_same(convert_files(paths, options), per_row(paths, options, monkeypatch))


SIMPLE = st.sampled_from(["yes", "no", "It is.", " padded ", "é word", "a\tb", 'say "hi"\n'])


def simple_rows(name: str):
    """Rows that are all targets, in plain shapes: each should take the vectorised path."""
    if name == "alpaca":
        return st.fixed_dictionaries(
            {"instruction": SIMPLE, "output": SIMPLE},
            optional={
                "input": st.one_of(SIMPLE, st.just("")),
                "system": SIMPLE,
                "history": st.lists(st.tuples(SIMPLE, SIMPLE), max_size=2),
            },
        )
    role, content, user, bot = (
        ("from", "value", "human", "gpt")
        if name == "sharegpt"
        else ("role", "content", "user", "assistant")
    )
    turns = st.lists(st.tuples(SIMPLE, SIMPLE), min_size=1, max_size=3).map(
        lambda turns: [
            m for q, a in turns for m in ({role: user, content: q}, {role: bot, content: a})
        ]
    )
    key = "conversations" if name == "sharegpt" else "messages"
    return st.fixed_dictionaries({key: turns})


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.sampled_from(SFT_FORMATS).flatmap(
        lambda name: st.tuples(st.just(name), st.lists(simple_rows(name), min_size=2, max_size=20))
    ),
    st.sampled_from(NEGATIVES),
)
def test_well_formed_rows_take_the_fast_path(tmp_path, monkeypatch, case, knobs):
    name, rows = case
    paths = [tmp_path / "a.jsonl", tmp_path / "b.json"]
    paths[0].write_text(jsonl(rows), encoding="utf-8")
    paths[1].write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    options = ConvertOptions(format=name, **knobs)
    fast = convert_files(paths, options)
    assert_same(fast, per_row(paths, options, monkeypatch))
    assert fast_share(paths, options) == 2 * len(rows)


ODD_KEYS = {
    "sharegpt": [
        '{"conversations": [{"from": "human", "value": "q"}, '
        '{"from": "gpt", "from": "human", "value": "a"}]}',
        '{"conversations": [{"from": "human", "value": "q", "value": "r"}, '
        '{"from": "gpt", "value": "a"}]}',
    ],
    "openai_messages": [
        '{"messages": [{"role": "user", "content": "q"}, '
        '{"role": "assistant", "role": "user", "content": "a"}]}',
        '{"messages": [{"role": "user", "content": [{"type": "text", "text": "q", "text": "r"}]}, '
        '{"role": "assistant", "content": "a"}]}',
        '{"messages": [{"role": "user", "content": [{"text": "q", "type": null}]}, '
        '{"role": "assistant", "content": "a"}]}',
    ],
    "alpaca": [
        '{"instruction": "q", "output": "a", "output": "b"}',
        '{"instruction": "q", "output": 5, "response": "b"}',
    ],
}
PLAIN = {
    "sharegpt": {"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}]},
    "openai_messages": {
        "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    },
    "alpaca": {"instruction": "x", "output": "y"},
}


@pytest.mark.parametrize(
    ("name", "line"), [(name, line) for name, lines in ODD_KEYS.items() for line in lines]
)
def test_keys_polars_would_read_otherwise_go_per_row(tmp_path, monkeypatch, name, line):
    """Polars keeps the first of two equal keys and turns numbers into text: such rows go per
    row (and give what the per-row converter gives)."""
    path = tmp_path / "a.jsonl"
    path.write_text(f"{line}\n{json.dumps(PLAIN[name])}\n{line}\n", encoding="utf-8")
    options = ConvertOptions(format=name, negatives="truncated")
    assert_same(convert_files([path], options), per_row([path], options, monkeypatch))
    assert fast_share([path], options) == 1  # the plain row only


@pytest.mark.parametrize("name", ["alpaca", "hh_rlhf"])
def test_a_parquet_file_without_columns(tmp_path, monkeypatch, name):
    """Its rows are empty objects, rejected as the per-row converter rejects them (Arrow takes
    no rows from such a table, which broke the vectorised path)."""
    path = tmp_path / "empty.parquet"
    pl.DataFrame([{}, {}, {}]).write_parquet(path)
    options = ConvertOptions(format=name)
    fast = convert_files([path], options)
    assert_same(fast, per_row([path], options, monkeypatch))
    assert fast.rows_rejected == 3


def test_escaped_astral_characters_take_the_fast_path(tmp_path, monkeypatch):
    """JSON written with ensure_ascii escapes an emoji as a surrogate pair: such lines are read
    here; a lone surrogate escape (which the per-row reader rejects) is not, nor is a text
    that only looks like one behind an escaped backslash fooling the check."""
    texts = {
        "pair": r"\ud83d\ude00 hi",
        "upper": r"\uD83D\uDE00",
        "literal": r"\\ud83d",  # a backslash, then the text 'ud83d'
        "lone high": r"\ud83d x",
        "lone low": r"x \ude00",
        "escaped then lone": r"\\\ud83d",
        "pair then lone": r"\ud83d\ude00\ud83d",
    }
    lines = [
        f'{{"instruction": "Say {name}", "output": "{text} ok"}}' for name, text in texts.items()
    ]
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    options = ConvertOptions(format="alpaca")
    fast = convert_files([path], options)
    assert_same(fast, per_row([path], options, monkeypatch))
    assert fast.reject_counts() == {"invalid_utf8": 4}
    assert fast_share([path], options) == 3


def test_a_trl_message_with_a_key_twice_goes_per_row(tmp_path, monkeypatch):
    """Polars kept the first `role`, Python the last: the vectorised path made a pair the
    per-row converter rejects."""
    line = (
        '{"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "role": "user", '
        '"content": "a"}], "rejected": [{"role": "user", "content": "q"}, '
        '{"role": "assistant", "content": "b"}]}'
    )
    plain = line.replace('"role": "assistant", "role": "user"', '"role": "assistant"')
    path = tmp_path / "trl.jsonl"
    path.write_text(f"{line}\n{plain}\n", encoding="utf-8")
    options = ConvertOptions(format="trl_preference")
    fast = convert_files([path], options)
    assert_same(fast, per_row([path], options, monkeypatch))
    assert fast.reject_counts() == {"diverges_before_last_turn": 1}
    assert converted_here(path, options) == 1
