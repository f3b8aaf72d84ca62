"""Readers: every supported file kind as a stream of rows, bad rows included with a reason.

JSONL is read line by line (split on `\\n` only: real files hold U+2028 inside strings), Parquet in
record batches, CSV record by record and `datasets` folders through memory-mapped Arrow, so memory
stays bounded. A `.json` document is parsed whole; use JSONL for large data.

A row that cannot be read becomes a `BadRow` with its line and reason; a file that cannot be read
at all (a truncated or corrupt gzip stream, a broken Parquet footer) raises a `DataError` naming it,
unless `salvage` is set: then a JSONL stream cut short yields every complete line before the break
and one `BadRow` (`truncated_file`) for the rest.

`line` is the 1-based text line where a record starts for JSONL, JSON and CSV, and the 1-based
record number for Parquet and `datasets` folders (see `POSITION_UNITS`).
"""

import codecs
import csv
import gzip
import itertools
import json
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from orpo_pipeline.errors import DataError

if TYPE_CHECKING:
    import pyarrow as pa

MAX_RAW_CHARS = 4096
"""Rejected rows keep at most this many characters of their original text."""

PARQUET_BATCH_ROWS = 4096

MAX_NESTING = 200
"""A top-level field whose value nests deeper than this is replaced by `TOO_DEEP`: real data nests
fewer than 20 levels, and deeper values would exhaust Python's recursion limit further on. A format
that reads the field rejects the row (`too_deeply_nested`); one that does not read it never sees it.
A line nesting deeper than the JSON parser itself allows (about 1000 levels) cannot be read at all
and is rejected whatever the format."""

CSV_FIELD_LIMIT = 1 << 30
"""Largest CSV field in characters (the `csv` module's default of 131072 is too small for long
documents; JSONL lines have no limit either)."""

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


class SourceRow(NamedTuple):
    """One input row that parsed as an object; `line` is where it starts (see `POSITION_UNITS`)."""

    line: int
    value: dict[str, Any]
    raw: str | None = None
    """The original text where the reader has it (JSONL); otherwise it is re-serialised."""

    def raw_text(self) -> str:
        """The row's text, truncated to `MAX_RAW_CHARS`."""
        if self.raw is not None:
            return self.raw[:MAX_RAW_CHARS]
        # default=str: Parquet and `datasets` rows can hold bytes, dates and decimals.
        return json.dumps(self.value, ensure_ascii=False, default=str)[:MAX_RAW_CHARS]


class BadRow(NamedTuple):
    """One input row that could not be read; `reason` is `invalid_utf8` (bytes that are not
    UTF-8, or a lone surrogate escape such as `\\ud800`), `invalid_json`, `not_an_object`,
    `too_deeply_nested` (beyond the JSON parser's limit) or, when salvaging, `truncated_file`."""

    line: int
    reason: str
    detail: str
    raw: str


class BlankLine(NamedTuple):
    """A blank line of a JSONL or CSV file: not a row, but counted in the report."""

    line: int


ReadItem = SourceRow | BadRow | BlankLine


def input_kind(path: Path) -> str:
    """Reader name for a path: 'jsonl', 'json', 'parquet', 'csv' or 'datasets'.

    Raises:
        DataError: the path is missing or of an unknown kind.
    """
    name = path.name.lower()
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return "datasets"
        msg = (
            f"{path} is a folder but not a `datasets` save_to_disk folder (no dataset_info.json)"
            " nor a FastChat llm_judge folder (question.jsonl, model_answer/, model_judgment/)"
        )
        raise DataError(msg)
    if not path.exists():
        msg = f"input file {path} does not exist"
        raise DataError(msg)
    for suffix, kind in READER_SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    msg = (
        f"cannot read {path}: unknown file kind. Supported: "
        f"{', '.join(READER_SUFFIXES)} and `datasets` save_to_disk folders"
    )
    raise DataError(msg)


def read_rows(path: Path, *, salvage: bool = False) -> Iterator[ReadItem]:
    """Every row of `path` in file order, as a `SourceRow` or a `BadRow`; blank lines of JSONL
    and CSV files as `BlankLine` (they are not rows).

    Raises:
        DataError: the file as a whole cannot be read (missing, truncated or corrupt gzip unless
            `salvage`, a broken Parquet file, a JSON document that does not parse or holds no
            array, a non-UTF-8 JSON document or CSV header, an I/O error).
    """
    kind = input_kind(path)
    rows = _read_jsonl(path, salvage=salvage) if kind == "jsonl" else READERS[kind](path)
    return _naming_the_file(path, rows)


