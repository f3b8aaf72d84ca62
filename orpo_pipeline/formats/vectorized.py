"""Vectorised conversion of HH-RLHF, TRL preference and UltraFeedback files: Polars over slices
of `SLICE_ROWS` rows, two slices at a time on two threads.

Rows that Polars can vouch for (well-formed, the common shapes) become pairs here, equal to what
the per-row converter makes of them; every other row is handed back, in file order, to the
per-row converter, which pairs or rejects it exactly as it always has. So the output, rejects and
provenance included, does not depend on which path a row took or on the slice size (tested row
for row, in slices of a few rows).
"""

import gzip
import io
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np
import polars as pl
import polars_hash  # noqa: F401 (registers the `chash` expression namespace)
import pyarrow as pa
import pyarrow.parquet as pq

from orpo_pipeline.errors import DataError
from orpo_pipeline.formats import readers
from orpo_pipeline.formats.conversation import ROLE_NAMES
from orpo_pipeline.formats.options import ConvertOptions
from orpo_pipeline.formats.preference import SCORE_FIELDS
from orpo_pipeline.formats.ranked import UF_ASPECTS, choose_pairs
from orpo_pipeline.formats.readers import (
    MAX_NESTING,
    BlankLine,
    ReadItem,
    SourceRow,
    _parse_json_line,
    input_kind,
)
from orpo_pipeline.records import PAIR_SCHEMA

MESSAGE = pl.Struct({"role": pl.String, "content": pl.String})
_UNSAFE_TEXT = r"[\x00\x01\x1c-\x1f]"
"""Characters Python's `str.strip` and Polars' `strip_chars` disagree on (\\x1c-\\x1f), and the
two this module uses as markers."""
_ESCAPED_KEY = r'"[^"\\]*\\u[0-9a-fA-F]{4}[^"]*"\s*:'
"""A JSON key written with a \\u escape: Python and Polars may disagree on duplicate keys."""


class FastRows(NamedTuple):
    """Of one slice of a file: the pairs made here and the rows left for the per-row converter."""

    pairs: pl.DataFrame
    """PAIR_SCHEMA columns plus `_file` and `_line`, the pairs of the converted rows (a row's
    pairs in order; the rows not sorted)."""
    rest: list[ReadItem]
    """The other rows and the blank lines, in file order."""
    labels_stripped: int = 0
    """Answers of `pairs` that lost a leading role label (`role_markers='split'`)."""


_T = TypeVar("_T")
_R = TypeVar("_R")
SLICE_ROWS = 20_000
"""Rows converted together: a file is read and converted a slice at a time, so converting it
needs memory for its pairs and one slice, not for the whole file several times over."""


def fast_pairs(
    path: Path, name: str, options: ConvertOptions, source: str
) -> Iterator[FastRows] | None:
    """Convert what can be converted of `path` (format `name`) with Polars, one slice of rows at
    a time, in file order; None when the format or the file kind has no vectorised path, or when
    salvaging (the caller converts every row itself). With `role_markers='split'`, answers lose
    a leading role label here; pairs with a prompt message that starts with one go back to the
    per-row converter, which splits the transcript and counts the change."""
    build = _BUILDERS.get(name)
    if build is None or options.mapping is not None or options.salvage:
        return None
    if name in _RANKED:
        build = _ranked(build, options)
    split = options.role_markers == "split"

    def convert(frames: list[pl.DataFrame]) -> tuple[pl.DataFrame, int]:
        """The pairs of one slice (one frame per layout its rows were decoded with) and the
        labels stripped from their answers."""
        parts = [build(frame.lazy(), frame.schema).collect() for frame in frames]
        pairs, labels = _without_markers(pl.concat(parts, how="diagonal_relaxed"), split=split)
        return _finish(pairs, path, source), labels

    def parquet_slice(batch: tuple[pa.RecordBatch, pl.DataFrame]) -> FastRows:
        pairs, labels = convert([batch[1]])
        rest = parquet_rest(*batch, pairs)
        # Arrow's allocator keeps the memory of the batches done (~300 MB a 200k-row file).
        pa.default_memory_pool().release_unused()
        return FastRows(pairs, rest, labels)

    def json_lines_slice(part: pl.DataFrame) -> FastRows:
        pairs, labels = convert(_decode(part, name))
        return FastRows(pairs, json_lines_rest(part, pairs), labels)

    kind = input_kind(path)
    if kind == "parquet":
        batches = parquet_batches(path)
        return None if batches is None else _in_order(parquet_slice, batches)
    if kind != "jsonl" or (lines := _json_lines(path)) is None:
        return None
    parts = (lines.slice(start, SLICE_ROWS) for start in range(0, lines.height, SLICE_ROWS))
    return _in_order(json_lines_slice, parts)


