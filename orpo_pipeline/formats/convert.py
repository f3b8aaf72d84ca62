"""`convert_files`: read inputs, detect or take the format, turn rows into canonical pairs."""

import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import polars as pl
import pyarrow as pa
from pydantic import ValidationError

from orpo_pipeline.errors import ConfigError, DataError
from orpo_pipeline.formats import (
    llm_judge,
    pairwise,
    preference,
    ranked,
    sft,
    vectorized,
    vectorized_sft,
)
from orpo_pipeline.formats.mapping import (
    MAPPING_EXAMPLE,
    mapping_fields,
    mapping_kind,
    parse_mapping,
)
from orpo_pipeline.formats.markers import LABEL_STRIPPED, strip_markers
from orpo_pipeline.formats.options import ConvertOptions
from orpo_pipeline.formats.readers import BadRow, BlankLine, ReadItem, SourceRow, read_rows
from orpo_pipeline.formats.rows import Pair, Pending, RowError, check_pair
from orpo_pipeline.records import PAIR_SCHEMA, pair_id

Kind = Literal["preference", "ranked", "pairwise", "sft", "unpaired"]

DETECT_SAMPLE_ROWS = 50
FRAME_CHUNK_PAIRS = 50_000


class Format(NamedTuple):
    """One input format: its record kind, row parser, detection test and what detection needs."""

    kind: Kind
    parse: Callable[[dict[str, Any], ConvertOptions], list[Any]]
    detect: Callable[[dict[str, Any]], bool]
    looks_for: str


FORMATS: dict[str, Format] = {
    "hh_rlhf": Format(
        "preference",
        preference.parse_hh_rlhf,
        preference.is_hh_rlhf,
        "chosen/rejected transcripts starting with '\\n\\nHuman:'",
    ),
    "llamafactory_v1": Format(
        "preference",
        preference.parse_llamafactory_v1,
        preference.is_llamafactory_v1,
        "chosen_messages + rejected_messages (lists)",
    ),
    "sharegpt_preference": Format(
        "preference",
        preference.parse_sharegpt_preference,
        preference.is_sharegpt_preference,
        "conversations (list) + chosen/rejected messages (LLaMA-Factory DPO)",
    ),
    "alpaca_preference": Format(
        "preference",
        preference.parse_alpaca_preference,
        preference.is_alpaca_preference,
        "instruction|question + chosen/rejected (or chosen_response/rejected_response) strings",
    ),
    "trl_preference": Format(
        "preference",
        preference.parse_trl_preference,
        preference.is_trl_preference,
        "chosen + rejected (strings or message lists), prompt optional",
    ),
    "ultrafeedback": Format(
        "ranked",
        ranked.parse_ultrafeedback,
        ranked.is_ultrafeedback,
        "instruction + completions[{response, annotations, overall_score}]",
    ),
    "nectar": Format(
        "ranked",
        ranked.parse_nectar,
        ranked.is_nectar,
        "prompt + answers[{answer, rank}]",
    ),
    "shp": Format(
        "ranked",
        ranked.parse_shp,
        ranked.is_shp,
        "history + human_ref_A/B + score_A/B (+ labels)",
    ),
    "oasst": Format(
        "ranked",
        ranked.parse_oasst,
        ranked.is_oasst,
        "a message tree: text + role + replies[...] with sibling rank (or {prompt: tree})",
    ),
    "llm_judge": Format(
        "pairwise",
        llm_judge.parse_llm_judge,
        llm_judge.is_llm_judge,
        "a FastChat llm_judge folder: question.jsonl + model_answer/ + model_judgment/*_pair.jsonl",
    ),
    "arena": Format(
        "pairwise",
        pairwise.parse_arena,
        pairwise.is_arena,
        "conversation_a + conversation_b + winner (Chatbot Arena, MT-bench human judgments)",
    ),
    "arena_kaggle": Format(
        "pairwise",
        pairwise.parse_arena_kaggle,
        pairwise.is_arena_kaggle,
        "prompt + response_a + response_b + winner_model_a/winner_model_b/winner_tie",
    ),
    "alpaca_eval": Format(
        "pairwise",
        pairwise.parse_alpaca_eval,
        pairwise.is_alpaca_eval,
        "instruction + output_1 + output_2 + preference",
    ),
    "kto": Format(
        "unpaired",
        sft.parse_kto,
        sft.is_kto,
        "messages (or prompt + completion) + boolean label",
    ),
    "sharegpt": Format(
        "sft",
        sft.parse_sharegpt,
        sft.is_sharegpt,
        "conversations[{from, value}]",
    ),
    "openai_messages": Format(
        "sft",
        sft.parse_openai_messages,
        sft.is_openai_messages,
        "messages[{role, content}] ending with an assistant answer",
    ),
    "alpaca": Format(
        "sft",
        sft.parse_alpaca,
        sft.is_alpaca,
        "instruction (+ input) + output, or instruction + instances[{input, output}]",
    ),
    "prompt_completion": Format(
        "sft",
        sft.parse_prompt_completion,
        sft.is_prompt_completion,
        "prompt + completion strings",
    ),
    "mapping": Format(
        "preference",
        parse_mapping,
        lambda row: False,
        "never detected: pass a field mapping",
    ),
}
"""Format name -> format; auto-detection tries them in this order (most specific first)."""