def _naming_the_file(path: Path, rows: Iterator[ReadItem]) -> Iterator[ReadItem]:
    """`rows`, with the errors that end the reading of a file raised as a DataError naming it."""
    try:
        yield from rows
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:  # only gzip streams raise these
        msg = (
            f"{path} is not a valid gzip file (corrupt or cut short): {error}. "
            "--salvage converts the complete lines before the break"
        )
        raise DataError(msg) from error
    except OSError as error:
        msg = f"cannot read {path}: {error.strerror or error}"
        raise DataError(msg) from error


def _open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")


def _read_jsonl(path: Path, *, salvage: bool = False) -> Iterator[ReadItem]:
    number, offset = 0, 0
    with _open_binary(path) as stream:
        try:
            # Binary iteration splits on b"\n" only, never on U+2028 or other line breaks.
            for number, line_bytes in enumerate(stream, start=1):
                offset += len(line_bytes)
                yield (
                    BlankLine(number)
                    if not line_bytes.strip()
                    else _parse_json_line(number, line_bytes)
                )
        except (EOFError, zlib.error, gzip.BadGzipFile) as error:
            if not salvage:
                raise
            detail = (
                f"the gzip stream breaks in line {number + 1} ({error}); lines 1-{number} "
                f"({offset} uncompressed bytes) were read, the rest of {path.name} "
                f"({path.stat().st_size} compressed bytes) is lost"
            )
            yield BadRow(number + 1, "truncated_file", detail, "")


def _parse_json_line(number: int, line_bytes: bytes) -> SourceRow | BadRow:
    line_bytes = line_bytes.rstrip(b"\r\n")
    if number == 1:
        line_bytes = line_bytes.removeprefix(codecs.BOM_UTF8)
    try:
        text = line_bytes.decode("utf-8")
    except UnicodeDecodeError as error:
        raw = line_bytes.decode("utf-8", errors="replace")[:MAX_RAW_CHARS]
        detail = f"byte {line_bytes[error.start]:#04x} at column {error.start + 1} is not UTF-8"
        return BadRow(number, "invalid_utf8", detail, raw)
    try:
        value = json.loads(text)
    except RecursionError:
        detail = f"values nest deeper than {MAX_NESTING} levels"
        return BadRow(number, "too_deeply_nested", detail, text[:MAX_RAW_CHARS])
    except json.JSONDecodeError as error:
        detail = f"{error.msg} at column {error.colno}"
        return BadRow(number, "invalid_json", detail, text[:MAX_RAW_CHARS])
    except ValueError as error:  # an integer of more than 4300 digits
        return BadRow(number, "invalid_json", str(error), text[:MAX_RAW_CHARS])
    if not isinstance(value, dict):
        detail = f"the line holds a JSON {json_type(value)}, not an object"
        return BadRow(number, "not_an_object", detail, text[:MAX_RAW_CHARS])
    if _may_hold_problems(text) and (problem := _value_problem(value)):
        return BadRow(number, *problem, text[:MAX_RAW_CHARS])
    return SourceRow(number, value, text)


