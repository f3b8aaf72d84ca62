"""Vectorised conversion of SFT files (Alpaca, ShareGPT, OpenAI messages): Polars over the whole
file finds each row's target (prompt messages and stripped answer), and the rejected answers of
`options.negatives` are found for all targets of all files at once (`sft.rejected_answers`).

Rows that Polars cannot vouch for go, in file order, to the per-row parser; their targets join the
fast ones in the per-row converter's order, so the pairs, ids, rejects and counts do not depend on
which path a row took (tested row for row against the per-row converter).
"""

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from orpo_pipeline.errors import DataError
from orpo_pipeline.formats.options import ConvertOptions
from orpo_pipeline.formats.preference import ALPACA_PROMPT_FIELDS
from orpo_pipeline.formats.readers import (
    _LONE_SURROGATE,
    MAX_NESTING,
    MAX_RAW_CHARS,
    ReadItem,
    SourceRow,
    _json_records,
    _may_hold_problems,
    input_kind,
)
from orpo_pipeline.formats.rows import Pending, RowError
from orpo_pipeline.formats.sft import (
    ALPACA_ANSWER_FIELDS,
    TARGET_SCHEMA,
    rejected_answers,
    sft_targets,
    targets_frame,
)
from orpo_pipeline.formats.vectorized import (
    _LEADING_LABEL,
    MESSAGE,
    _decode,
    _json_lines,
    _mapped,
    _rest_lines,
    json_lines_rest,
    pair_ids,
    parquet_rest,
    parquet_rows,
    py_strip,
)
from orpo_pipeline.records import PAIR_SCHEMA

SHAREGPT_MESSAGE = pl.Struct({"from": pl.String, "value": pl.String})


class FastTargets(NamedTuple):
    """Targets found here and the rows left for the per-row converter."""

    targets: pl.DataFrame
    """`_line`, `prompt` and `answer` (stripped) of each row taken here, in file order."""
    rest: list[ReadItem]
    """The other rows and the blank lines, in file order."""


def fast_targets(path: Path, name: str, options: ConvertOptions) -> FastTargets | None:
    """The targets of the rows of `path` (format `name`) that Polars can vouch for; None when
    the format or the file kind has no vectorised path, or when salvaging or mapping."""
    build = _BUILDERS.get(name)
    if build is None or options.mapping is not None or options.salvage:
        return None
    split = options.role_markers == "split"
    kind = input_kind(path)
    if kind == "parquet":
        if (parquet := parquet_rows(path)) is None:
            return None
        table, frame = parquet
        targets = _targets(build(frame.lazy(), frame.schema), split=split)
        return FastTargets(targets, parquet_rest(table, frame, targets))
    items: dict[int, dict] = {}
    if kind == "json" and (array := _json_array(path)) is not None:
        lines, items = array
    elif kind != "jsonl" or (lines := _json_lines(path)) is None:
        return None
    counted = lines.with_columns(_key_counts(name)).filter(_text_checks(name))
    parts = [
        build(frame.lazy(), frame.schema)
        for fits, layout in _LAYOUTS[name]
        for frame in _decode(counted.filter(fits), name, [layout])
    ]
    targets = _targets(pl.concat(parts, how="diagonal_relaxed"), split=split).sort("_line")
    if items:
        rest = _rest_lines(lines["_line"], targets)
        return FastTargets(targets, [SourceRow(int(n), items[n]) for n in rest])
    return FastTargets(targets, json_lines_rest(lines, targets))


def _json_array(path: Path) -> tuple[pl.DataFrame, dict[int, dict]] | None:
    """`_line` and `_text` (the item written again as JSON, as `raw_text` writes it) of each item
    of a JSON document, and the items by line; None when the per-row reader has something to
    say about the file or an item (it is read per row then)."""
    try:
        text, _, items = _json_records(path)
    except DataError:
        return None
    if not all(isinstance(item, dict) for _, item in items):
        return None
    texts = [json.dumps(item, ensure_ascii=False) for _, item in items]
    if _may_hold_problems(text) and any(
        t.count("[") + t.count("{") > MAX_NESTING or _LONE_SURROGATE.search(t) for t in texts
    ):
        return None
    lines = pl.DataFrame(
        {"_line": [line for line, _ in items], "_text": texts},
        schema={"_line": pl.UInt32, "_text": pl.String},
    )
    return lines, dict(items)