class Reject(NamedTuple):
    """One input row that produced no pair."""

    file: str
    line: int
    reason: str
    detail: str
    raw: str


@dataclass(frozen=True)
class ConversionResult:
    """What `convert_files` produced.

    Every input row is counted once: `rows_in == rows_converted + rows_rejected`. A row is
    converted when it contributed to at least one output pair; one row can give many pairs (a
    ranked row, an OASST tree) and several rows can give one pair (agreeing pairwise judgments),
    so `pairs.height` is not tied to `rows_converted`.
    """

    pairs: pl.DataFrame
    """PAIR_SCHEMA columns in order, plus `_file` and `_line` (the row a pair came from)."""
    rejects: pl.DataFrame
    """One row per rejected input row: file, line, reason, detail, raw (first 4 KB)."""
    format: str
    """The format used, given or detected."""
    kind: Kind
    """The format's record kind: preference, ranked, pairwise, sft or unpaired."""
    rows_in: int
    """Input rows: JSONL lines (blank lines excluded), array items, Parquet/CSV/datasets rows;
    for an llm_judge folder, the judgment lines (questions and answers are looked up)."""
    rows_converted: int
    """Input rows that contributed to at least one pair."""
    options: ConvertOptions
    """The settings used."""
    inputs: tuple[Path, ...]
    """The input files, in order (an llm_judge folder's question, answer and judgment files)."""
    pairs_dropped: dict[str, int] = field(default_factory=dict)
    """Candidate pairs of converted rows left out, by reason (e.g. one ranked completion tied)."""
    rows_by_file: dict[str, int] = field(default_factory=dict)
    """Input rows per file read for rows."""
    blank_lines: int = 0
    """Blank lines of JSONL and CSV inputs: not rows, counted here."""
    markers_changed: dict[str, int] = field(default_factory=dict)
    """Texts changed for HH role markers (`role_markers='split'`), by kind of change."""
    warnings: tuple[str, ...] = ()
    """Things the user should know that reject no row, e.g. mapped-away fields holding text."""

    @property
    def rows_rejected(self) -> int:
        """Input rows that produced no pair."""
        return self.rejects.height

    def reject_counts(self) -> dict[str, int]:
        """Rejected rows by reason, most frequent first."""
        counts = (
            self.rejects.group_by("reason").len().sort(["len", "reason"], descending=[True, False])
        )
        return dict(counts.iter_rows())


REJECTS_SCHEMA = pl.Schema(
    {
        "file": pl.String,
        "line": pl.Int64,
        "source": pl.String,
        "reason": pl.String,
        "detail": pl.String,
        "raw": pl.String,
    }
)
PROVENANCE_COLUMNS = {"_file": pl.String, "_line": pl.Int64}


