"""Fuzzing the readers and converters: malformed bytes, wrong types, deep nesting, huge lines.

Whatever the input, `convert_files` and `orpo-pipeline convert` either convert it, with every
input row counted once (`rows_in == rows_converted + rows_rejected`) and every rejected row
carrying its file, 1-based line and a reason, or raise one of our errors naming the file. Never a
traceback.
"""

import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from orpo_pipeline.cli import cli
from orpo_pipeline.errors import ConfigError, DataError
from orpo_pipeline.formats import (
    FORMATS,
    ConversionResult,
    ConvertOptions,
    convert_files,
    load_mapping,
    write_pairs,
)
from orpo_pipeline.formats.readers import MAX_NESTING, MAX_RAW_CHARS

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")),  # raise it for a longer hunt
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
REASON = re.compile(r"^[a-z][a-z0-9_]*$")

# ---------------------------------------------------------------------------------------------
# Strategies

# Text with the characters that break naive readers: U+2028/U+0085 (line breaks to str.splitlines),
# \r, NUL, a BOM, astral characters; surrogates are left out (they are no text).
TEXT = st.text(
    alphabet=st.sampled_from(' ab\n\r\t\x00\u2028\u0085\ufeffé😀\\"{[')
    | st.characters(codec="utf-8"),
    max_size=12,
)
WORDS = st.one_of(
    TEXT, st.text(alphabet="abcdefgh \u2028\n", min_size=1, max_size=8).map(lambda text: "w" + text)
)
"""Text that is usually a non-empty answer."""
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.sampled_from([10**400, -(10**400), 2**63])
    | st.floats(allow_nan=True, allow_infinity=True)
    | TEXT,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            TEXT | st.sampled_from(["role", "content", "from", "value", "text"]),
            children,
            max_size=3,
        )
    ),
    max_leaves=8,
)


def _hh(turns: list[str]) -> str:
    tags = ["Human", "Assistant"]
    return "".join(f"\n\n{tags[i % 2]}: {turn}" for i, turn in enumerate(turns))


KIND_FORMATS = {
    "hh": "hh_rlhf",
    "trl": "trl_preference",
    "trl_conv": "trl_preference",
    "alpaca_pref": "alpaca_preference",
    "ultrafeedback": "ultrafeedback",
    "nectar": "nectar",
    "arena": "arena",
    "alpaca_eval": "alpaca_eval",
    "sharegpt": "sharegpt",
    "openai": "openai_messages",
    "kto": "kto",
    "oasst": "oasst",
    "shp": "shp",
    "arena_kaggle": "arena_kaggle",
    "sharegpt_pref": "sharegpt_preference",
    "llamafactory_v1": "llamafactory_v1",
    "alpaca": "alpaca",
    "alpaca_instances": "alpaca",
    "prompt_completion": "prompt_completion",
    "oasst_tree": "oasst",
    "mapping": "mapping",
    "mapping_ranked": "mapping",
    "mapping_list": "mapping",
    "mapping_judge": "mapping",
}
"""Row kinds `valid_rows` draws, and the format that reads them."""

MAPPINGS = {
    "mapping": "{prompt: question, chosen: good, rejected: bad}",
    "mapping_ranked": "{prompt: q, system: sys, responses: [r1, r2], scores: [s1, s2]}",
    "mapping_list": "{prompt: q, responses: [answers], response_text: text, ranks: [rank]}",
    "mapping_judge": "{prompt: q, responses: [ra, rb], winner: w, winner_values: {A: a, B: b, "
    "'1': a, 'null': error}}",
}


