"""The vectorised converter (formats/vectorized.py) gives exactly the per-row converter's result:
pairs, ids, rejects, provenance and counts, on real files and on hypothesis-generated rows."""

import gzip
import itertools
import json
import math
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orpo_pipeline.formats import ConversionResult, ConvertOptions, convert_files, vectorized
from tests.conftest import REPO
from tests.formats.conftest import write_jsonl

HH = REPO / "data" / "hh-rlhf-harmless-base" / "test.jsonl.gz"
pytestmark = pytest.mark.usefixtures("small_slices")


def per_row(paths: list[Path], options: ConvertOptions, monkeypatch) -> ConversionResult:
    with monkeypatch.context() as patch:
        patch.setattr(vectorized, "_BUILDERS", {})
        return convert_files(paths, options)


def assert_same(fast: ConversionResult, slow: ConversionResult) -> None:
    assert fast.pairs.schema == slow.pairs.schema
    assert fast.pairs.equals(slow.pairs)
    assert fast.rejects.equals(slow.rejects)
    counts = (
        "rows_in",
        "rows_converted",
        "rows_by_file",
        "blank_lines",
        "markers_changed",
        "pairs_dropped",
        "format",
        "kind",
    )
    assert [getattr(fast, n) for n in counts] == [getattr(slow, n) for n in counts]


def converted_here(path: Path, options: ConvertOptions) -> int:
    """Pairs the vectorised path makes of `path` (every slice)."""
    slices = vectorized.fast_pairs(path, options.format, options, path.name)
    assert slices is not None
    return sum(part.pairs.height for part in slices)


@pytest.mark.parametrize("role_markers", ["split", "keep"])
def test_the_vendored_hh_file_row_for_row(monkeypatch, role_markers):
    monkeypatch.setattr(vectorized, "SLICE_ROWS", 500)
    options = ConvertOptions(format="hh_rlhf", role_markers=role_markers)
    fast = convert_files([HH], options)
    assert_same(fast, per_row([HH], options, monkeypatch))
    here = converted_here(HH, options)
    if role_markers == "keep":
        assert here > 0.99 * fast.rows_converted
    else:  # the rows with a text that starts with a role label go per row, and only those
        assert fast.markers_changed
        assert here > 0.97 * fast.rows_converted


def test_hh_as_parquet_and_trl_layouts_row_for_row(tmp_path, monkeypatch):
    monkeypatch.setattr(vectorized, "SLICE_ROWS", 128)
    with gzip.open(HH, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle][:600]
    hh = pl.DataFrame(rows)
    hh.write_parquet(tmp_path / "hh.parquet")
    pairs = convert_files([HH], ConvertOptions(format="hh_rlhf")).pairs.head(600)
    answers = pairs.select("prompt", "chosen", "rejected")
    strings = pairs.select(
        pl.col("prompt").list.last().struct.field("content").alias("prompt"),
        pl.col("chosen").list.first().struct.field("content").alias("chosen"),
        pl.col("rejected").list.first().struct.field("content").alias("rejected"),
        pl.Series("score_chosen", [float(i % 7) for i in range(pairs.height)]),
        pl.Series("rating_rejected", list(range(pairs.height))),
    )
    conversations = pairs.select(
        pl.concat_list("prompt", "chosen").alias("chosen"),
        pl.concat_list("prompt", "rejected").alias("rejected"),
        pl.lit("Be brief.").alias("system"),
    )
    files = {
        "hh_rlhf": [tmp_path / "hh.parquet"],
        "trl_preference": [],
    }
    for name, frame in (("answers", answers), ("strings", strings), ("convs", conversations)):
        frame.write_parquet(tmp_path / f"{name}.parquet")
        frame.write_ndjson(tmp_path / f"{name}.jsonl")
        files["trl_preference"] += [tmp_path / f"{name}.parquet", tmp_path / f"{name}.jsonl"]
    for name, paths in files.items():
        for path, role_markers in itertools.product(paths, ("split", "keep")):
            options = ConvertOptions(format=name, role_markers=role_markers)
            assert_same(convert_files([path], options), per_row([path], options, monkeypatch))
            # with "split", rows with a text starting with a role label go per row
            assert converted_here(path, options) >= (590 if role_markers == "keep" else 570), path


# --- hypothesis: rows of every shape the per-row parsers meet ---------------------------------

PIECES = st.sampled_from(
    [
        "\n\nHuman:",
        "\n\nAssistant:",
        "\n\nHuman: hi",
        " ",
        "\n",
        "\t",
        "\x1c",
        "\xa0",
        "\u2028",
        '"',
        "\\",
        "é",
        "😀",
        "word",
        "Human:",
        " Assistant: ",
        ',"chosen":',
        "\\u0041",
    ]
)
ODD_TEXT = st.lists(PIECES, max_size=3).map("".join)
TEXT = st.one_of(
    st.tuples(ODD_TEXT, st.sampled_from(["yes", "no", "a b", "x"]), ODD_TEXT).map("".join),
    st.sampled_from(["yes", "no", "It is.", " padded "]),
    ODD_TEXT,
)
ROLE = st.sampled_from(["user", "assistant", "system", "Assistant", "gpt", "tool", "bogus"])
MESSAGE = st.fixed_dictionaries({"role": ROLE, "content": TEXT})
TURNS = st.lists(st.tuples(TEXT, TEXT), max_size=2).map(
    lambda turns: [
        m for q, a in turns for m in ({"role": "user", "content": q}, {"role": "gpt", "content": a})
    ]
)
MESSAGES = st.one_of(
    st.lists(MESSAGE, min_size=0, max_size=4),
    st.tuples(TURNS, TEXT).map(lambda t: [*t[0], {"role": "user", "content": t[1]}]),
)
SCORE = st.one_of(
    st.none(), st.floats(allow_nan=True), st.integers(-5, 5), st.booleans(), st.just("3")
)