def convert_files(paths: list[Path], options: ConvertOptions) -> ConversionResult:
    """Convert input files of one format into canonical preference pairs and rejected rows.

    Raises:
        ConfigError: unknown format name, or inputs of different formats.
        DataError: a file cannot be read, or its rows match no known format.
    """
    if not paths:
        msg = "no input files given"
        raise ConfigError(msg)
    name = _format_name(paths, options)
    fmt = FORMATS[name]
    kind = mapping_kind(options.mapping) if name == "mapping" and options.mapping else fmt.kind
    per_row = _RowConverter(fmt, kind, options)
    collector, pending, markers = per_row.collector, per_row.pending, per_row.markers
    sft_fast: list[vectorized_sft.FileTargets] = []
    for path, rows in _input_rows(paths, name, options):
        source = options.source or path.name
        slices = vectorized.fast_pairs(path, name, options, source) if kind in ROW_PAIRERS else None
        targets = vectorized_sft.fast_targets(path, name, options) if kind == "sft" else None
        if slices is not None:
            for part in slices:  # each slice's pairs, fast and per row, in line order
                first_frame = collector.add_frame(str(path), part.pairs)
                if part.labels_stripped:
                    markers[LABEL_STRIPPED] += part.labels_stripped
                per_row.convert(path, source, part.rest)
                collector.sort_frames(first_frame)
            continue
        file_start = len(pending)
        per_row.convert(path, source, rows if targets is None else targets.rest)
        if targets is not None:
            if targets.targets.height:
                collector.count_row(str(path), targets.targets.height)
            sft_fast.append(vectorized_sft.place(targets, path, source, pending, file_start))
    if sft_fast:  # the SFT rows of every file, fast and per row, pair together
        collector.add_group(vectorized_sft.group_pairs(pending, sft_fast, options))
    elif pending:
        for item, outcome in GROUP_PAIRERS[kind](pending, options):
            if isinstance(outcome, RowError):
                collector.reject(
                    item.file, item.line, item.source, outcome.reason, outcome.detail, item.raw
                )
            else:
                collector.add_pairs(item.file, item.line, item.source, outcome)
    return ConversionResult(
        pairs=collector.pairs_frame(),
        rejects=pl.DataFrame(collector.rejects, schema=REJECTS_SCHEMA, orient="row"),
        format=name,
        kind=kind,
        rows_in=collector.rows_in,
        rows_converted=collector.rows_converted,
        options=options,
        inputs=_input_files(paths, name),
        pairs_dropped=dict(collector.pairs_dropped.most_common()),
        rows_by_file=dict(collector.rows_by_file),
        blank_lines=collector.blank_lines,
        markers_changed=dict(markers.most_common()),
        warnings=per_row.unused.warnings(),
    )


class _RowConverter:
    """The per-row converter: each row it is given becomes pairs, a reject or pending records
    (of formats that pair a group of rows), counted in its collector."""

    def __init__(self, fmt: Format, kind: str, options: ConvertOptions) -> None:
        self.fmt, self.kind, self.options = fmt, kind, options
        self.collector = _Collector()
        self.pending: list[Pending] = []
        self.markers: Counter[str] = Counter()
        self.unused = _UnusedFields(options)

    def convert(self, path: Path, source: str, rows: Iterable[ReadItem]) -> None:
        """Convert `rows` of `path` one at a time."""
        collector, options = self.collector, self.options
        for row in rows:
            if isinstance(row, BlankLine):
                collector.blank_lines += 1
                continue
            collector.count_row(str(path))
            if isinstance(row, BadRow):
                collector.reject(str(path), row.line, source, row.reason, row.detail, row.raw)
                continue
            records = _parse(self.fmt, row, options)
            if isinstance(records, RowError):
                collector.reject(
                    str(path), row.line, source, records.reason, records.detail, row.raw_text()
                )
                continue
            self.unused.count(row.value)
            if options.role_markers == "split":
                records = [strip_markers(record, self.markers) for record in records]
            if self.kind in ROW_PAIRERS:
                collector.add_row(str(path), row, source, records, ROW_PAIRERS[self.kind], options)
            else:
                self.pending.append(Pending(str(path), row.line, row.raw_text(), source, records))


def _parse(fmt: Format, row: SourceRow, options: ConvertOptions) -> list[Any] | RowError:
    """The records of one row, or the error that rejects it."""
    try:
        return fmt.parse(row.value, options)
    except RowError as error:
        return error
    except ValidationError as error:  # a record model's own rule, e.g. an empty prompt
        detail = "; ".join(
            f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in error.errors()
        )
        return RowError("invalid_record", detail)


def _input_rows(
    paths: list[Path], name: str, options: ConvertOptions
) -> Iterator[tuple[Path, Iterator[ReadItem]]]:
    """Every input file with its rows, in order (read lazily); an llm_judge layout gives its
    judgment files with the joined judgments."""
    if name == "llm_judge":
        joined = llm_judge.joined_rows(llm_judge.check_paths(paths), options)
        for path, items in itertools.groupby(joined, key=lambda item: item[0]):
            yield path, (row for _, row in items)
        return
    for path in paths:
        yield path, read_rows(path, salvage=options.salvage)