@st.composite
def valid_rows(draw: st.DrawFn, kind: str | None = None) -> dict:
    """A row of one of the real formats (or of `kind`), with random, mostly non-empty text."""
    q, a, b, c = (draw(WORDS) for _ in range(4))
    kind = kind or draw(st.sampled_from(sorted(KIND_FORMATS)))
    user, asst = ({"role": "user", "content": q}, {"role": "assistant", "content": a})
    rows = {
        "hh": {"chosen": _hh([q, a]), "rejected": _hh([q, b])},
        "trl": {"prompt": q, "chosen": a, "rejected": b},
        "trl_conv": {"chosen": [user, asst], "rejected": [user, {**asst, "content": b}]},
        "alpaca_pref": {"instruction": q, "input": c, "chosen": a, "rejected": b},
        "ultrafeedback": {
            "instruction": q,
            "completions": [
                {"response": text, "overall_score": draw(JSON_VALUES), "annotations": {}}
                for text in (a, b, c)
            ],
        },
        "nectar": {
            "prompt": _hh([q, ""]),
            "answers": [{"answer": a, "rank": 1}, {"answer": b, "rank": draw(JSON_VALUES)}],
        },
        "arena": {
            "conversation_a": [user, asst],
            "conversation_b": [user, {**asst, "content": b}],
            "winner": draw(st.sampled_from(["model_a", "model_b", "tie", "bogus"])),
        },
        "alpaca_eval": {
            "instruction": q,
            "output_1": a,
            "output_2": b,
            "preference": draw(st.sampled_from([1, 2, 0, None, 1.0, "2", 7])),
        },
        "sharegpt": {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]},
        "openai": {"messages": [{"role": "system", "content": c}, user, asst]},
        "kto": {"messages": [user, asst], "label": draw(st.booleans())},
        "oasst": {
            "message_id": "m0",
            "text": q,
            "role": "prompter",
            "replies": [
                {"message_id": "m1", "text": a, "role": "assistant", "rank": 0, "replies": []},
                {"message_id": "m2", "text": b, "role": "assistant", "rank": 1, "replies": []},
            ],
        },
        "shp": {
            "history": q,
            "human_ref_A": a,
            "human_ref_B": b,
            "score_A": draw(JSON_VALUES),
            "score_B": 3,
            "labels": draw(st.sampled_from([0, 1, None, "1", 2.5])),
        },
        "arena_kaggle": {
            "prompt": json.dumps([q]),
            "response_a": json.dumps([a]),
            "response_b": draw(st.sampled_from([json.dumps([b]), b, [b]])),
            "winner_model_a": 1,
            "winner_model_b": draw(st.sampled_from([0, 1, "1", True])),
            "winner_tie": 0,
        },
        "sharegpt_pref": {
            "conversations": [{"from": "human", "value": q}],
            "chosen": {"from": "gpt", "value": a},
            "rejected": draw(st.sampled_from([b, {"from": "gpt", "value": b}])),
        },
        "llamafactory_v1": {
            "chosen_messages": [
                {"role": "user", "content": [{"type": "text", "value": q}]},
                {"role": "assistant", "content": [{"type": "text", "value": a}]},
            ],
            "rejected_messages": [
                {"role": "user", "content": [{"type": "text", "value": q}]},
                {"role": "assistant", "content": [{"type": "text", "value": b}]},
            ],
        },
        "alpaca": {"instruction": q, "input": c, "output": a, "history": [[b, c]]},
        "alpaca_instances": {"instruction": q, "instances": [{"input": c, "output": a}] * 2},
        "prompt_completion": {"prompt": [user], "completion": [asst]},
        "oasst_tree": {
            "message_tree_id": "t",
            "tree_state": draw(st.sampled_from(["ready_for_export", "growing"])),
            "prompt": {
                "text": q,
                "role": "prompter",
                "replies": [
                    {"text": a, "role": "assistant", "rank": 0, "deleted": False},
                    {"text": b, "role": "assistant", "rank": 1, "review_result": True},
                ],
            },
        },
        "mapping": {"question": q, "good": a, "bad": b},
        "mapping_ranked": {"q": q, "sys": c, "r1": a, "r2": b, "s1": 2, "s2": draw(JSON_VALUES)},
        "mapping_list": {
            "q": [user],
            "answers": [{"text": a, "rank": 1}, {"text": b, "rank": draw(JSON_VALUES)}],
        },
        "mapping_judge": {"q": q, "ra": a, "rb": b, "w": draw(JSON_VALUES | st.sampled_from("AB"))},
    }
    return rows[kind]