def hh_rows():
    dialogue = st.lists(st.tuples(TEXT, TEXT), max_size=2).map(
        lambda turns: "".join(f"\n\nHuman: {q}\n\nAssistant: {a}" for q, a in turns)
    )
    transcript = st.lists(
        st.tuples(st.sampled_from(["\n\nHuman: ", "\n\nAssistant: ", "\n\nHuman:"]), TEXT),
        max_size=4,
    ).map(lambda turns: "".join(tag + text for tag, text in turns))
    shared = st.tuples(st.one_of(dialogue, transcript), TEXT, TEXT, TEXT).map(
        lambda t: {
            "chosen": f"{t[0]}\n\nHuman: {t[1]}\n\nAssistant: {t[2]}",
            "rejected": f"{t[0]}\n\nHuman: {t[1]}\n\nAssistant: {t[3]}",
        }
    )
    odd = st.fixed_dictionaries(
        {},
        optional={
            "chosen": st.one_of(transcript, st.integers(), st.none()),
            "rejected": st.one_of(transcript, st.none()),
        },
    )
    return st.one_of(shared, shared, shared, odd)


def trl_rows():
    answer = st.builds(lambda t: [{"role": "assistant", "content": t}], TEXT)
    base = st.one_of(
        st.fixed_dictionaries(
            {"prompt": st.one_of(TEXT, st.none(), MESSAGES), "chosen": answer, "rejected": answer}
        ),
        st.fixed_dictionaries(
            {"prompt": st.one_of(TEXT, st.none()), "chosen": TEXT, "rejected": TEXT}
        ),
        st.tuples(MESSAGES, TEXT, TEXT).map(
            lambda t: {
                "chosen": [*t[0], {"role": "assistant", "content": t[1]}],
                "rejected": [*t[0], {"role": "assistant", "content": t[2]}],
            }
        ),
        st.fixed_dictionaries({"chosen": MESSAGES, "rejected": MESSAGES}),
    )
    extra = st.fixed_dictionaries(
        {},
        optional={
            "system": st.one_of(TEXT, st.none(), st.integers()),
            "score_chosen": SCORE,
            "chosen_rating": SCORE,
            "score_rejected": SCORE,
        },
    )
    return st.tuples(base, extra).map(lambda t: {**t[0], **t[1]})


def jsonl(rows: list[dict]) -> str:
    """JSON Lines with a blank line (or one of spaces) after every third row."""
    lines = []
    for index, row in enumerate(rows):
        lines.append(json.dumps(row, ensure_ascii=index % 2 == 0))
        if index % 3 == 2:
            lines.append(" \t" if index % 2 else "")
    return "\n".join(lines) + "\n"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(hh_rows(), min_size=1, max_size=12))
def test_hh_rows_row_for_row(tmp_path, monkeypatch, rows):
    path = tmp_path / "hh.jsonl"
    path.write_text(jsonl(rows), encoding="utf-8")
    for role_markers in ("split", "keep"):
        options = ConvertOptions(format="hh_rlhf", role_markers=role_markers)
        assert_same(convert_files([path], options), per_row([path], options, monkeypatch))


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(trl_rows(), min_size=1, max_size=12))
def test_trl_rows_row_for_row(tmp_path, monkeypatch, rows):
    path = tmp_path / "trl.jsonl"
    path.write_text(jsonl(rows), encoding="utf-8")
    for role_markers in ("split", "keep"):
        options = ConvertOptions(format="trl_preference", role_markers=role_markers)
        assert_same(convert_files([path], options), per_row([path], options, monkeypatch))
    typed = [r for r in rows if isinstance(r.get("system"), str | None)]
    for row in typed:  # Parquet needs one type per column
        for key in ("score_chosen", "chosen_rating", "score_rejected"):
            value = row.get(key)
            if not isinstance(value, float) or isinstance(value, bool):
                row[key] = None if value is None or isinstance(value, bool | str) else float(value)
    layouts = {}
    for row in typed:
        kinds = tuple(type(row.get(k)).__name__ for k in ("prompt", "chosen", "rejected"))
        layouts.setdefault(kinds, []).append(row)
    for index, group in enumerate(layouts.values()):
        try:
            frame = pl.DataFrame(group, infer_schema_length=None)
        except (pl.exceptions.PolarsError, TypeError, ValueError):
            continue
        parquet = tmp_path / f"trl-{index}.parquet"
        frame.write_parquet(parquet)
        for role_markers in ("split", "keep"):
            options = ConvertOptions(format="trl_preference", role_markers=role_markers)
            assert_same(convert_files([parquet], options), per_row([parquet], options, monkeypatch))