def _input_files(paths: list[Path], name: str) -> tuple[Path, ...]:
    return llm_judge.check_paths(paths).all() if name == "llm_judge" else tuple(paths)


class _UnusedFields:
    """Counts, per field a field mapping does not name, the rows where it holds a value."""

    def __init__(self, options: ConvertOptions) -> None:
        self.mapped = mapping_fields(options.mapping) if options.mapping else None
        self.rows: Counter[str] = Counter()

    def count(self, row: dict[str, Any]) -> None:
        if self.mapped is not None:
            self.rows.update(
                key for key, value in row.items() if key not in self.mapped and _filled(value)
            )

    def warnings(self) -> tuple[str, ...]:
        if not self.rows:
            return ()
        listing = ", ".join(f"{key!r} ({count} rows)" for key, count in self.rows.most_common())
        return (
            f"the field mapping leaves fields unused that hold values: {listing}; map them "
            "(e.g. `input` for Alpaca context) or ignore this if they hold no content",
        )


def _filled(value: Any) -> bool:
    return value is not None and value != "" and value != [] and value != {}


def _preference_pairs(pair: Pair, options: ConvertOptions) -> list[Pair]:
    return [pair]


ROW_PAIRERS: dict[str, Callable[[Any, ConvertOptions], list[Pair]]] = {
    "preference": _preference_pairs,
    "ranked": ranked.ranked_pairs,
}
"""Kinds whose rows become pairs on their own: record -> candidate pairs."""

GroupPairer = Callable[
    [list[Pending], ConvertOptions], Iterator[tuple[Pending, list[Pair] | RowError]]
]
GROUP_PAIRERS: dict[str, GroupPairer] = {
    "pairwise": pairwise.judgment_pairs,
    "sft": sft.sft_pairs,
    "unpaired": sft.unpaired_pairs,
}
"""Kinds whose pairs depend on other rows: all parsed rows -> (row, pairs or the reason)."""


class _Collector:
    """Accumulates pairs (in bounded column chunks) and rejects, and keeps the counts."""

    def __init__(self) -> None:
        self.rows_in = 0
        self.rows_by_file: Counter[str] = Counter()
        self.blank_lines = 0
        self.rows_converted = 0
        self.rejects: list[tuple[str, int, str, str, str, str]] = []
        self.pairs_dropped: Counter[str] = Counter()
        self._columns: dict[str, list[Any]] = {name: [] for name in _OUTPUT_SCHEMA}
        self._frames: list[pl.DataFrame] = []

    def count_row(self, file: str, rows: int = 1) -> None:
        self.rows_in += rows
        self.rows_by_file[file] += rows

    def add_group(self, outcome: vectorized_sft.GroupOutcome) -> None:
        """Append the pairs and rejects of rows paired together (after every file's rows)."""
        self._flush()
        self._frames.append(outcome.pairs)
        self.rejects += outcome.rejects
        self.rows_converted += outcome.rows_converted

    def reject(self, file: str, line: int, source: str, reason: str, detail: str, raw: str) -> None:
        self.rejects.append((file, line, source, reason, detail, raw))

    def add_row(
        self,
        file: str,
        row: SourceRow,
        source: str,
        records: list[Any],
        pairer: Callable[[Any, ConvertOptions], list[Pair]],
        options: ConvertOptions,
    ) -> None:
        """Pair a row's records and check the pairs; keep the good ones, or reject the row with
        the first failure's reason."""
        good: list[Pair] = []
        errors: list[RowError] = []
        for record in records:
            try:
                candidates = pairer(record, options)
            except RowError as error:
                errors.append(error.with_traceback(None))  # no frame -> error -> frame cycle
                continue
            for candidate in candidates:
                try:
                    good.append(check_pair(candidate))
                except RowError as error:
                    errors.append(error.with_traceback(None))
        if not good:
            error = errors[0]
            self.reject(file, row.line, source, error.reason, error.detail, row.raw_text())
            return
        self.pairs_dropped.update(error.reason for error in errors)
        self.add_pairs(file, row.line, source, good)

    def add_pairs(self, file: str, line: int, source: str, pairs: list[Pair]) -> None:
        """Append checked pairs of one converted row (an empty list still counts the row)."""
        self.rows_converted += 1
        columns = self._columns
        for pair in pairs:
            chosen = [{"role": "assistant", "content": pair.chosen}]
            rejected = [{"role": "assistant", "content": pair.rejected}]
            columns["id"].append(pair_id(pair.prompt, chosen, rejected))
            columns["prompt"].append(pair.prompt)
            columns["chosen"].append(chosen)
            columns["rejected"].append(rejected)
            columns["source"].append(source)
            columns["score_chosen"].append(pair.score_chosen)
            columns["score_rejected"].append(pair.score_rejected)
            columns["_file"].append(file)
            columns["_line"].append(line)
        if len(columns["id"]) >= FRAME_CHUNK_PAIRS:
            self._flush()

    def add_frame(self, file: str, pairs: pl.DataFrame | None) -> int:
        """Append pairs made elsewhere from rows of `file` (a ranked row gives several); return
        where they start."""
        self._flush()
        start = len(self._frames)
        if pairs is not None and pairs.height:
            rows = pairs["_line"].n_unique()
            self._frames.append(pairs)
            self.rows_in += rows
            self.rows_by_file[file] += rows
            self.rows_converted += rows
        return start

    def sort_frames(self, start: int) -> None:
        """Order the pairs added since frame `start` (one file's) by line, stably."""
        self._flush()
        if self._frames[start:]:
            merged = pl.concat(self._frames[start:]).sort("_line", maintain_order=True)
            self._frames[start:] = [merged]

    def _flush(self) -> None:
        if not self._columns["id"]:
            return
        # Arrow builds nested list-of-struct columns from Python objects ~4x faster than Polars.
        table = pa.Table.from_pydict(self._columns, schema=_OUTPUT_ARROW_SCHEMA)
        self._frames.append(pl.DataFrame(pl.from_arrow(table)))
        self._columns = {name: [] for name in _OUTPUT_SCHEMA}

    def pairs_frame(self) -> pl.DataFrame:
        self._flush()
        if not self._frames:
            return pl.DataFrame(schema=_OUTPUT_SCHEMA)
        return pl.concat(self._frames, rechunk=False)