@st.composite
def mutated_rows(draw: st.DrawFn, kind: str | None = None) -> dict:
    """A valid row with one value somewhere inside replaced by a random JSON value, or removed."""
    row = draw(valid_rows(kind))
    node = row
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            return row
        key = draw(st.sampled_from(keys))
        child = node[key]
        if isinstance(child, dict | list) and child and draw(st.booleans()):
            node = child
            continue
        if isinstance(node, dict) and draw(st.booleans()):
            del node[key]
        else:
            node[key] = draw(JSON_VALUES)
        return row


INVALID_BYTES = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80"]


@st.composite
def lines(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """One JSONL line (without its newline) and the reason it must be rejected with, if fixed.

    A reason of "" marks a blank line, which is not a row.
    """
    kind = draw(
        st.sampled_from(
            [
                "valid",
                "valid",
                "mutated",
                "mutated",
                "truncated",
                "bad_utf8",
                "surrogate",
                "not_object",
                "deep",
                "blank",
                "bytes",
            ]
        )
    )
    if kind in ("valid", "mutated"):
        row = draw(valid_rows() if kind == "valid" else mutated_rows())
        return json.dumps(row, ensure_ascii=draw(st.booleans())).encode(), None
    if kind == "truncated":
        text = json.dumps(draw(valid_rows()), ensure_ascii=False).encode()
        cut = draw(st.integers(min_value=1, max_value=len(text) - 1))  # keeps the "{"
        try:
            text[:cut].decode("utf-8")
        except UnicodeDecodeError:  # cut inside a multi-byte character
            return text[:cut], "invalid_utf8"
        return text[:cut], "invalid_json"
    if kind == "bad_utf8":
        text = json.dumps(draw(valid_rows()), ensure_ascii=False).encode()
        at = draw(st.integers(min_value=0, max_value=len(text)))
        return text[:at] + draw(st.sampled_from(INVALID_BYTES)) + text[at:], "invalid_utf8"
    if kind == "surrogate":
        escape = draw(st.sampled_from(["\\ud800", "\\udfff", "\\uDC80", "\\ud83d"]))
        where = draw(st.sampled_from(["value", "key"]))
        row = json.dumps(draw(valid_rows()))
        if where == "key":
            return ('{"x' + escape + '": 1, ' + row[1:]).encode(), "invalid_utf8"
        return ('{"x": "a' + escape + 'b", ' + row[1:]).encode(), "invalid_utf8"
    if kind == "not_object":
        value = draw(JSON_VALUES.filter(lambda v: not isinstance(v, dict)))
        text = json.dumps(value, ensure_ascii=False)
        return text.encode(), "not_an_object"
    if kind == "deep":
        depth = draw(st.sampled_from([MAX_NESTING, MAX_NESTING + 1, 999, 10_000]))
        # Beyond the JSON parser's limit the line cannot be read at all; below it the field is
        # set aside and only a format that reads it rejects the row for it.
        reason = "too_deeply_nested" if depth == 10_000 else None
        return ('{"prompt": ' + "[" * depth + "]" * depth + "}").encode(), reason
    if kind == "blank":
        return draw(st.sampled_from([b"", b"   ", b"\t", b"\r", b" \x0b\x0c "])), ""
    noise = draw(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")))
    return noise, ("" if not noise.strip() else None)


@st.composite
def options(draw: st.DrawFn) -> ConvertOptions:
    """Random valid options; the format is detected, given, or a field mapping. No model runs."""
    how = draw(st.sampled_from(["detect", "given", "mapping"]))
    ties = draw(st.sampled_from(["drop", "keep"]))
    knobs = {
        "rejected": draw(st.sampled_from(["random_lower", "worst", "all_lower", "all_pairs"])),
        "ties": ties,
        "min_margin": 0.0 if ties == "keep" else draw(st.sampled_from([0.0, 1.0])),
        "disagreement": draw(st.sampled_from(["drop", "majority"])),
        "negatives": draw(st.sampled_from(["other_prompt", "truncated"])),
        "seed": draw(st.integers(0, 3)),
    }
    if how == "given":
        # llm_judge reads a folder of three files, not rows of one file (tests/formats).
        row_formats = [name for name in FORMATS if name not in ("mapping", "llm_judge")]
        knobs["format"] = draw(st.sampled_from(row_formats))
    if how == "mapping":
        knobs["mapping"] = load_mapping(MAPPINGS["mapping"])
    return ConvertOptions(**knobs)


# ---------------------------------------------------------------------------------------------
# Checks


def row_lines(data: bytes) -> list[int]:
    """1-based numbers of the lines of JSONL bytes that are rows (not blank)."""
    return [number for number, line in enumerate(data.split(b"\n"), start=1) if line.strip()]


def check_result(
    result: ConversionResult,
    rows_per_file: dict[Path, int],
    expected: dict[tuple[str, int], str] | None = None,
) -> None:
    """Counts reconcile, rejects are located and explained, and the result can be written."""
    assert result.rows_in == sum(rows_per_file.values())
    assert result.rows_in == result.rows_converted + result.rows_rejected
    rejects = result.rejects
    files = {str(path) for path in rows_per_file}
    located = list(zip(rejects["file"], rejects["line"], strict=True))
    assert len(set(located)) == len(located), "a row was rejected twice"
    for file, line, reason, detail in rejects.select("file", "line", "reason", "detail").rows():
        assert file in files
        assert line >= 1
        assert REASON.match(reason), reason
        assert detail, (file, line, reason)
    assert all(len(raw) <= MAX_RAW_CHARS for raw in rejects["raw"])
    converted = set(zip(result.pairs["_file"], result.pairs["_line"], strict=True))
    assert not converted & set(located), "a row was both converted and rejected"
    assert len(converted) <= result.rows_converted
    by_line = {
        (file, line): reason
        for file, line, reason in rejects.select("file", "line", "reason").rows()
    }
    for place, reason in (expected or {}).items():
        assert by_line.get(place) == reason, (place, reason, by_line.get(place))
    with tempfile.TemporaryDirectory() as out:
        for suffix in (".parquet", ".jsonl"):
            paths = write_pairs(result, Path(out) / f"pairs{suffix}", allow_empty=True)
            report = json.loads(paths["report"].read_text())
            assert report["counts"]["rows_in"] == result.rows_in
            read = pl.read_parquet if suffix == ".parquet" else pl.read_ndjson
            if result.pairs.height:
                assert read(paths["pairs"]).height == result.pairs.height
            if result.rows_rejected:
                assert read(paths["rejects"]).height == result.rows_rejected


def convert_or_error(paths: list[Path], opts: ConvertOptions) -> ConversionResult | None:
    """`convert_files`, or None after checking that its error is ours and names a file."""
    try:
        result = convert_files(paths, opts)
    except DataError as error:
        assert any(str(path) in str(error) for path in paths), str(error)
        event("DataError")
    except ConfigError as error:  # inputs of different formats
        assert "different formats" in str(error)
        event("ConfigError")
    else:
        event(f"converted ({'with' if result.pairs.height else 'no'} pairs)")
        return result
    return None


def jsonl_file(directory: Path, drawn: list[tuple[bytes, str | None]], name: str) -> tuple:
    """Write drawn lines; return the path, the row count and the fixed reasons by place."""
    data = b"\n".join(line for line, _ in drawn) + b"\n"
    path = directory / name
    path.write_bytes(gzip.compress(data, mtime=0) if name.endswith(".gz") else data)
    expected = {
        (str(path), number): reason for number, (_, reason) in enumerate(drawn, start=1) if reason
    }
    return path, len(row_lines(data)), expected


# ---------------------------------------------------------------------------------------------
# Hypothesis: JSONL, JSON, CSV, gzip


@FUZZ
@given(drawn=st.lists(lines(), min_size=0, max_size=12), opts=options(), gz=st.booleans())
def test_jsonl_lines_are_each_converted_or_rejected_with_their_reason(drawn, opts, gz):
    with tempfile.TemporaryDirectory() as directory:
        name = "data.jsonl.gz" if gz else "data.jsonl"
        path, rows, expected = jsonl_file(Path(directory), drawn, name)
        result = convert_or_error([path], opts)
        if result is not None:
            check_result(result, {path: rows}, expected)


@FUZZ
@given(data=st.data(), kind=st.sampled_from(sorted(KIND_FORMATS)), detect=st.booleans())
def test_each_format_converts_its_rows_and_rejects_broken_ones(data, kind, detect):
    rows = data.draw(
        st.lists(valid_rows(kind) | mutated_rows(kind), min_size=1, max_size=10), label="rows"
    )
    opts = data.draw(options(), label="options")
    fmt = KIND_FORMATS[kind]
    knobs = opts.model_dump(exclude={"format", "mapping"})
    if fmt == "mapping":
        opts = ConvertOptions(**knobs, mapping=load_mapping(MAPPINGS[kind]))
    else:
        opts = ConvertOptions(**knobs, format=None if detect else fmt)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "data.jsonl"
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        result = convert_or_error([path], opts)
        if result is not None:
            check_result(result, {path: len(rows)})


@FUZZ
@given(
    first=st.lists(lines(), min_size=1, max_size=6),
    second=st.lists(lines(), min_size=1, max_size=6),
    opts=options(),
)
def test_several_files_keep_their_own_line_numbers(first, second, opts):
    with tempfile.TemporaryDirectory() as directory:
        a, rows_a, expected_a = jsonl_file(Path(directory), first, "a.jsonl")
        b, rows_b, expected_b = jsonl_file(Path(directory), second, "b.ndjson")
        result = convert_or_error([a, b], opts)
        if result is not None:
            check_result(result, {a: rows_a, b: rows_b}, {**expected_a, **expected_b})


@FUZZ
@given(
    items=st.lists(valid_rows() | mutated_rows() | JSON_VALUES, max_size=10),
    splits=st.booleans(),
    opts=options(),
)
def test_json_documents_count_every_array_item(items, splits, opts):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "data.json"
        document = {"train": items[::2], "test": items[1::2]} if splits and items else items
        path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
        expected = {
            (str(path), number): "not_an_object"
            for number, item in enumerate(
                [*items[::2], *items[1::2]] if splits and items else items, start=1
            )
            if not isinstance(item, dict)
        }
        result = convert_or_error([path], opts)
        if result is not None:
            check_result(result, {path: len(items)}, expected)


CSV_CELL = st.text(
    alphabet=st.sampled_from('ab ,"\n\r\u2028é') | st.characters(codec="utf-8"), max_size=10
).map(str.encode) | st.sampled_from(INVALID_BYTES)


def csv_cell(value: bytes) -> bytes:
    return b'"' + value.replace(b'"', b'""') + b'"'


@FUZZ
@given(
    header=st.sampled_from(
        [
            [b"prompt", b"chosen", b"rejected"],
            [b"instruction", b"chosen", b"rejected"],
            [b"question", b"good", b"bad"],
            [b"instruction", b"output"],
        ]
    ),
    records=st.lists(st.lists(CSV_CELL, min_size=0, max_size=4), max_size=8),
    bom=st.booleans(),
    opts=options(),
)
def test_csv_records_are_each_converted_or_rejected(header, records, bom, opts):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "data.csv"
        lines_ = [b",".join(header)] + [b",".join(map(csv_cell, record)) for record in records]
        path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + b"\r\n".join(lines_) + b"\r\n")
        # Blank lines are not rows; a row's line is where its record starts, counting line
        # breaks the way the csv module reads them (\r\n, \r or \n, also inside quotes).
        rows = [record for record in records if record]
        expected = {
            (str(path), _start_line(lines_, index)): "invalid_utf8"
            for index, record in enumerate(records, start=1)
            if record and not all(_is_utf8(cell) for cell in record)
        }
        result = convert_or_error([path], opts)
        if result is not None:
            check_result(result, {path: len(rows)}, expected)


def _start_line(lines_: list[bytes], index: int) -> int:
    """The 1-based text line where `lines_[index]` starts in the CRLF-joined file."""
    return len(re.findall(rb"\r\n|\r|\n", b"\r\n".join(lines_[:index]) + b"\r\n")) + 1


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@FUZZ
@given(
    drawn=st.lists(lines(), min_size=1, max_size=8),
    damage=st.sampled_from(["truncate", "flip", "append"]),
    at=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    kind=st.sampled_from(["data.jsonl.gz", "data.json.gz"]),
)
def test_damaged_gzip_is_one_error_naming_the_file(drawn, damage, at, kind):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / kind
        rows = [json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}).encode()] * 3
        data = b"\n".join(rows + [line for line, _ in drawn]) + b"\n"
        packed = bytearray(gzip.compress(data, mtime=0))
        position = int(at * len(packed))
        if damage == "truncate":
            packed = packed[:position]
        elif damage == "flip":
            packed[position] ^= 0xFF
        else:
            packed += b"garbage"
        path.write_bytes(bytes(packed))
        opts = ConvertOptions(format="trl_preference")
        result = convert_or_error([path], opts)
        if result is not None:  # a flipped bit gzip could not notice (e.g. in the mtime field)
            rows_in = result.rows_in
            assert rows_in == result.rows_converted + result.rows_rejected


