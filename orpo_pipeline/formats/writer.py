"""`write_pairs`: the canonical pair file plus its rejects, provenance and report, atomically."""

import json
from pathlib import Path

from orpo_pipeline.errors import ConfigError, DataError
from orpo_pipeline.formats.convert import ConversionResult
from orpo_pipeline.formats.readers import position_unit
from orpo_pipeline.io import FRAME_SUFFIXES, sha256_file, write_frame, write_text
from orpo_pipeline.records import PAIR_SCHEMA

OUTPUT_SUFFIXES = FRAME_SUFFIXES
PARQUET_METADATA_KEY = "orpo_pipeline.conversion"


def sidecar_paths(out: Path) -> dict[str, Path]:
    """Where the files next to `out` go: 'pairs.parquet' -> 'pairs.rejects.parquet', ...."""
    stem, suffix = out.name.removesuffix(out.suffix), out.suffix
    return {
        "pairs": out,
        "rejects": out.with_name(f"{stem}.rejects{suffix}"),
        "provenance": out.with_name(f"{stem}.provenance{suffix}"),
        "report": out.with_name(f"{stem}.report.json"),
    }


def write_pairs(
    result: ConversionResult,
    out: Path,
    *,
    rejects_path: Path | None = None,
    allow_empty: bool = False,
) -> dict[str, Path]:
    """Write the pairs to `out` (.parquet or .jsonl) and three files beside it.

    - `out`: PAIR_SCHEMA columns only; Parquet also carries the conversion metadata under the
      key `orpo_pipeline.conversion`.
    - `<stem>.rejects<ext>` (or `rejects_path`): file, line, reason, detail, raw.
    - `<stem>.provenance<ext>`: id, file, line of every pair, in output order.
    - `<stem>.report.json`: format, options, input sha256s, row counts, rejects by reason.

    Each file is written to a temporary name and renamed into place.

    When no pair was converted, only the rejects and the report are written and a DataError
    says why, unless `allow_empty` (an empty pair file then breaks `datasets` loaders).

    Returns:
        The paths written, by role ('pairs', 'rejects', 'provenance', 'report').

    Raises:
        ConfigError: `out` has an unsupported extension.
        DataError: no pair was converted and `allow_empty` is False.
    """
    if out.suffix not in OUTPUT_SUFFIXES:
        msg = f"output {out} should end with .parquet or .jsonl"
        raise ConfigError(msg)
    paths = sidecar_paths(out)
    if rejects_path is not None:
        paths["rejects"] = rejects_path
    report = conversion_report(result, paths)
    if result.pairs.height == 0 and not allow_empty:
        write_frame(result.rejects, paths["rejects"])
        report["files"] = {role: str(paths[role]) for role in ("rejects", "report")}
        write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", paths["report"])
        msg = (
            f"no pairs converted from {', '.join(map(str, result.inputs))}, so {out} was not "
            f"written:\n{format_summary(result)}\n"
            f"rejected rows: {paths['rejects']}; report: {paths['report']}\n"
            "(--allow-empty writes an empty pair file anyway)"
        )
        raise DataError(msg)
    pairs = result.pairs.select(PAIR_SCHEMA.names())
    provenance = result.pairs.select("id", file="_file", line="_line")
    write_frame(pairs, out, metadata={PARQUET_METADATA_KEY: json.dumps(report["conversion"])})
    write_frame(result.rejects, paths["rejects"])
    write_frame(provenance, paths["provenance"])
    write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", paths["report"])
    return paths


def conversion_report(result: ConversionResult, paths: dict[str, Path]) -> dict:
    """The JSON report: what was converted, how, and what was rejected."""
    return {
        "conversion": {
            "format": result.format,
            "kind": result.kind,
            "options": result.options.model_dump(mode="json", exclude_none=True),
            "inputs": [
                {
                    "path": str(path),
                    "sha256": None if path.is_dir() else sha256_file(path),
                    "line_means": LINE_MEANINGS[position_unit(path)],
                }
                for path in result.inputs
            ],
        },
        "counts": {
            "rows_in": result.rows_in,
            "rows_converted": result.rows_converted,
            "rows_rejected": result.rows_rejected,
            "pairs_out": result.pairs.height,
            "rows_without_own_pair": result.rows_converted - _rows_with_pairs(result),
            "blank_lines": result.blank_lines,
        },
        "by_file": _by_file(result),
        "rejects_by_reason": result.reject_counts(),
        "pairs_dropped_by_reason": result.pairs_dropped,
        "role_markers_changed": result.markers_changed,
        "warnings": list(result.warnings),
        "files": {role: str(path) for role, path in paths.items()},
    }


LINE_MEANINGS = {
    "line": "the text line where the record starts (1-based)",
    "record": "the record number in the file (1-based; the file has no text lines)",
}


def _rows_with_pairs(result: ConversionResult) -> int:
    """Converted rows that a pair is attributed to (others agreed with an earlier row)."""
    return result.pairs.select("_file", "_line").unique().height


def _by_file(result: ConversionResult) -> dict[str, dict[str, int]]:
    """Rows in, rejected and pairs out per input file read for rows."""
    rejected = dict(result.rejects.group_by("file").len().iter_rows())
    pairs = dict(result.pairs.group_by("_file").len().iter_rows())
    return {
        file: {
            "rows_in": rows,
            "rows_rejected": rejected.get(file, 0),
            "pairs_out": pairs.get(file, 0),
        }
        for file, rows in result.rows_by_file.items()
    }


def format_summary(result: ConversionResult) -> str:
    """A plain-text table of the counts and the rejects by reason, for the CLI to print."""
    merged = result.rows_converted - _rows_with_pairs(result)
    lines = [
        f"format          {result.format} ({result.kind})",
        f"rows in         {result.rows_in}",
        f"rows converted  {result.rows_converted}"
        + (f" ({merged} agreeing with a row that gave the pair)" if merged else ""),
        f"rows rejected   {result.rows_rejected}",
        f"pairs out       {result.pairs.height}",
    ]
    if result.blank_lines:
        lines.append(f"blank lines     {result.blank_lines} (not rows)")
    counts = result.reject_counts()
    if counts:
        width = max(len("rejected because"), *(len(reason) for reason in counts))
        lines += ["", f"{'rejected because':<{width}}  rows"]
        lines += [f"{reason:<{width}}  {count}" for reason, count in counts.items()]
    if result.pairs_dropped:
        width = max(len("pairs left out because"), *(len(r) for r in result.pairs_dropped))
        lines += ["", f"{'pairs left out because':<{width}}  pairs"]
        lines += [f"{reason:<{width}}  {count}" for reason, count in result.pairs_dropped.items()]
    if result.markers_changed:
        changed = ", ".join(f"{kind} {count}" for kind, count in result.markers_changed.items())
        lines += ["", f"role markers    {changed} (--role-markers keep leaves them)"]
    lines += [f"warning: {warning}" for warning in result.warnings]
    return "\n".join(lines)