_OUTPUT_SCHEMA = pl.Schema({**PAIR_SCHEMA, **PROVENANCE_COLUMNS})
_OUTPUT_ARROW_SCHEMA = pl.DataFrame(schema=_OUTPUT_SCHEMA).to_arrow().schema


def _format_name(paths: list[Path], options: ConvertOptions) -> str:
    if options.mapping is not None:
        return "mapping"
    if options.format is not None:
        if options.format not in FORMATS:
            msg = f"unknown format {options.format!r}; choose one of: {', '.join(FORMATS)}"
            raise ConfigError(msg)
        if options.format == "mapping":
            msg = "format 'mapping' needs a field mapping (--mapping)"
            raise ConfigError(msg)
        return options.format
    if llm_judge.judge_files(paths) is not None:
        return "llm_judge"
    detected = {path: detect_format(path) for path in paths}
    names = set(detected.values())
    if len(names) > 1:
        listing = ", ".join(f"{path.name}: {name}" for path, name in detected.items())
        msg = f"inputs hold different formats ({listing}); convert them separately"
        raise ConfigError(msg)
    return names.pop()


def detect_format(path: Path) -> str:
    """Name of the first format that matches most of the first rows of `path`.

    Raises:
        DataError: no format matches; the message lists what each format looks for and how to
            write a field mapping.
    """
    sample: list[dict[str, Any]] = []
    for row in read_rows(path):
        if isinstance(row, SourceRow):
            sample.append(row.value)
        if len(sample) == DETECT_SAMPLE_ROWS:
            break
    if sample:
        for name, fmt in FORMATS.items():
            if 2 * sum(fmt.detect(value) for value in sample) > len(sample):
                return name
    keys = sorted({key for value in sample for key in value})[:20]
    looked_for = "\n".join(
        f"  {name:<20} {fmt.looks_for}"
        for name, fmt in FORMATS.items()
        if name not in ("mapping", "llm_judge")
    )
    found = f"fields {keys}" if keys else "no readable rows"
    msg = (
        f"{path}: no known format matches (found {found}).\n"
        f"Formats looked for:\n{looked_for}\n"
        f"Pass --format NAME if one of them fits, or map your fields, e.g.:\n{MAPPING_EXAMPLE}"
    )
    raise DataError(msg)