# ---------------------------------------------------------------------------------------------
# Explicit malformed files


PAIR = {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}
GOOD = json.dumps(PAIR).encode()


def _parquet_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "x.parquet"
        pl.DataFrame([PAIR] * 100).write_parquet(path)
        return path.read_bytes()


WHOLE_FILE_ERRORS = {
    "truncated.jsonl.gz": lambda: gzip.compress(GOOD * 500 + b"\n")[:60],
    "truncated.json.gz": lambda: gzip.compress(json.dumps([PAIR] * 100).encode())[:60],
    "plain-text.jsonl.gz": lambda: GOOD + b"\n",
    "empty.json": lambda: b"",
    "whitespace.json": lambda: b"  \n\t \n",
    "deep.json": lambda: b"[" * 10_000 + b"]" * 10_000,
    "big-integer.json": lambda: b"[" + b"9" * 5000 + b"]",
    "scalar.json": lambda: b"42",
    "latin1.json": lambda: b'[{"prompt": "caf\xe9"}]',
    "empty.parquet": lambda: b"",
    "junk.parquet": lambda: b"PAR1 this is not parquet PAR1",
    "truncated.parquet": lambda: _parquet_bytes()[:-20],
    "latin1-header.csv": lambda: b"prompt,chosen,rej\xe9cted\r\nq,a,b\r\n",
}
NO_ROWS = {
    "empty.jsonl": b"",
    "whitespace.jsonl": b"  \n\n\t\r\n",
    "empty.jsonl.gz": b"",
    "empty-member.jsonl.gz": gzip.compress(b"", mtime=0),
}


