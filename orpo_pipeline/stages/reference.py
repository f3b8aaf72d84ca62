"""Reference sets that stages compare against: shipped eval prompt sets and users' own files."""

from importlib.resources import files
from pathlib import Path
from typing import Literal

import polars as pl

from orpo_pipeline.errors import ConfigError, DataError
from orpo_pipeline.exprs import contents
from orpo_pipeline.io import FRAME_SUFFIXES, scan_frame

EvalSet = Literal["mt_bench", "alpaca_eval", "arena_hard", "ifeval"]
EVAL_SETS: tuple[EvalSet, ...] = ("mt_bench", "alpaca_eval", "arena_hard", "ifeval")
"""Evaluation prompt sets shipped in `resources/eval_sets` (see the `SOURCE.md` there)."""

ANSWERS = ("chosen", "rejected")


def eval_set_path(name: EvalSet) -> Path:
    """The shipped JSONL file of an eval prompt set: one `{"prompt": str}` per line."""
    return Path(str(files("orpo_pipeline") / "resources" / "eval_sets" / f"{name}.jsonl"))


def scan_reference(path: Path, *, with_answers: bool = False) -> pl.LazyFrame:
    """A reference file as text columns: `prompt`, plus `chosen` and `rejected` if asked.

    Accepts canonical pair files (`.parquet`, `.jsonl`; message lists become their contents joined
    by newlines) and prompt lists: `.txt` with one prompt a line, or `.parquet`/`.jsonl` with a
    string `prompt` column.

    Raises:
        ConfigError: The file is missing or its extension is not one of the above.
        DataError: It has no `prompt` column, or answers were asked of a prompt list.
    """
    if path.suffix not in (*FRAME_SUFFIXES, ".txt"):
        msg = f"{path}: expected a .parquet, .jsonl or .txt reference file"
        raise ConfigError(msg)
    if not path.is_file():
        msg = f"reference file not found: {path}"
        raise ConfigError(msg)
    lf = pl.scan_lines(path, name="prompt") if path.suffix == ".txt" else scan_frame(path)
    schema = lf.collect_schema()
    columns = ["prompt", *(ANSWERS if with_answers else ())]
    missing = [c for c in columns if c not in schema]
    if missing:
        kind = "pair file" if with_answers else "pair file or prompt list"
        msg = f"{path}: no column(s) {missing}; expected a canonical {kind}"
        raise DataError(msg)
    return lf.select(
        contents(c) if isinstance(schema[c], pl.List) else pl.col(c).cast(pl.String)
        for c in columns
    )