# ---------------------------------------------------------------------------------------------
# Text checks for JSON Lines (and JSON items): what Polars' decoder would read differently


_MESSAGE_KEYS = {"sharegpt": ("from", "value"), "openai_messages": ("role", "content")}
"""The message keys of each format; each message must have each once, with a string value
(Polars keeps the first of two equal keys, Python the last)."""
_PART_KEYS = ("type", "text", "value")
"""The keys of OpenAI text parts read here (`{"type": "text", "text" | "value": ...}`)."""


def _key_counts(name: str) -> list[pl.Expr]:
    """`_n_<key>`: how often each message key (and text-part key) occurs in the line."""
    text = pl.col("_text")
    keys = (*_MESSAGE_KEYS["openai_messages"], *_PART_KEYS)
    return [
        text.str.count_matches(f'"{key}"' + r"\s*:").alias(f"_n_{key}")
        for key in (keys if name == "openai_messages" else _MESSAGE_KEYS.get(name, ()))
    ]


def _string_contents() -> pl.Expr:
    """Every `content` of the line holds a string (else, for OpenAI messages, text parts)."""
    return pl.col("_n_content") == pl.col("_text").str.count_matches(r'"content"\s*:\s*"')


_JSON_STRING = r'"(?:[^"\\]|\\.)*"'
_TURN = r"\[\s*" + _JSON_STRING + r"\s*,\s*" + _JSON_STRING + r"\s*\]"
_HISTORY = r"(null|\[\s*(" + _TURN + r"(\s*,\s*" + _TURN + r")*)?\s*\]\s*[,}])"
"""Alpaca's `history` as JSON text: null or a list of [question, answer] string pairs."""


def _text_checks(name: str) -> pl.Expr:
    text = pl.col("_text")

    def count(pattern: str) -> pl.Expr:
        return text.str.count_matches(pattern)

    def strings(key: str) -> pl.Expr:
        return pl.col(f"_n_{key}") == count(f'"{key}"' + r'\s*:\s*"')

    checks = []
    if name == "sharegpt":
        checks += [strings("from"), strings("value")]
    if name == "openai_messages":  # a first message with `from` is read as ShareGPT's
        checks += [strings("role"), count(r'"from"\s*:') == 0, count(r'"answer"\s*:') == 0]
        parts = pl.col("_n_content") == count(r'"content"\s*:\s*\[')
        checks += [_string_contents() | parts, strings("text"), strings("value")]
        checks.append(pl.col("_n_type") == count(r'"type"\s*:\s*"text"'))
    if name == "alpaca":  # history: [question, answer] string pairs; instances go per row
        checks.append(count(r'"history"\s*:') == count(r'"history"\s*:\s*' + _HISTORY))
        checks.append(count(r'"instances"\s*:') == count(r'"instances"\s*:\s*null'))
    return pl.all_horizontal(checks) if checks else pl.lit(value=True)


# ---------------------------------------------------------------------------------------------
# Targets as expressions


def _targets(conversations: pl.LazyFrame, *, split: bool) -> pl.DataFrame:
    """`_line`, `prompt` and stripped `answer` of the rows whose conversation (`prompt` and the
    final `_answer`, `_ok`) passes `sft_targets`' checks; with `split`, no text may start with
    a role label (the per-row converter splits or strips those and counts the changes)."""
    prompt, answer = pl.col("prompt"), py_strip(pl.col("_answer"))
    content = pl.element().struct.field("content")
    ok = (
        pl.col("_ok")
        & (prompt.list.len() > 0)
        & prompt.list.last().struct.field("role").is_in(["user", "tool"])
        & prompt.list.eval(py_strip(content) != "").list.all()
        & (answer != "")
    )
    if split:
        ok = ok & ~(
            prompt.list.eval(content.str.contains(_LEADING_LABEL)).list.any()
            | pl.col("_answer").str.contains(_LEADING_LABEL)
        )
    return (
        conversations.filter(ok.fill_null(value=False))
        .select(pl.col("_line").cast(pl.Int64), prompt, answer.alias("answer"))
        .collect()
    )