@pytest.mark.parametrize("name", sorted(WHOLE_FILE_ERRORS))
def test_unreadable_files_are_one_data_error_naming_the_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(WHOLE_FILE_ERRORS[name]())
    for fmt in (None, "trl_preference"):
        with pytest.raises(DataError, match=re.escape(str(path))):
            convert_files([path], ConvertOptions(format=fmt))


@pytest.mark.parametrize("name", sorted(NO_ROWS))
def test_files_without_rows(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(NO_ROWS[name])
    with pytest.raises(DataError, match=f"{re.escape(str(path))}: no known format .*no readable"):
        convert_files([path], ConvertOptions())  # nothing to detect a format from
    check_result(convert_files([path], ConvertOptions(format="trl_preference")), {path: 0})


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".json"])
def test_empty_files_with_a_format_give_zero_rows(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"[]" if suffix == ".json" else b"")
    result = convert_files([path], ConvertOptions(format="trl_preference"))
    check_result(result, {path: 0})
    assert result.pairs.height == 0


def test_deep_nesting_is_rejected_at_its_line(tmp_path):
    path = tmp_path / "deep.jsonl"
    at_limit = "[" * (MAX_NESTING - 1) + "]" * (MAX_NESTING - 1)
    over = "[" * MAX_NESTING + "]" * MAX_NESTING
    path.write_text(
        "\n".join(
            [
                GOOD.decode(),
                "[" * 10_000 + "]" * 10_000,
                '{"prompt": ' + "[" * 10_000 + "]" * 10_000 + ', "chosen": "a", "rejected": "b"}',
                '{"prompt": ' + over + ', "chosen": "a", "rejected": "b"}',
                '{"prompt": ' + at_limit + ', "chosen": "a", "rejected": "b"}',
                '{"prompt": "Hi", "chosen": ' + "[" * 990 + "]" * 990 + ', "rejected": "b"}',
                GOOD.decode(),
            ]
        )
        + "\n"
    )
    result = convert_files([path], ConvertOptions(format="trl_preference"))
    check_result(
        result,
        {path: 7},
        {(str(path), n): "too_deeply_nested" for n in (2, 3, 4, 6)},
    )
    reasons = dict(zip(result.rejects["line"], result.rejects["reason"], strict=True))
    assert reasons[5] != "too_deeply_nested"  # at the limit: read, then rejected for its type
    assert result.rows_converted == 2


