import csv
import gzip
import json

import datasets
import polars as pl
import pytest

from orpo_pipeline.errors import DataError
from orpo_pipeline.formats.readers import MAX_RAW_CHARS, BadRow, BlankLine, SourceRow, read_rows

PAIR = {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}


def test_jsonl_splits_on_newline_only(tmp_path):
    # Regression (arena-hard-auto v2.0): U+2028 inside a JSON string is not a line break.
    path = tmp_path / "rows.jsonl"
    text = json.dumps({**PAIR, "prompt": "a\u2028b\u0085c"}, ensure_ascii=False)
    path.write_text(text + "\n" + json.dumps(PAIR) + "\n", encoding="utf-8")
    rows = list(read_rows(path))
    assert [row.line for row in rows] == [1, 2]
    assert rows[0].value["prompt"] == "a\u2028b\u0085c"


def test_bad_lines_become_bad_rows_with_reasons(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(
        json.dumps(PAIR).encode()
        + b"\n{not json}\n\n   \n[1, 2]\n"
        + b'{"prompt": "caf\xe9"}\n'
        + json.dumps(PAIR).encode()
        + b"\r\n"
    )
    rows = list(read_rows(path))
    assert [(row.line, row.reason) for row in rows if isinstance(row, BadRow)] == [
        (2, "invalid_json"),
        (5, "not_an_object"),
        (6, "invalid_utf8"),
    ]
    assert [row.line for row in rows if isinstance(row, SourceRow)] == [1, 7]
    assert [row.line for row in rows if isinstance(row, BlankLine)] == [3, 4]
    bad_utf8 = rows[5]
    assert "0xe9" in bad_utf8.detail
    assert bad_utf8.raw == '{"prompt": "caf\ufffd"}'


def test_raw_text_is_truncated(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("x" * (3 * MAX_RAW_CHARS) + "\n")
    (row,) = read_rows(path)
    assert len(row.raw) == MAX_RAW_CHARS


def test_gzip_jsonl_and_json(tmp_path):
    with gzip.open(tmp_path / "rows.jsonl.gz", "wt") as stream:
        stream.write(json.dumps(PAIR) + "\n")
    with gzip.open(tmp_path / "rows.json.gz", "wt") as stream:
        json.dump([PAIR, PAIR], stream, indent=2)
    assert [row.value for row in read_rows(tmp_path / "rows.jsonl.gz")] == [PAIR]
    # The line where each record starts: "[" is line 1, each record spans 5 lines.
    assert [row.line for row in read_rows(tmp_path / "rows.json.gz")] == [2, 7]


def test_json_array_object_of_arrays_and_non_objects(tmp_path):
    (tmp_path / "array.json").write_text(json.dumps([PAIR, "oops"], indent=1))
    (tmp_path / "splits.json").write_text(
        json.dumps({"train": [PAIR], "test": [PAIR, PAIR]}).replace("{", "\n{")
    )
    array = list(read_rows(tmp_path / "array.json"))
    assert isinstance(array[0], SourceRow)
    assert (array[1].line, array[1].reason) == (7, "not_an_object")
    assert [row.line for row in read_rows(tmp_path / "splits.json")] == [3, 4, 5]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"a": {"b": 1}}', "expected an array of records"),
        ("[1, 2", "is not a JSON document"),
        ("\n".join([json.dumps(PAIR)] * 2), "name it .jsonl"),
    ],
)
def test_json_documents_that_cannot_be_read(tmp_path, content, message):
    path = tmp_path / "data.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        list(read_rows(path))


def test_parquet_keeps_nested_values(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": "Hi"}], "chosen": "a", "rejected": "b"}] * 3
    pl.DataFrame(rows).write_parquet(tmp_path / "rows.parquet")
    read = list(read_rows(tmp_path / "rows.parquet"))
    assert [row.line for row in read] == [1, 2, 3]
    assert read[0].value == rows[0]


def test_csv_rows_and_bad_bytes(tmp_path):
    path = tmp_path / "rows.csv"
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(PAIR))
        writer.writeheader()
        writer.writerow({**PAIR, "prompt": "line one\nline two"})
    with path.open("ab") as stream:
        stream.write(b"caf\xe9,a,b\r\n")
    first, second = read_rows(path)
    assert first.value == {**PAIR, "prompt": "line one\nline two"}
    # Lines where the records start: the first spans lines 2-3 (a quoted newline).
    assert (first.line, second.line, second.reason) == (2, 4, "invalid_utf8")


def test_datasets_save_to_disk_folder(tmp_path):
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list([PAIR]), "test": datasets.Dataset.from_list([PAIR])}
    ).save_to_disk(tmp_path / "saved")
    assert [row.value for row in read_rows(tmp_path / "saved")] == [PAIR, PAIR]


@pytest.mark.parametrize(
    ("name", "message"),
    [("missing.jsonl", "does not exist"), ("data.txt", "unknown file kind"), ("folder", "not a")],
)
def test_unreadable_paths(tmp_path, name, message):
    (tmp_path / "data.txt").write_text("x")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match=message):
        list(read_rows(tmp_path / name))


def test_not_gzip(tmp_path):
    path = tmp_path / "rows.jsonl.gz"
    path.write_text("plain text\n")
    with pytest.raises(DataError, match="not a valid gzip file"):
        list(read_rows(path))


def test_jsonl_is_streamed_with_bounded_memory(tmp_path):
    import tracemalloc

    path = tmp_path / "big.jsonl"
    line = json.dumps({**PAIR, "chosen": "x" * 5000}) + "\n"
    path.write_text(line * 2000)  # 10 MB
    tracemalloc.start()
    count = sum(1 for _ in read_rows(path))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 2000
    assert peak < 1_000_000