@pytest.mark.parametrize("value", [math.inf, -0.0, 1e308])
def test_scores_as_python_takes_them(tmp_path, monkeypatch, value):
    row = {
        "prompt": "q",
        "chosen": "a",
        "rejected": "b",
        "score_chosen": value,
        "rejected_score": 2,
    }
    pl.DataFrame([row]).write_parquet(tmp_path / "s.parquet")
    options = ConvertOptions(format="trl_preference")
    paths = [tmp_path / "s.parquet"]
    assert_same(convert_files(paths, options), per_row(paths, options, monkeypatch))


def _vendored_preference_files() -> list[Path]:
    """Every vendored real file whose detected format has a vectorised path."""
    from orpo_pipeline.errors import DataError
    from orpo_pipeline.formats.convert import detect_format

    found = []
    for path in sorted((REPO / "tests" / "data").rglob("*")):
        if not path.name.endswith((".jsonl", ".jsonl.gz", ".parquet")):
            continue
        try:
            if detect_format(path) in vectorized._BUILDERS:
                found.append(path)
        except DataError:
            continue
    return [HH, *found]


@pytest.mark.parametrize("path", _vendored_preference_files(), ids=lambda p: p.name)
def test_every_vendored_preference_file_row_for_row(path, monkeypatch):
    from orpo_pipeline.formats.convert import detect_format

    monkeypatch.setattr(vectorized, "SLICE_ROWS", 256)
    options = ConvertOptions(format=detect_format(path))
    assert_same(convert_files([path], options), per_row([path], options, monkeypatch))


def test_a_field_on_one_line_only_is_checked_on_that_line(tmp_path, monkeypatch):
    """The JSON checks look only at fields some line has: a rare field with the wrong type (or
    a field name that is only a string value) still sends just its own line per row."""
    rows = [{"prompt": f"q{i}", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(40)]
    rows[3]["chosen-rating"] = "9"
    rows[7]["system"] = 5
    rows[11]["rejected_score"] = 2
    rows[15]["prompt"] = '"score_chosen": "x"'
    rows[19]["prompt"] = [{"role": "user", "content": "hi"}]
    path = tmp_path / "trl.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    options = ConvertOptions(format="trl_preference")
    fast = convert_files([path], options)
    assert_same(fast, per_row([path], options, monkeypatch))
    assert converted_here(path, options) >= 36
    assert fast.pairs.filter(pl.col("_line") == 12)["score_rejected"].to_list() == [2.0]


def test_a_parquet_file_broken_after_its_first_slice_fails_as_per_row(tmp_path, monkeypatch):
    """The fast path reads Parquet a slice at a time: a row group that cannot be read after
    converted slices fails the conversion with the per-row reader's message."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from orpo_pipeline.errors import DataError

    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(40)]
    path = tmp_path / "broken.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=10, compression="snappy")
    column = pq.ParquetFile(path).metadata.row_group(3).column(1)
    end = column.data_page_offset + column.total_compressed_size
    data = bytearray(path.read_bytes())
    data[end - 8 : end] = b"\xff" * 8
    path.write_bytes(bytes(data))
    options = ConvertOptions(format="trl_preference")
    with pytest.raises(DataError) as slow:
        per_row([path], options, monkeypatch)
    with pytest.raises(DataError) as fast:
        convert_files([path], options)
    assert str(fast.value) == str(slow.value)
    assert str(path) in str(fast.value)


def test_answer_labels_are_stripped_here_as_per_row(tmp_path, monkeypatch):
    """With role_markers='split' an answer's leading 'Assistant:'/'Human:' label comes off on
    the fast path too, counted as per row; answers blank or alike without it go per row."""
    rows = [
        {"prompt": "q1", "chosen": "Assistant: yes", "rejected": "no"},
        {"prompt": "q2", "chosen": " Human:\tyes ", "rejected": "Assistant:no"},
        {"prompt": "q3", "chosen": "Assistant:  ", "rejected": "x"},  # blank without it
        {"prompt": "q4", "chosen": "Human: same", "rejected": "Assistant: same"},  # alike
        {"prompt": "Human: q5", "chosen": "a", "rejected": "b"},  # a prompt is split per row
        {"prompt": "q6", "chosen": "plain", "rejected": "text"},
    ]
    path = write_jsonl(tmp_path / "labels.jsonl", rows)
    for role_markers in ("split", "keep"):
        options = ConvertOptions(format="trl_preference", role_markers=role_markers)
        fast = convert_files([path], options)
        assert_same(fast, per_row([path], options, monkeypatch))
        assert converted_here(path, options) == (3 if role_markers == "split" else 6)
    assert fast.markers_changed == {}
    split = convert_files([path], ConvertOptions(format="trl_preference"))
    assert split.markers_changed == {"labels_stripped": 7}
    assert split.reject_counts() == {"empty_response": 1, "identical_responses": 1}