def test_a_20_mb_line_is_converted_and_a_20_mb_bad_line_is_rejected_with_4_kb_of_raw(tmp_path):
    big = "x" * 20_000_000
    path = tmp_path / "huge.jsonl"
    path.write_text(
        json.dumps({**PAIR, "chosen": big}) + "\n" + '{"prompt": "' + big + "\n" + GOOD.decode()
    )
    result = convert_files([path], ConvertOptions(format="trl_preference"))
    assert result.pairs["chosen"].list.first().struct.field("content").str.len_chars()[0] == len(
        big
    )
    assert result.rejects.select("line", "reason").rows() == [(2, "invalid_json")]
    assert len(result.rejects["raw"][0]) == MAX_RAW_CHARS
    check_result(result, {path: 3})


def test_a_20_mb_csv_field_is_read(tmp_path):
    path = tmp_path / "huge.csv"
    path.write_text(f"prompt,chosen,rejected\r\nHi,{'y' * 20_000_000},no\r\n")
    result = convert_files([path], ConvertOptions(format="trl_preference"))
    assert (result.rows_in, result.rows_converted) == (1, 1)


def test_mixed_formats_in_one_file(tmp_path):
    hh = {"chosen": _hh(["q", "good"]), "rejected": _hh(["q", "bad"])}
    alpaca = {"instruction": "q", "output": "an answer"}
    sharegpt = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    path = tmp_path / "mixed.jsonl"
    rows = [hh, hh, alpaca, hh, sharegpt, PAIR, hh]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = convert_files([path], ConvertOptions())  # detected: most rows are hh_rlhf
    assert result.format == "hh_rlhf"
    assert sorted(result.rejects["line"]) == [3, 5, 6]
    check_result(result, {path: 7})
    evenly = tmp_path / "evenly.jsonl"
    evenly.write_text("".join(json.dumps(row) + "\n" for row in [hh, alpaca, sharegpt, PAIR]))
    with pytest.raises(DataError, match="no known format matches"):
        convert_files([evenly], ConvertOptions())