def _in_order(work: Callable[[_T], _R], items: Iterator[_T]) -> Iterator[_R]:
    """`work` of each item, in order; the next item's work runs on a second thread while the
    caller takes this one's result (Polars and Arrow let go of the GIL, so both cores work)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        running: deque[Future[_R]] = deque()
        for item in items:
            running.append(pool.submit(work, item))
            if len(running) > 1:
                yield running.popleft().result()
        while running:
            yield running.popleft().result()


def parquet_batches(path: Path) -> Iterator[tuple[pa.RecordBatch, pl.DataFrame]] | None:
    """The Parquet file in slices of `SLICE_ROWS` rows, each as an Arrow batch (as the per-row
    reader reads it) and as a frame with `_line` (1-based); None when the file cannot be read,
    has no columns or its first slice does not go into Polars (the per-row reader says what is
    wrong, or takes the rows).

    Raises:
        DataError: a later slice cannot be read (as the per-row reader says).
    """
    try:
        batches = readers.parquet_batches(path, SLICE_ROWS)
        first = next(batches, None)
        if first is None or not first.num_columns:
            return None
        frame = pl.from_arrow(first).with_row_index("_line", offset=1)
    except (DataError, pl.exceptions.PolarsError):
        return None
    return _with_frames((first, frame), batches)


def _with_frames(
    first: tuple[pa.RecordBatch, pl.DataFrame], batches: Iterator[pa.RecordBatch]
) -> Iterator[tuple[pa.RecordBatch, pl.DataFrame]]:
    """The first slice, then each later batch with its frame."""
    yield first
    line = first[0].num_rows + 1
    for batch in batches:
        yield batch, pl.from_arrow(batch).with_row_index("_line", offset=line)
        line += batch.num_rows


def parquet_rows(path: Path) -> tuple[pa.Table, pl.DataFrame] | None:
    """The Parquet file as an Arrow table and as a frame with `_line` (1-based); None when it
    cannot be read or has no columns (the per-row reader says what is wrong, or takes no rows)."""
    try:
        table = pq.read_table(path)
        frame = pl.from_arrow(table, rechunk=False).with_row_index("_line", offset=1)
    except (OSError, pl.exceptions.PolarsError, pa.ArrowException):
        return None
    return (table, frame) if table.num_columns else None


def parquet_rest(
    table: pa.Table | pa.RecordBatch, frame: pl.DataFrame, done: pl.DataFrame
) -> list[ReadItem]:
    """The rows of `table` (as `frame`, with `_line`) whose `_line` is not in `done`, in
    order, for the per-row converter."""
    lines = frame["_line"]
    left = ~lines.is_in(done["_line"].cast(lines.dtype).implode())
    positions = left.arg_true().to_numpy()
    values = table.take(pa.array(positions)).to_pylist() if len(positions) else []
    rest = lines.gather(positions).to_list()
    return [SourceRow(int(n), v) for n, v in zip(rest, values, strict=True)]


def json_lines_rest(lines: pl.DataFrame, done: pl.DataFrame) -> list[ReadItem]:
    """The rows of `_json_lines` whose `_line` is not in `done`, parsed as the per-row reader
    parses them, and the blank lines, in file order."""
    is_row = _is_row(pl.col("_text"))
    rest = _rest_lines(lines.filter(is_row)["_line"], done)
    texts = lines.filter(pl.col("_line").is_in(rest))["_text"].to_list()
    rows = [_parse_json_line(int(n), t.encode()) for n, t in zip(rest, texts, strict=True)]
    blank = [BlankLine(n) for n in lines.filter(~is_row)["_line"].to_list()]
    return sorted([*rows, *blank], key=lambda r: r.line)


_LEADING_LABEL = r"^[\s\x1c-\x1f]*(Human|Assistant):"
"""Text that `markers.strip_markers` may change (it also checks the message's role; taking
every such text back to the per-row converter is never wrong)."""
_ANSWER_LABEL = _LEADING_LABEL + "[ \t]?"
"""What `markers.answer_text` takes off an answer (`\\s` is Python's on the texts here, which
hold no \\x1c-\\x1f)."""


def _without_markers(pairs: pl.DataFrame, *, split: bool) -> tuple[pl.DataFrame, int]:
    """`pairs` as the per-row converter leaves them with `role_markers='split'` (when `split`),
    and how many answers lost a label: an answer that starts with a role label loses it, as
    `markers.answer_text` does. Pairs with a prompt message starting with a label, or whose
    answers are blank or alike once the labels are gone, are left out (their rows go per row)."""
    if not split or not pairs.height:
        return pairs, 0
    labelled_prompt = (
        pl.col("prompt")
        .list.eval(pl.element().struct.field("content").str.contains(_LEADING_LABEL))
        .list.any()
    )
    sides = ("_chosen", "_rejected")
    labelled = [pl.col(side).str.contains(_LEADING_LABEL).alias(f"{side}_label") for side in sides]
    unlabelled = [_strip(pl.col(side).str.replace(_ANSWER_LABEL, "")).alias(side) for side in sides]
    chosen, rejected = (pl.col(side) for side in sides)
    answers_ok = (chosen != "") & (rejected != "") & (chosen != rejected)
    kept = (
        pairs.filter(~labelled_prompt.fill_null(value=False))
        .with_columns(*labelled, *unlabelled)
        .filter(answers_ok.fill_null(value=False))
    )
    stripped = kept.select(pl.sum_horizontal(f"{side}_label" for side in sides).sum()).item()
    return kept.drop(f"{side}_label" for side in sides), int(stripped or 0)


def _rest_lines(lines: pl.Series, pairs: pl.DataFrame) -> np.ndarray:
    """The row numbers in `lines` that have no pair in `pairs`, in order."""
    return lines.filter(~lines.is_in(pairs["_line"].cast(lines.dtype).implode())).to_numpy()


# ---------------------------------------------------------------------------------------------
# JSON Lines


def _json_lines(path: Path) -> pl.DataFrame | None:
    """`_line` (1-based, as the per-row reader counts) and `_text` of every line; None when the
    file cannot be read or is not valid UTF-8 as a whole (the per-row reader handles it)."""
    try:
        source = path
        if path.name.lower().endswith(".gz"):
            source = io.BytesIO(gzip.decompress(path.read_bytes()))
        lines = pl.scan_lines(source, name="_text").collect()
    except (OSError, EOFError, zlib.error, pl.exceptions.PolarsError):
        return None  # the per-row reader reports what is wrong with the file
    return lines.with_row_index("_line", offset=1)


def _is_row(text: pl.Expr) -> pl.Expr:
    """Lines the per-row reader counts as rows: not blank (ASCII whitespace only)."""
    return text.str.contains(r"[^ \t\n\r\x0b\x0c]")


_TRL_STRINGS = {
    "prompt": pl.String,
    "chosen": pl.String,
    "rejected": pl.String,
    "system": pl.String,
    **{name: pl.Float64 for names in SCORE_FIELDS.values() for name in names},
}
_TRL_LISTS = {**_TRL_STRINGS, "chosen": pl.List(MESSAGE), "rejected": pl.List(MESSAGE)}
_UF_COMPLETION = pl.Struct(
    {
        "response": pl.String,
        "overall_score": pl.String,  # a number is decoded as its text, parsed as `rows.number`
        "annotations": pl.Struct({name: pl.Struct({"Rating": pl.String}) for name in UF_ASPECTS}),
    }
)
_FIELDS = {
    "hh_rlhf": [{"chosen": pl.String, "rejected": pl.String}],
    "trl_preference": [_TRL_STRINGS, _TRL_LISTS, {**_TRL_LISTS, "prompt": pl.List(MESSAGE)}],
    "ultrafeedback": [{"instruction": pl.String, "completions": pl.List(_UF_COMPLETION)}],
}
"""Per format, the layouts decoded from JSON Lines; a line is decoded with the one it fits."""


def _decode(
    lines: pl.DataFrame, name: str, layouts: list[dict[str, pl.DataType]] | None = None
) -> list[pl.DataFrame]:
    """Per layout of `name` (`_FIELDS[name]` unless given), the lines Polars decodes as Python's
    `json` does, decoded.

    A line is decoded only when each field it has appears once with a value of the layout's type
    (checked on the text, since Polars would turn `1` into `"1"` for a string field) and it has
    no \\u-escaped key, no lone-surrogate escape, no deep nesting, no BOM and no CR.
    """
    text = pl.col("_text")
    checks = [
        _is_row(text),
        text.str.count_matches(r"\[|\{") <= MAX_NESTING,
        ~text.str.starts_with("\ufeff"),
        ~text.str.ends_with("\r"),
        ~text.str.contains(_UNSAFE_TEXT),
    ]
    if name == "trl_preference":  # `_n_role`, `_n_content`: `_trl_preference` checks each once
        checks.append(~text.str.contains(r'"(from|value|type|text)"\s*:'))
        for key in ("role", "content"):
            lines = lines.with_columns(
                text.str.count_matches(f'"{key}"' + r"\s*:").alias(f"_n_{key}")
            )
            checks.append(pl.col(f"_n_{key}") == text.str.count_matches(f'"{key}"' + r'\s*:\s*"'))
    if name == "ultrafeedback":  # aspects as [{Rating}] lists go per row
        checks.append(~text.str.contains(_UF_LISTED_ASPECT))
    safe = lines.filter(pl.all_horizontal(checks))
    escaped = safe.filter(text.str.contains("\\u", literal=True)).filter(
        text.str.contains(_ESCAPED_KEY)
        | _lone_surrogate(text)
        | text.str.contains(r"\\u00(0[01]|1[c-fC-F])")
    )
    if escaped.height:
        safe = safe.filter(~pl.col("_line").is_in(escaped["_line"].implode()))
    # The fields some line has (and maybe some string values that look alike): a field no line
    # has is left out of the checks and of the decoded layout.
    layouts = _FIELDS[name] if layouts is None else layouts
    fields_named = sorted({field for fields in layouts for field in fields})
    present = set(
        safe.select(text.str.extract_many([f'"{field}"' for field in fields_named]))
        .to_series()
        .explode()
        .drop_nulls()
        .unique()
        .str.strip_chars('"')
        .to_list()
    )
    decoded = []
    for fields in layouts:
        fits = [text.is_not_null()]
        for field, dtype in fields.items():
            if field not in present:
                continue  # no line has it: `keys == 0` everywhere
            opening = {pl.String: '"', pl.Float64: "-?[0-9]"}.get(dtype, r"\[")
            if field not in ("chosen", "rejected"):
                opening = f"({opening}|null)"
            keys = text.str.count_matches(f'"{field}"' + r"\s*:")
            value = text.str.contains(f'"{field}"' + r"\s*:\s*" + opening)
            fits.append((keys == 0) | ((keys == 1) & value))
        fit = safe.select(pl.all_horizontal(fits)).to_series()
        layout = pl.Struct({field: dtype for field, dtype in fields.items() if field in present})
        decoded.append(_decode_rows(safe.filter(fit), layout))
        safe = safe.filter(~fit)  # a line is decoded with the first layout it fits
    return decoded


def _lone_surrogate(text: pl.Expr) -> pl.Expr:
    """The JSON text may escape a lone surrogate (Python's reader rejects it, Polars would not):
    every high surrogate escape must be followed by a low one, and every low one follow a high
    one. Escaped backslashes are set aside first (the lines hold no \x00)."""
    real = text.str.replace_all(r"\\", "\x00\x00", literal=True)
    high, low = r"\\u[dD][89abAB][0-9a-fA-F]{2}", r"\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    pairs = real.str.count_matches(high + low)
    return (real.str.count_matches(high) != pairs) | (real.str.count_matches(low) != pairs)


def _decode_rows(lines: pl.DataFrame, dtype: pl.Struct) -> pl.DataFrame:
    """Every column of the lines (`_line`, `_text`, ...) and the decoded fields of those that
    decode; halves a failing batch until the bad lines are found (they go to the per-row
    reader)."""
    empty = pl.DataFrame(schema={**lines.schema, **dtype.to_schema()})
    if not lines.height:
        return empty
    try:
        return lines.select(pl.all(), pl.col("_text").str.json_decode(dtype).alias("_v")).unnest(
            "_v"
        )
    except pl.exceptions.PolarsError:
        if lines.height == 1:
            return empty
        half = lines.height // 2
        return pl.concat(
            [_decode_rows(lines.head(half), dtype), _decode_rows(lines.slice(half), dtype)]
        )


# ---------------------------------------------------------------------------------------------
# Messages and pairs as expressions


def _strip(text: pl.Expr) -> pl.Expr:
    return text.str.strip_chars()


def _safe_text(text: pl.Expr) -> pl.Expr:
    """True where Polars and Python treat the text alike (no marker or separator characters)."""
    return ~text.str.contains(_UNSAFE_TEXT)


def _hh_marked(transcript: pl.Expr) -> pl.Expr:
    """The transcript with each "\n\nHuman:" and "\n\nAssistant:" tag written "\x00u" and
    "\x00a" (one pass; texts holding \x00 never get here)."""
    return transcript.str.replace_many(list(_HH_TAGS), list(_HH_TAGS.values()))


def _hh_messages(parts: pl.Expr) -> pl.Expr:
    """Messages from the tagged parts of a transcript (`_hh_marked` split at \x00, the text
    before the first tag left out), stripped."""
    return parts.list.eval(
        pl.struct(
            role=pl.when(pl.element().str.starts_with("u"))
            .then(pl.lit("user"))
            .otherwise(pl.lit("assistant")),
            content=_strip(pl.element().str.slice(1)),
        )
    )


def _mapped(messages: pl.Expr) -> pl.Expr:
    """OpenAI messages with our role names; null where a role is unknown or a field missing."""
    mapped = messages.list.eval(
        pl.struct(
            role=pl.element()
            .struct.field("role")
            .str.to_lowercase()
            .replace_strict(ROLE_NAMES, default=None),
            content=pl.element().struct.field("content"),
        )
    )
    complete = mapped.list.eval(
        pl.element().struct.field("role").is_not_null()
        & pl.element().struct.field("content").is_not_null()
    ).list.all()
    return pl.when(complete & messages.is_not_null()).then(mapped)


def _key(role: pl.Expr, content: pl.Expr) -> pl.Expr:
    return role + "\x01" + content


def _last_answers(chosen: pl.Expr, rejected: pl.Expr) -> tuple[pl.Expr, pl.Expr, pl.Expr, pl.Expr]:
    """(prompt, chosen answer, rejected answer, ok) for two conversations that share all but one
    final assistant answer each, as `split_last_answers` splits them.

    The shared messages are compared as one string per conversation (role and content joined by
    separators no compared text holds), which is far faster than comparing lists of structs.
    """
    keys, lasts = [], []
    for messages in (chosen, rejected):
        element = pl.element().struct.field
        joined = messages.list.eval(_key(element("role"), element("content"))).list.join("\x00")
        last = messages.list.last()
        last_key = _key(last.struct.field("role"), last.struct.field("content"))
        separators = joined.str.count_matches("\x00") + joined.str.count_matches("\x01")
        clean = separators == 2 * messages.list.len() - 1
        prefix = joined.str.head(joined.str.len_chars() - last_key.str.len_chars())
        keys.append(pl.when(clean).then(prefix))
        lasts.append(last)
    length = chosen.list.len()
    ok = (
        (length >= 2)
        & (rejected.list.len() == length)
        & (keys[0] == keys[1])
        & (lasts[0].struct.field("role") == "assistant")
        & (lasts[1].struct.field("role") == "assistant")
    )
    answers = (lasts[0].struct.field("content"), lasts[1].struct.field("content"))
    prompt = chosen.list.slice(0, length - 1)
    return prompt, *answers, ok & (answers[0] != answers[1])


def _checked(lf: pl.LazyFrame, *, prompt_checked: bool = False) -> pl.LazyFrame:
    """`check_pair`: keep rows with a trainable prompt and two stripped, distinct answers
    (`prompt_checked`: the builder's `_ok` already holds for every prompt message's content
    being safe text, not blank once stripped)."""
    last_role = pl.col("prompt").list.last().struct.field("role")
    chosen, rejected = _strip(pl.col("_chosen")), _strip(pl.col("_rejected"))
    ok = (
        pl.col("_ok")
        & (pl.col("prompt").list.len() > 0)
        & last_role.is_in(["user", "tool"])
        & (chosen != "")
        & (rejected != "")
        & (chosen != rejected)
        & _safe_text(pl.col("_chosen"))
        & _safe_text(pl.col("_rejected"))
    )
    if not prompt_checked:
        contents = pl.col("prompt").list.eval(
            pl.element()
            .struct.field("content")
            .pipe(lambda text: _safe_text(text) & (_strip(text) != ""))
        )
        ok = ok & contents.list.all()
    return lf.filter(ok.fill_null(value=False)).with_columns(_chosen=chosen, _rejected=rejected)


_HH_TAGS = {"\n\nHuman:": "\x00u", "\n\nAssistant:": "\x00a"}


def _hh_rlhf(lf: pl.LazyFrame, schema: pl.Schema) -> pl.LazyFrame:
    """Both transcripts must be one shared text, then "\n\nAssistant:" and an answer each (the
    per-row parser compares parsed turns, so any pair it would split this way is equal here).

    Works on the tagged texts (`_hh_marked`): the last part is the answer, the parts between
    the first tag and the answer are the prompt's turns; no tag may follow the same tag.
    """
    if not {"chosen", "rejected"} <= set(schema) or not (
        schema["chosen"] == schema["rejected"] == pl.String
    ):
        return lf.select("_line").clear()
    sides = ("chosen", "rejected")
    tagged = lf.select(
        "_line",
        *(pl.col(side) for side in sides),
        *(_hh_marked(pl.col(side)).alias(f"_{side}_marked") for side in sides),
    ).with_columns(
        pl.col(f"_{side}_marked").str.split("\x00").list.last().alias(f"_{side}_answer")
        for side in sides
    )
    marked = {side: pl.col(f"_{side}_marked") for side in sides}
    answers = {side: pl.col(f"_{side}_answer") for side in sides}
    with_heads = tagged.with_columns(
        marked[side]
        .str.head(marked[side].str.len_chars() - answers[side].str.len_chars() - 1)
        .alias(f"_{side}_head")
        for side in sides
    ).with_columns(_parts=pl.col("_chosen_head").str.split("\x00"))
    parts = pl.col("_parts")
    checks = [
        check
        for side in sides
        for check in (
            answers[side].str.starts_with("a"),
            marked[side].str.count_matches("\x00", literal=True) >= 2,
            _safe_text(pl.col(side)),
        )
    ]
    contents = parts.list.slice(1).list.eval(_strip(pl.element().str.slice(1)) != "")
    ok = (
        pl.all_horizontal(checks)
        & (pl.col("_chosen_head") == pl.col("_rejected_head"))
        & (_strip(parts.list.first()) == "")
        & ~marked["chosen"].str.contains("\x00u[^\x00]*\x00u|\x00a[^\x00]*\x00a")
        & contents.list.all()
    )
    return _checked(
        with_heads.select(
            "_line",
            _hh_messages(parts.list.slice(1)).alias("prompt"),
            *(_strip(answers[side].str.slice(1)).alias(f"_{side}") for side in sides),
            ok.alias("_ok"),
            pl.lit(None, dtype=pl.Float64).alias("score_chosen"),
            pl.lit(None, dtype=pl.Float64).alias("score_rejected"),
        ),
        prompt_checked=True,
    )


def _score(schema: pl.Schema, side: str) -> pl.Expr:
    """The first numeric score field of a side, as `preference._score` takes it (NaN is none)."""
    columns = [
        pl.col(name).cast(pl.Float64).fill_nan(None)
        for name in SCORE_FIELDS[side]
        if name in schema and (schema[name].is_integer() or schema[name].is_float())
    ]
    return pl.coalesce(columns) if columns else pl.lit(None, dtype=pl.Float64)


def _trl_preference(lf: pl.LazyFrame, schema: pl.Schema) -> pl.LazyFrame:
    if not {"chosen", "rejected"} <= set(schema):
        return lf.select("_line").clear()
    kinds = {schema["chosen"], schema["rejected"]}
    prompt_type = schema.get("prompt", pl.Null)
    system_type = schema.get("system", pl.Null)
    if system_type not in (pl.String, pl.Null) or prompt_type not in (
        pl.String,
        pl.Null,
        pl.List(MESSAGE),
    ):
        return lf.select("_line").clear()
    lists = [
        pl.col(n).list.len() for n in ("chosen", "rejected", "prompt") if schema.get(n) == pl.List
    ]
    if lists and "_n_role" in schema:
        # JSON Lines: each message has each key once (Polars keeps the first, Python the last).
        total = pl.sum_horizontal(lists)
        lf = lf.filter((pl.col("_n_role") == total) & (pl.col("_n_content") == total))
    system = pl.col("system") if system_type == pl.String else pl.lit(None, dtype=pl.String)
    system = pl.when(_strip(system) != "").then(system)
    head = (
        pl.when(system.is_not_null())
        .then(pl.concat_list(pl.struct(role=pl.lit("system"), content=system)))
        .otherwise(pl.lit([], dtype=pl.List(MESSAGE)))
    )
    given = pl.col("prompt") if "prompt" in schema else pl.lit(None, dtype=pl.String)
    if prompt_type == pl.List(MESSAGE):
        given_messages = _mapped(given)
    else:
        given_messages = pl.concat_list(pl.struct(role=pl.lit("user"), content=given))
    with_head = pl.concat_list(head, given_messages)
    scores = (
        _score(schema, "chosen").alias("score_chosen"),
        _score(schema, "rejected").alias("score_rejected"),
    )
    if kinds == {pl.String}:
        return _checked(
            lf.select(
                "_line",
                with_head.alias("prompt"),
                pl.col("chosen").alias("_chosen"),
                pl.col("rejected").alias("_rejected"),
                (given.is_not_null() & given_messages.is_not_null()).alias("_ok"),
                *scores,
            )
        )
    if kinds != {pl.List(MESSAGE)}:
        return lf.select("_line").clear()
    mapped = lf.with_columns(_mapped(pl.col("chosen")), _mapped(pl.col("rejected")))
    chosen, rejected = pl.col("chosen"), pl.col("rejected")
    answer_only = (
        (chosen.list.len() == 1)
        & (rejected.list.len() == 1)
        & (chosen.list.first().struct.field("role") == "assistant")
        & (rejected.list.first().struct.field("role") == "assistant")
    )
    with_prompt = (given.is_not_null() & answer_only).fill_null(value=False)
    answers = mapped.filter(with_prompt).select(
        "_line",
        with_head.alias("prompt"),
        chosen.list.first().struct.field("content").alias("_chosen"),
        rejected.list.first().struct.field("content").alias("_rejected"),
        given_messages.is_not_null().alias("_ok"),
        *scores,
    )
    prompt, chosen_answer, rejected_answer, split_ok = _last_answers(chosen, rejected)
    prompt_has_system = prompt.list.first().struct.field("role") == "system"
    split_prompt = (
        pl.when(system.is_null() | prompt_has_system)
        .then(prompt)
        .otherwise(pl.concat_list(head, prompt))
    )
    # A message-list prompt next to whole conversations is merged by the per-row converter.
    split_case = given.is_null() | pl.lit(prompt_type == pl.String)
    conversations = mapped.filter(~with_prompt).select(
        "_line",
        split_prompt.alias("prompt"),
        chosen_answer.alias("_chosen"),
        rejected_answer.alias("_rejected"),
        (split_case & split_ok).alias("_ok"),
        *scores,
    )
    return _checked(pl.concat([answers, conversations]))


# ---------------------------------------------------------------------------------------------
# UltraFeedback: completions as candidates, paired by `ranked.choose_pairs`

_UF_LISTED_ASPECT = '"(' + "|".join(UF_ASPECTS) + r')"\s*:\s*\['
"""An aspect annotated as a one-element list: JSON Lines rows with one go per row."""
_NUMBER = r"^-?(0|[1-9][0-9]{0,14})(\.[0-9]{1,17})?$"
"""Numeric strings Python's `float` and Polars parse alike (others go per row)."""


def _number(value: pl.Expr, dtype: pl.DataType) -> tuple[pl.Expr, pl.Expr] | None:
    """`rows.number` of a column as (value, ok): ok is False where the row must go per row
    (a string only Python would parse, a '-0' that JSON may have written as an integer); None
    for a column type this path does not take."""
    if dtype in (pl.Null, pl.Boolean):
        return pl.lit(None, dtype=pl.Float64), pl.lit(value=True)
    if dtype.is_float():
        return value.cast(pl.Float64).fill_nan(None), pl.lit(value=True)
    if dtype.is_integer():
        return value.cast(pl.Float64), pl.lit(value=True)
    if dtype != pl.String:
        return None
    parsed = pl.when(value.str.contains(_NUMBER)).then(value.cast(pl.Float64, strict=False))
    negative_zero = (parsed == 0) & value.str.starts_with("-")
    ok = value.is_null() | (value == "N/A") | (parsed.is_not_null() & ~negative_zero)
    return parsed, ok


def _uf_rating(annotation: pl.Expr, dtype: pl.DataType) -> tuple[pl.Expr, pl.Expr] | None:
    """`ranked._rating` of one aspect's annotation ({Rating} or [{Rating}]), as `_number`."""
    if isinstance(dtype, pl.List):
        annotation, dtype = annotation.list.first(), dtype.inner
    if not isinstance(dtype, pl.Struct):
        return pl.lit(None, dtype=pl.Float64), pl.lit(value=True)  # not an object: no rating
    fields = dtype.to_schema()
    if "Rating" not in fields:
        return pl.lit(None, dtype=pl.Float64), pl.lit(value=True)
    return _number(annotation.struct.field("Rating"), fields["Rating"])


def _key_counts(lf: pl.LazyFrame, keys: list[str]) -> tuple[pl.LazyFrame, list[pl.Expr]]:
    """`lf` with the matches of `keys` in `_text`, and the columns `_n_<key>` (how often each
    key occurs in the JSON line) and `_n_response_string` (how often `response` holds a
    string). In valid JSON a quote inside a string is escaped, so `"key":` after `{` or `,` is
    always a key. One regex pass over the text."""
    pattern = r'[{,]\s*"(?:' + "|".join(keys) + r')"\s*:\s*"?'
    found = pl.col("_keys")
    counts = [
        found.list.eval(pl.element().str.contains(f'"{key}"', literal=True))
        .list.sum()
        .alias(f"_n_{key}")
        for key in keys
    ]
    string_response = found.list.eval(
        pl.element().str.contains('"response"', literal=True) & pl.element().str.ends_with('"')
    ).list.sum()
    lf = lf.with_columns(pl.col("_text").str.extract_all(pattern).alias("_keys"))
    return lf, [*counts, string_response.alias("_n_response_string")]


_EXACT = 2.0**50
"""Whole ratings below this sum exactly in any order (Python sums them in key order)."""


def _ultrafeedback(lf: pl.LazyFrame, schema: pl.Schema) -> pl.LazyFrame:
    """Candidates: one row per completion with `_line`, `_prompt` (the instruction),
    `_content`, `_overall`, `_mean` (of the ratings given), one `_aspect_<name>` column per
    aspect, `_integral` (every rating of the row whole, so any summing order gives `_mean`) and
    `_ok` (the whole row parses here as `ranked.parse_ultrafeedback` parses it, and its prompt
    passes `check_prompt`).

    In JSON Lines (`_text`), each key the parse reads must occur as often as Polars decoded
    it: Python keeps a repeated key's last value where Polars keeps the first.
    """
    completions = schema.get("completions")
    if (
        schema.get("instruction") != pl.String
        or not isinstance(completions, pl.List)
        or not isinstance(completions.inner, pl.Struct)
        or completions.inner.to_schema().get("response") != pl.String
    ):
        return lf.select("_line").clear()
    fields = completions.inner.to_schema()
    item = pl.col("_c").struct.field
    overall = _number(item("overall_score"), fields.get("overall_score", pl.Null()))
    annotations = fields.get("annotations", pl.Null())
    if overall is None or not isinstance(annotations, pl.Struct | pl.Null):
        return lf.select("_line").clear()
    aspects = annotations.to_schema() if isinstance(annotations, pl.Struct) else {}
    ratings = {
        name: _uf_rating(item("annotations").struct.field(name), dtype)
        for name, dtype in aspects.items()
    }
    if any(rating is None for rating in ratings.values()):
        return lf.select("_line").clear()
    values = [rating[0] for rating in ratings.values()]
    content = item("response")
    checks = [content.is_not_null(), _plain_text(content), overall[1]]
    checks += [rating[1] for rating in ratings.values()]
    prompt = pl.col("instruction")
    row_columns = [
        "_line",
        prompt.alias("_prompt"),
        pl.col("completions").alias("_c"),
        (prompt.is_not_null() & _plain_text(prompt) & (_strip(prompt) != "")).alias("_row_ok"),
    ]
    if "_text" in schema:
        lf, counts, counts_agree = _uf_keys_once(lf, list(aspects))
        row_columns += counts
        checks += counts_agree
    mean = pl.lit(None, dtype=pl.Float64)
    if values:
        given_ratings = pl.sum_horizontal(value.is_not_null() for value in values)
        mean = pl.when(given_ratings > 0).then(pl.sum_horizontal(values) / given_ratings)
    whole = [
        value.is_null() | ((value.round() == value) & (value.abs() < _EXACT)) for value in values
    ]
    return (
        lf.select(row_columns)
        .explode("_c")
        .select(
            "_line",
            "_prompt",
            content.alias("_content"),
            overall[0].alias("_overall"),
            *(value.alias(f"_aspect_{name}") for name, value in zip(aspects, values, strict=True)),
            mean.cast(pl.Float64).alias("_mean"),
            pl.all_horizontal(whole or [pl.lit(value=True)]).alias("_integral"),
            (pl.col("_row_ok") & pl.all_horizontal(checks)).fill_null(value=False).alias("_ok"),
        )
        .with_columns(pl.col("_integral", "_ok").all().over("_line"))
    )


def _uf_keys_once(
    lf: pl.LazyFrame, aspects: list[str]
) -> tuple[pl.LazyFrame, list[pl.Expr], list[pl.Expr]]:
    """JSON Lines: `lf` with the key matches, the row's key counts, and per completion the
    checks that each key the parse reads occurs in the line as often as Polars decoded a value
    for it (`response` always with a string)."""
    item = pl.col("_c").struct.field
    annotation = item("annotations").struct.field
    found = {
        "overall_score": item("overall_score").is_not_null(),
        "annotations": item("annotations").is_not_null(),
        **{name: annotation(name).is_not_null() for name in aspects},
        "Rating": pl.sum_horizontal(
            annotation(name).struct.field("Rating").is_not_null() for name in aspects
        ),
    }
    lf, counts = _key_counts(lf, ["response", *found])
    checks = [
        pl.col("_n_response") == pl.len().over("_line"),
        pl.col("_n_response_string") == pl.len().over("_line"),
        *(pl.col(f"_n_{key}") == count.sum().over("_line") for key, count in found.items()),
    ]
    return lf, counts, checks


def _plain_text(text: pl.Expr) -> pl.Expr:
    """Text both converters treat alike and that no role label starts (with
    `role_markers='split'` the per-row converter would strip it)."""
    return _safe_text(text) & ~text.str.contains(_LEADING_LABEL)


def _ranked(
    build: Callable[[pl.LazyFrame, pl.Schema], pl.LazyFrame], options: ConvertOptions
) -> Callable[[pl.LazyFrame, pl.Schema], pl.LazyFrame]:
    """A candidates builder turned into a pairs builder for `options`."""
    return lambda lf, schema: _ranked_pairs(build(lf, schema).collect(), options).lazy()


def _ranked_pairs(candidates: pl.DataFrame, options: ConvertOptions) -> pl.DataFrame:
    """Pairs of the candidates' rows, as `ranked.ranked_pairs` makes them: scored by the
    options' source, blank, unscored and repeated answers left out, then `choose_pairs` (the
    same function the per-row converter calls) per prompt. Rows with fewer than two candidates
    or no pair are left out: the per-row converter rejects them with its reason."""
    if "_ok" not in candidates.columns or not candidates.height:
        return candidates.select("_line").clear()
    source = options.score_source or "overall"  # no UltraFeedback row has a rank
    aspect = f"_aspect_{options.aspect}"
    score = {
        "overall": pl.col("_overall"),
        # a row with a fractional rating is summed in its own key order: per row
        "mean_aspects": pl.when(pl.col("_integral")).then(pl.col("_mean")),
        "aspect": pl.col(aspect) if aspect in candidates.columns else None,
    }.get(source)
    if score is None:
        return candidates.select("_line").clear()  # no row has such scores: all rejected
    text = _strip(pl.col("_content"))
    kept = (
        candidates.filter(pl.col("_ok"))
        .select("_line", "_prompt", text.alias("_text"), score.alias("_score"))
        .filter(pl.col("_score").is_not_null() & (pl.col("_text") != ""))
        .filter(pl.col("_text").is_first_distinct().over("_line"))
        .filter(pl.len().over("_line") >= 2)
    )
    if not kept.height:
        return candidates.select("_line").clear()
    lines = kept["_line"].to_numpy().astype(np.int64)
    starts = np.flatnonzero(np.diff(lines, prepend=-1))
    ends = [*starts[1:].tolist(), len(lines)]
    prompts = kept["_prompt"].gather(starts).to_list()
    scores = kept["_score"].to_list()
    chosen: list[int] = []
    rejected: list[int] = []
    for prompt, start, end in zip(prompts, starts.tolist(), ends, strict=True):
        for first, second in choose_pairs(
            [{"role": "user", "content": prompt}], scores[start:end], options
        ):
            chosen.append(start + first)
            rejected.append(start + second)
    picked = {side: kept[index] for side, index in (("c", chosen), ("r", rejected))}
    return pl.DataFrame(
        {
            "_line": picked["c"]["_line"],
            "prompt": picked["c"]
            .select(pl.concat_list(pl.struct(role=pl.lit("user"), content=pl.col("_prompt"))))
            .to_series(),
            "_chosen": picked["c"]["_text"],
            "_rejected": picked["r"]["_text"],
            "score_chosen": picked["c"]["_score"],
            "score_rejected": picked["r"]["_score"],
        }
    )


_BUILDERS: dict[str, Callable[[pl.LazyFrame, pl.Schema], pl.LazyFrame]] = {
    "hh_rlhf": _hh_rlhf,
    "trl_preference": _trl_preference,
    "ultrafeedback": _ultrafeedback,
}
_RANKED = {"ultrafeedback"}
"""Builders that give candidates, one row per completion, to pair under the options."""


# ---------------------------------------------------------------------------------------------
# Output


_OUTPUT_SCHEMA = pl.Schema({**PAIR_SCHEMA, "_file": pl.String, "_line": pl.Int64})


def _finish(pairs: pl.DataFrame, path: Path, source: str) -> pl.DataFrame:
    """Canonical pair columns, `_file` and `_line`; ids as `records.pair_id` makes them."""
    if not pairs.height:
        return pl.DataFrame(schema=_OUTPUT_SCHEMA)
    frame = pairs.select(
        "_line",
        pl.col("prompt").cast(PAIR_SCHEMA["prompt"]),
        *(
            pl.concat_list(pl.struct(role=pl.lit("assistant"), content=pl.col(f"_{side}")))
            .cast(PAIR_SCHEMA[side])
            .alias(side)
            for side in ("chosen", "rejected")
        ),
        pl.col("score_chosen").cast(pl.Float64),
        pl.col("score_rejected").cast(pl.Float64),
    )
    return frame.with_columns(pair_ids()).select(
        "id",
        "prompt",
        "chosen",
        "rejected",
        pl.lit(source, dtype=pl.String).alias("source"),
        "score_chosen",
        "score_rejected",
        pl.lit(str(path), dtype=pl.String).alias("_file"),
        pl.col("_line").cast(pl.Int64),
    )


def json_value(value: pl.Expr) -> pl.Expr:
    """`value` as `json.dumps(..., ensure_ascii=False, separators=(",", ":"))` writes it: Polars
    writes strings exactly as Python does (checked on every code point); the value is encoded
    as a one-field object, whose key and braces are cut off."""
    return pl.struct(value.alias("k")).struct.json_encode().str.slice(5).str.head(-1)


def pair_ids() -> pl.Expr:
    """`records.pair_id` of the `prompt`, `chosen` and `rejected` columns (PAIR_SCHEMA types),
    as column `id`."""
    parts = [json_value(pl.col(name)) for name in ("prompt", "chosen", "rejected")]
    payload = pl.concat_str(
        [pl.lit("["), parts[0], pl.lit(","), parts[1], pl.lit(","), parts[2], pl.lit("]")]
    )
    return sha256_hex(payload).str.head(32).alias("id")


def sha256_hex(text: pl.Expr) -> pl.Expr:
    """Hex sha256 of the UTF-8 text, as hashlib gives it (Rust, via polars-hash)."""
    return text.chash.sha2_256()


PY_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
"""The characters Python's `str.strip`, `str.isspace` and `re`'s `\\s` take for whitespace:
Polars' (Rust's) whitespace plus \\x1c-\\x1f."""
PY_SPACE = r"[\s\x1c-\x1f]"
"""Python's `\\s` as a Polars regex."""


def py_strip(text: pl.Expr) -> pl.Expr:
    """`str.strip()` as Python does it."""
    return text.str.strip_chars(PY_WHITESPACE)