def _split(conversation: pl.Expr) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    """(prompt, answer text, ok) of a conversation that must end with an assistant answer."""
    last = conversation.list.last()
    ok = (conversation.list.len() >= 2) & (last.struct.field("role") == "assistant")
    prompt = conversation.list.head(conversation.list.len() - 1)
    return prompt, last.struct.field("content"), ok


def _system_head(system: pl.Expr) -> pl.Expr:
    """A one-message list with the system text, or an empty list where `system` is null."""
    return (
        pl.when(system.is_not_null())
        .then(pl.concat_list(pl.struct(role=pl.lit("system"), content=system)))
        .otherwise(pl.lit([], dtype=pl.List(MESSAGE)))
    )


def _columns(schema: pl.Schema, names: tuple[str, ...]) -> list[pl.Expr] | None:
    """The string columns `names` (null where absent); None if one has another type."""
    if any(schema.get(n, pl.Null) not in (pl.String, pl.Null) for n in names):
        return None
    return [pl.col(n).cast(pl.String) if n in schema else pl.lit(None, pl.String) for n in names]


def _none(lf: pl.LazyFrame) -> pl.LazyFrame:
    return lf.select(
        "_line",
        pl.lit([], dtype=pl.List(MESSAGE)).alias("prompt"),
        pl.lit("", dtype=pl.String).alias("_answer"),
        pl.lit(value=False).alias("_ok"),
    ).clear()


def _key_counts_match(schema: pl.Schema, name: str, messages: pl.Expr) -> pl.Expr:
    """JSON Lines: every message has each key once (the counts `_key_counts` made)."""
    return pl.all_horizontal(
        [
            pl.col(f"_n_{key}") == messages.list.len()
            for key in _MESSAGE_KEYS[name]
            if f"_n_{key}" in schema
        ]
        or [pl.lit(value=True)]
    )


def _alpaca(lf: pl.LazyFrame, schema: pl.Schema) -> pl.LazyFrame:
    """`parse_alpaca` without instances: system, history turns, instruction (+ input), answer."""
    prompts = _columns(schema, (*ALPACA_PROMPT_FIELDS, "input", "system"))
    answers = _columns(schema, ALPACA_ANSWER_FIELDS)
    if prompts is None or answers is None:
        return _none(lf)
    *instructions, extra, system = prompts
    instruction = pl.coalesce(instructions)
    text = (
        pl.when(extra.is_not_null() & (py_strip(extra) != ""))
        .then(pl.concat_str(instruction, pl.lit("\n"), extra))
        .otherwise(instruction)
    )
    system = pl.when(py_strip(system) != "").then(system)
    answer = pl.coalesce(answers)
    ok = instruction.is_not_null() & answer.is_not_null()
    if "instances" in schema:  # Parquet; JSON lines with instances are left out as text
        ok = ok & pl.col("instances").is_null()
    turns, history_ok = _history(schema)
    user = pl.concat_list(pl.struct(role=pl.lit("user"), content=text))
    return lf.select(
        "_line",
        pl.concat_list(_system_head(system), turns, user).alias("prompt"),
        answer.alias("_answer"),
        (ok & history_ok).alias("_ok"),
    )


def _history(schema: pl.Schema) -> tuple[pl.Expr, pl.Expr]:
    """(the messages of the `history` column's [question, answer] pairs, whether it has only
    such pairs); a null or empty history has none."""
    none = pl.lit([], dtype=pl.List(MESSAGE))
    dtype = schema.get("history", pl.Null)
    if dtype == pl.Null:
        return none, pl.lit(value=True)
    history = pl.col("history")
    if dtype != pl.List(pl.List(pl.String)):
        empty = history.list.len() == 0 if isinstance(dtype, pl.List) else pl.lit(value=False)
        return none, history.is_null() | empty
    turn = pl.element()
    pairs = history.list.eval(
        (turn.list.len() == 2) & turn.list.eval(pl.element().is_not_null()).list.all()
    ).list.all()
    messages = history.list.eval(
        pl.concat_list(
            pl.struct(role=pl.lit("user"), content=turn.list.get(0, null_on_oob=True)),
            pl.struct(role=pl.lit("assistant"), content=turn.list.get(1, null_on_oob=True)),
        )
    ).list.eval(pl.element().explode())
    return pl.when(history.is_not_null()).then(messages).otherwise(none), history.is_null() | pairs