def test_bom_and_crlf_are_not_rejects(tmp_path):
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + GOOD + b"\r\n" + GOOD + b"\r\n")
    csv_file = tmp_path / "bom.csv"
    csv_file.write_bytes(b"\xef\xbb\xbfprompt,chosen,rejected\r\nHi,Hello!,Go away.\r\n")
    json_file = tmp_path / "bom.json"
    json_file.write_bytes(b"\xef\xbb\xbf" + json.dumps([PAIR]).encode())
    for path, rows in ((jsonl, 2), (csv_file, 1), (json_file, 1)):
        result = convert_files([path], ConvertOptions())
        assert (result.rows_in, result.rows_converted) == (rows, rows), path.name


def test_lone_surrogates_and_huge_numbers_are_rejected_not_crashes(tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_text(
        "\n".join(
            [
                '{"prompt": "a\\ud800", "chosen": "x", "rejected": "y"}',
                '{"prompt": "\\ud83d\\ude00", "chosen": "x", "rejected": "y"}',  # a valid pair
                '{"prompt": "q", "chosen": "x", "rejected": "y", "score_chosen": '
                + "9" * 400
                + "}",
                '{"prompt": "q", "chosen": "x", "rejected": "y", "n": ' + "9" * 5000 + "}",
            ]
        )
        + "\n"
    )
    result = convert_files([path], ConvertOptions(format="trl_preference"))
    check_result(
        result, {path: 4}, {(str(path), 1): "invalid_utf8", (str(path), 4): "invalid_json"}
    )
    assert result.rows_converted == 2
    assert result.pairs["prompt"][0][0]["content"] == "😀"
    assert result.pairs["score_chosen"].to_list() == [None, None]


def test_parquet_rows_with_bytes_are_rejected_with_readable_raw(tmp_path):
    path = tmp_path / "bytes.parquet"
    pl.DataFrame(
        {"prompt": [b"\xff\xfe", b"ok"], "chosen": ["a", "a"], "rejected": ["b", "b"]}
    ).write_parquet(path)
    result = convert_files([path], ConvertOptions(format="trl_preference"))
    check_result(result, {path: 2})
    assert result.rejects["reason"].to_list() == ["wrong_type", "wrong_type"]


# ---------------------------------------------------------------------------------------------
# Through the CLI


def invoke_convert(args: list[str]):
    result = CliRunner().invoke(cli, ["convert", *args])
    assert "Traceback" not in result.output
    # CliRunner keeps an unexpected exception instead of printing its traceback.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    return result


def summary_counts(output: str) -> dict[str, int]:
    return {
        key: int(value)
        for key, value in re.findall(
            r"^(rows in|rows converted|rows rejected)\s+(\d+)(?: \(.*\))?$", output, re.M
        )
    }


@FUZZ
@given(
    drawn=st.lists(lines(), min_size=0, max_size=10),
    fmt=st.sampled_from([None, "trl_preference", "hh_rlhf", "alpaca", "ultrafeedback"]),
)
@example(  # two judgments of one pair: "rows converted  2 (1 agreeing with ...)"
    drawn=[(b'{"instruction": "00", "output_1": "0", "output_2": "00", "preference": 1}', None)]
    * 2,
    fmt=None,
)
def test_cli_convert_reconciles_or_shows_one_error(drawn, fmt):
    with tempfile.TemporaryDirectory() as directory:
        path, rows, _ = jsonl_file(Path(directory), drawn, "data.jsonl")
        out = Path(directory) / "out" / "pairs.parquet"
        args = [str(path), "-o", str(out), "--negatives", "truncated"]
        result = invoke_convert(args + (["--format", fmt] if fmt else []))
        if result.exit_code == 0:
            counts = summary_counts(result.output)
            assert counts["rows in"] == rows
            assert counts["rows in"] == counts["rows converted"] + counts["rows rejected"]
            report = json.loads((out.parent / "pairs.report.json").read_text())
            assert report["counts"]["rows_rejected"] == counts["rows rejected"]
        else:
            assert result.exit_code == 1
            assert result.output.startswith("Error: ")
            assert str(path) in result.output
            assert not out.exists()


@pytest.mark.parametrize("name", ["truncated.jsonl.gz", "deep.json", "junk.parquet"])
def test_cli_whole_file_errors(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(WHOLE_FILE_ERRORS[name]())
    result = invoke_convert([str(path), "-o", str(tmp_path / "pairs.parquet")])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {path}") or str(path) in result.output
    assert not (tmp_path / "pairs.parquet").exists()


def test_real_process_prints_no_traceback(tmp_path):
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(WHOLE_FILE_ERRORS["truncated.jsonl.gz"]())
    odd = tmp_path / "odd.jsonl"
    odd.write_bytes(
        GOOD + b"\n" + b"[" * 10_000 + b"]" * 10_000 + b"\n\xff\xfe\n" + b'{"a": "\\ud800"}\n'
    )
    for path, code in ((bad, 1), (odd, 0)):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "orpo_pipeline",
                "convert",
                str(path),
                "--format",
                "trl_preference",
                "-o",
                str(tmp_path / "out.jsonl"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == code, done.stderr
        assert "Traceback" not in done.stderr + done.stdout
    assert "rows in         4" in done.stdout
    assert "rows rejected   3" in done.stdout