def json_type(value: Any) -> str:
    """JSON's name for a parsed value's type: object, array, string, number, boolean or null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    names = {dict: "object", list: "array", str: "string", int: "number", float: "number"}
    return names.get(type(value), type(value).__name__)


def _may_hold_problems(text: str) -> bool:
    """Cheap test on JSON text: could its value nest too deeply or hold a lone surrogate?"""
    return (
        text.count("[") + text.count("{") > MAX_NESTING
        or _SURROGATE_ESCAPE.search(text) is not None
    )


class TooDeep:
    """Stands in for a field value that nests deeper than `MAX_NESTING`."""

    def __repr__(self) -> str:
        return f"<a value nesting deeper than {MAX_NESTING} levels>"

    __str__ = __repr__


TOO_DEEP = TooDeep()


def _value_problem(value: Any) -> tuple[str, str] | None:
    """(reason, detail) when a parsed value holds a lone surrogate (valid JSON, but no character:
    it cannot be written as UTF-8). Top-level fields that nest deeper than `MAX_NESTING` are
    replaced by `TOO_DEEP` in place."""
    if isinstance(value, dict):
        for key, item in value.items():
            if _nests_deeper(item, MAX_NESTING - 1):
                value[key] = TOO_DEEP
    surrogate = False
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            surrogate = surrogate or any(_LONE_SURROGATE.search(key) for key in item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            surrogate = surrogate or _LONE_SURROGATE.search(item) is not None
    if surrogate:
        return "invalid_utf8", "a string holds a lone surrogate escape (\\ud800-\\udfff)"
    return None


def _nests_deeper(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return False


def _read_json(path: Path) -> Iterator[ReadItem]:
    text, _, items = _json_records(path)
    check = _may_hold_problems(text)
    for number, item in items:
        problem = _value_problem(item) if check else None
        if problem is not None:
            # ASCII escapes: the text may hold lone surrogates.
            raw = json.dumps(item, default=str)[:MAX_RAW_CHARS]
            yield BadRow(number, *problem, raw)
        elif isinstance(item, dict):
            yield SourceRow(number, item)
        else:
            raw = json.dumps(item, ensure_ascii=False)[:MAX_RAW_CHARS]
            detail = f"array item is a JSON {json_type(item)}, not an object"
            yield BadRow(number, "not_an_object", detail, raw)


def _json_records(path: Path) -> tuple[str, str, list[tuple[int, Any]]]:
    """(text, position unit, [(position, item)]) of a JSON document: positions are the lines
    where the items start when each starts on a line of its own, else record numbers."""
    with _open_binary(path) as stream:
        data = stream.read()
    try:
        text = data.decode("utf-8-sig")
        document = json.loads(text)
    except UnicodeDecodeError as error:
        msg = f"{path} is not UTF-8: byte {data[error.start]:#04x} at offset {error.start}"
        raise DataError(msg) from error
    except RecursionError as error:
        msg = f"{path}: values nest deeper than Python's JSON parser allows"
        raise DataError(msg) from error
    except json.JSONDecodeError as error:
        msg = (
            f"{path} is not a JSON document ({error.msg} at line {error.lineno} column "
            f"{error.colno}); if it holds one object per line, name it .jsonl"
        )
        raise DataError(msg) from error
    except ValueError as error:  # an integer of more than 4300 digits
        msg = f"{path} is not a JSON document Python can read: {error}"
        raise DataError(msg) from error
    _check_json_layout(path, document)
    items = _json_items(text)
    if all(before[0] < after[0] for before, after in itertools.pairwise(items)):
        return text, "line", items
    return text, "record", [(number, item) for number, (_, item) in enumerate(items, start=1)]


def position_unit(path: Path) -> str:
    """What a row's `line` counts in `path`: 'line' (where the record starts) or 'record'."""
    kind = input_kind(path)
    return _json_records(path)[1] if kind == "json" else POSITION_UNITS[kind]


def _check_json_layout(path: Path, document: Any) -> None:
    """Raise unless `document` is an array or an object whose values are all arrays."""
    if isinstance(document, list) or (
        isinstance(document, dict)
        and document
        and all(isinstance(value, list) for value in document.values())
    ):
        return
    keys = sorted(document)[:10] if isinstance(document, dict) else []
    msg = (
        f"{path} holds a JSON {json_type(document)}"
        + (f" with keys {keys}" if keys else "")
        + "; expected an array of records or an object whose values are arrays of records"
    )
    raise DataError(msg)


_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _json_items(text: str) -> list[tuple[int, Any]]:
    """(line where it starts, item) of every item of a checked array or object of arrays."""
    decoder = json.JSONDecoder()
    items: list[tuple[int, Any]] = []

    def skip(index: int) -> int:
        return _WHITESPACE.match(text, index).end()  # type: ignore[union-attr]

    def array(index: int) -> int:
        """Append the items of the array at `index`; return the index after its "]"."""
        index = skip(index + 1)
        while text[index] != "]":
            item, end = decoder.raw_decode(text, index)
            items.append((index, item))
            index = skip(end)
            if text[index] == ",":
                index = skip(index + 1)
        return index + 1

    index = skip(0)
    if text[index] == "[":
        array(index)
    else:
        index = skip(index + 1)  # past "{"
        while text[index] != "}":
            _, index = decoder.raw_decode(text, index)  # the key
            index = skip(array(skip(skip(index) + 1)))  # past ":", then the array
            if text[index] == ",":
                index = skip(index + 1)
    lines, line, counted = [], 1, 0
    for offset, item in items:
        line += text.count("\n", counted, offset)
        counted = offset
        lines.append((line, item))
    return lines