def _messages_of(schema: pl.Schema, column: str, role: str, content: str) -> pl.Expr | None:
    """The column's messages with our role names (null where a role is unknown or a field
    missing); None unless it is a list of objects with string `role` and `content` fields."""
    dtype = schema.get(column)
    if not (isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct)):
        return None
    fields = {f.name: f.dtype for f in dtype.inner.fields}
    element = pl.element().struct.field
    text = element(content)
    if fields.get(content) == pl.List(TEXT_PART) and "_n_text" in schema:  # JSON text parts
        text = _part_texts(text)
    elif fields.get(content) != pl.String:
        return None
    if fields.get(role) != pl.String:
        return None
    if role == "role" and "from" in fields:  # a message with `from` is read as ShareGPT's
        return None
    return _mapped(pl.col(column).list.eval(pl.struct(role=element(role), content=text)))


def _part_texts(parts: pl.Expr) -> pl.Expr:
    """`content_text` of a list of text parts; null where a part has neither text key."""
    part = pl.element().struct.field
    texts = parts.list.eval(pl.coalesce(part("text"), part("value")))
    return pl.when(texts.list.eval(pl.element().is_not_null()).list.all()).then(texts.list.join(""))


def _part_keys_once(schema: pl.Schema) -> pl.Expr:
    """JSON text parts: each `text` and `value` key of the line is one part's (none twice)."""
    dtype = schema["messages"]
    if not (isinstance(dtype, pl.List) and dtype.inner.to_schema()["content"] != pl.String):
        return pl.lit(value=True)
    part = pl.element().struct.field
    checks = []
    for key in ("text", "value"):
        per_message = pl.element().struct.field("content").list.eval(part(key).is_not_null())
        found = pl.col("messages").list.eval(per_message.list.sum()).list.sum()
        checks.append(pl.col(f"_n_{key}") == found)
    return pl.all_horizontal(checks)


def _sharegpt(lf: pl.LazyFrame, schema: pl.Schema) -> pl.LazyFrame:
    """`parse_sharegpt`: `conversations[{from, value}]` after a non-empty string `system`."""
    messages = _messages_of(schema, "conversations", "from", "value")
    if messages is None:
        return _none(lf)
    system = pl.col("system") if schema.get("system") == pl.String else pl.lit(None, pl.String)
    head = _system_head(pl.when(system != "").then(system))
    return _conversations(lf, schema, "sharegpt", messages, head)


def _openai_messages(lf: pl.LazyFrame, schema: pl.Schema) -> pl.LazyFrame:
    """`parse_openai_messages` for string contents."""
    messages = _messages_of(schema, "messages", "role", "content")
    if messages is None:
        return _none(lf)
    messages = pl.when(_part_keys_once(schema)).then(messages)
    return _conversations(lf, schema, "openai_messages", messages, pl.lit([], pl.List(MESSAGE)))


def _conversations(
    lf: pl.LazyFrame, schema: pl.Schema, name: str, messages: pl.Expr, head: pl.Expr
) -> pl.LazyFrame:
    """The builder's columns for `head` then `messages` (each computed once, in stages)."""
    column = "conversations" if name == "sharegpt" else "messages"
    staged = lf.select(
        "_line",
        messages.alias("_messages"),
        head.alias("_head"),
        _key_counts_match(schema, name, pl.col(column)).alias("_counted"),
    ).select(
        "_line",
        pl.concat_list("_head", "_messages").alias("_conversation"),
        (pl.col("_messages").is_not_null() & pl.col("_counted")).alias("_complete"),
    )
    prompt, answer, ok = _split(pl.col("_conversation"))
    return staged.select(
        "_line",
        prompt.alias("prompt"),
        answer.alias("_answer"),
        (ok & pl.col("_complete")).alias("_ok"),
    )


_BUILDERS = {"alpaca": _alpaca, "sharegpt": _sharegpt, "openai_messages": _openai_messages}
TEXT_PART = pl.Struct(dict.fromkeys(_PART_KEYS, pl.String))
_ALL = pl.lit(value=True)
_LAYOUTS = {
    "alpaca": [
        (
            _ALL,
            {
                **dict.fromkeys(
                    (*ALPACA_PROMPT_FIELDS, "input", "system", *ALPACA_ANSWER_FIELDS), pl.String
                ),
                "history": pl.List(pl.List(pl.String)),
            },
        )
    ],
    "sharegpt": [(_ALL, {"conversations": pl.List(SHAREGPT_MESSAGE), "system": pl.String})],
    "openai_messages": [
        (_string_contents(), {"messages": pl.List(MESSAGE)}),
        (
            ~_string_contents(),
            {"messages": pl.List(pl.Struct({"role": pl.String, "content": pl.List(TEXT_PART)}))},
        ),
    ],
}
"""Per format, the lines (JSON Lines, JSON items) of each layout and the fields decoded."""


# ---------------------------------------------------------------------------------------------
# Pairs from the targets of every file


class FileTargets(NamedTuple):
    """One file's fast targets, placed among the rows parsed per row."""

    targets: pl.DataFrame
    """`FastTargets.targets` plus `_slot`: the index in the per-row list it goes before."""
    path: Path
    source: str


def place(
    fast: FastTargets, path: Path, source: str, pending: list[Pending], start: int
) -> "FileTargets":
    """`fast`'s targets with their place among `pending`, whose items from `start` on are this
    file's rows parsed per row."""
    lines = np.array([item.line for item in pending[start:]], dtype=np.int64)
    slots = start + np.searchsorted(lines, fast.targets["_line"].to_numpy())
    return FileTargets(
        fast.targets.with_columns(_slot=pl.Series(slots, dtype=pl.Int64)), path, source
    )


class GroupOutcome(NamedTuple):
    """What the SFT rows of all files gave, in the per-row converter's order."""

    pairs: pl.DataFrame
    """PAIR_SCHEMA columns plus `_file` and `_line`."""
    rejects: list[tuple[str, int, str, str, str, str]]
    """(file, line, source, reason, detail, raw) of each row without a pair."""
    rows_converted: int


def group_pairs(
    pending: list[Pending], files: list[FileTargets], options: ConvertOptions
) -> GroupOutcome:
    """`sft.sft_pairs` over the rows parsed per row and the fast targets of `files` together."""
    slow, errors = sft_targets(pending)
    targets = pl.concat(
        [
            targets_frame(slow)
            .with_columns(
                pl.Series("_slot", [t.index for t in slow], pl.Int64),
                pl.lit(value=False).alias("_fast"),
                pl.lit(0).alias("_seq"),
                pl.lit(0).alias("_order"),
                pl.Series("_file", [pending[t.index].file for t in slow], pl.String),
                pl.Series("_line", [pending[t.index].line for t in slow], pl.Int64),
                pl.Series("_source", [pending[t.index].source for t in slow], pl.String),
            )
            .select(*_TARGETS)
            .cast(_TARGETS),
            *(
                f.targets.select(
                    "_slot",
                    pl.lit(value=True).alias("_fast"),
                    pl.lit(seq).alias("_seq"),
                    pl.col("_line").alias("_order"),
                    pl.lit(str(f.path)).alias("_file"),
                    "_line",
                    pl.lit(f.source).alias("_source"),
                    *TARGET_SCHEMA,
                ).cast(_TARGETS)
                for seq, f in enumerate(files)
            ),
        ]
    )
    # Fast rows go before the per-row item of their slot, in file order then line order; one
    # item's targets keep their order.
    keys = ["_slot", "_fast", "_seq", "_order"]
    targets = targets.sort(keys, descending=[False, True, False, False], maintain_order=True)
    targets = pl.concat(
        [targets, rejected_answers(targets.select(*TARGET_SCHEMA), options)], how="horizontal"
    )
    good = targets.filter(pl.col("rejected").is_not_null())
    converted = good.select(keys).unique()
    label = f"#rejected={options.negatives}"
    pairs = good.select(
        pl.col("prompt").cast(PAIR_SCHEMA["prompt"]),
        *(
            pl.concat_list(pl.struct(role=pl.lit("assistant"), content=pl.col(column)))
            .cast(PAIR_SCHEMA[side])
            .alias(side)
            for side, column in (("chosen", "answer"), ("rejected", "rejected"))
        ),
        (pl.col("_source") + label).alias("source"),
        pl.lit(None, pl.Float64).alias("score_chosen"),
        pl.lit(None, pl.Float64).alias("score_rejected"),
        "_file",
        "_line",
    ).with_columns(pair_ids())
    pairs = pairs.select(*PAIR_SCHEMA, "_file", "_line")
    # Rows without a pair: a per-row target error first, else the first target's reason.
    bad = targets.join(converted, on=keys, how="anti", maintain_order="left").unique(
        keys, keep="first", maintain_order=True
    )
    rejects = _rejects(pending, bad, errors, converted, files)
    return GroupOutcome(pairs, rejects, converted.height)