def _read_parquet(path: Path) -> Iterator[ReadItem]:
    import pyarrow.parquet as pq

    number = 0
    with _parquet_errors(path):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for item in batch.to_pylist():
                number += 1
                yield SourceRow(number, item)


def parquet_batches(path: Path, rows: int) -> "Iterator[pa.RecordBatch]":
    """The Arrow record batches of a Parquet file, `rows` rows each: their `to_pylist` rows are
    `read_rows`' rows.

    Raises:
        DataError: the file cannot be read (the message `read_rows` gives).
    """
    return _naming_the_file(path, _parquet_batches(path, rows))


def _parquet_batches(path: Path, rows: int) -> "Iterator[pa.RecordBatch]":
    import pyarrow.parquet as pq

    with _parquet_errors(path):
        yield from pq.ParquetFile(path).iter_batches(batch_size=rows)


@contextmanager
def _parquet_errors(path: Path) -> Iterator[None]:
    """Arrow's errors reading `path` as a DataError naming the file."""
    import pyarrow as pa

    try:
        yield
    except pa.ArrowException as error:
        msg = f"{path} is not a readable Parquet file: {error}"
        raise DataError(msg) from error


def _read_csv(path: Path) -> Iterator[ReadItem]:
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    # surrogateescape keeps undecodable bytes as lone surrogates, so one bad row is rejected
    # instead of the whole file failing; utf-8-sig drops a byte order mark.
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as stream:
        reader = csv.reader(stream)
        try:
            header = next(reader, [])
            if any(_has_surrogate(name) for name in header):
                msg = f"{path}: the header line holds bytes that are not UTF-8"
                raise DataError(msg)
            end = reader.line_num
            for values in reader:
                # A record starts on the line after the previous one ended (quoted newlines).
                start, end = end + 1, reader.line_num
                if not values:
                    yield BlankLine(start)
                    continue
                # Like csv.DictReader: missing values are None, extra ones are dropped.
                record = dict(itertools.zip_longest(header, values[: len(header)]))
                record.pop("", None)
                if any(_has_surrogate(value) for value in values):
                    raw = json.dumps(record, ensure_ascii=False, default=str)
                    raw = raw.encode("utf-8", errors="replace").decode("utf-8")[:MAX_RAW_CHARS]
                    detail = "the record holds bytes that are not UTF-8"
                    yield BadRow(start, "invalid_utf8", detail, raw)
                else:
                    yield SourceRow(start, record)
        except csv.Error as error:
            msg = f"{path}: line {reader.line_num} is not valid CSV: {error}"
            raise DataError(msg) from error


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, list):
        return any(_has_surrogate(item) for item in value)
    return isinstance(value, str) and _LONE_SURROGATE.search(value) is not None


def _read_datasets(path: Path) -> Iterator[ReadItem]:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    splits = loaded.values() if isinstance(loaded, datasets.DatasetDict) else [loaded]
    number = 0
    for split in splits:
        for item in split:
            number += 1
            yield SourceRow(number, item)


READER_SUFFIXES = {
    ".jsonl": "jsonl",
    ".jsonl.gz": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".json.gz": "json",
    ".parquet": "parquet",
    ".csv": "csv",
}
POSITION_UNITS = {
    "jsonl": "line",
    "json": "line",  # unless several items start on one line: then records (`position_unit`)
    "csv": "line",
    "parquet": "record",
    "datasets": "record",
}
"""What a row's `line` counts, by reader: the text line where the record starts, or the 1-based
record number for binary inputs."""
READERS = {
    "jsonl": _read_jsonl,
    "json": _read_json,
    "parquet": _read_parquet,
    "csv": _read_csv,
    "datasets": _read_datasets,
}