_TARGETS = pl.Schema(
    {
        "_slot": pl.Int64,
        "_fast": pl.Boolean,
        "_seq": pl.Int64,
        "_order": pl.Int64,
        "_file": pl.String,
        "_line": pl.Int64,
        "_source": pl.String,
        **TARGET_SCHEMA,
    }
)


def _rejects(
    pending: list[Pending],
    bad: pl.DataFrame,
    errors: dict[int, RowError],
    converted: pl.DataFrame,
    files: list[FileTargets],
) -> list[tuple[str, int, str, str, str, str]]:
    """The rejects of the rows without a pair, in order."""
    paired = set(converted.filter(~pl.col("_fast"))["_slot"].to_list())
    first = {
        slot: (reason, detail)
        for slot, reason, detail in bad.filter(~pl.col("_fast"))
        .select("_slot", "reason", "detail")
        .iter_rows()
    }
    raws = _fast_raws(bad.filter(pl.col("_fast")), files)
    found = []
    for index, item in enumerate(pending):
        if index not in paired:
            error = errors.get(index)
            reason, detail = (error.reason, error.detail) if error else first[index]
            found.append(
                ((index, 1, 0, 0), (item.file, item.line, item.source, reason, detail, item.raw))
            )
    for slot, seq, order, file, source, reason, detail in (
        bad.filter(pl.col("_fast"))
        .select("_slot", "_seq", "_order", "_file", "_source", "reason", "detail")
        .iter_rows()
    ):
        raw = raws[(seq, order)]
        found.append(((slot, 0, seq, order), (file, order, source, reason, detail, raw)))
    return [reject for _, reject in sorted(found, key=lambda f: f[0])]


def _fast_raws(bad: pl.DataFrame, files: list[FileTargets]) -> dict[tuple[int, int], str]:
    """The raw text of rejected fast rows, as the per-row reader keeps it (read again)."""
    raws: dict[tuple[int, int], str] = {}
    for seq, f in enumerate(files):
        wanted = bad.filter(pl.col("_seq") == seq)["_order"]
        if not len(wanted):
            continue
        if input_kind(f.path) == "parquet":
            values = pq.read_table(f.path).take(pa.array(wanted.to_numpy() - 1)).to_pylist()
            texts = [SourceRow(0, value).raw_text() for value in values]
        else:
            array = _json_array(f.path) if input_kind(f.path) == "json" else None
            lines = array[0] if array else _json_lines(f.path)
            assert lines is not None  # it was read before
            texts = (
                lines.filter(pl.col("_line").is_in(wanted.implode()))["_text"]
                .str.head(MAX_RAW_CHARS)
                .to_list()
            )
        raws.update({(seq, int(n)): t for n, t in zip(wanted, texts, strict=True)})
    return raws
