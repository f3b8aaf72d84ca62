"""Atomic file writes, Parquet/JSONL by file suffix (the one place that chooses), and hashing."""

import contextlib
import gzip
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from orpo_pipeline.errors import OrpoPipelineError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it onto `final` only if the block succeeds."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    except OSError as error:
        msg = f"cannot write to {final.parent}: {error.strerror or error}"
        raise OrpoPipelineError(msg) from error
    os.close(fd)
    temp = Path(name)
    try:
        yield temp
        os.chmod(temp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get normal modes
        os.replace(temp, final)
    except OSError as error:  # polars' own OSErrors carry no strerror
        msg = f"cannot write {final}: {error.strerror or error}"
        raise OrpoPipelineError(msg) from error
    finally:
        temp.unlink(missing_ok=True)


FRAME_SUFFIXES = (".parquet", ".jsonl")
"""File suffixes of frames we read and write: Parquet, or JSON Lines."""


def scan_frame(path: Path) -> pl.LazyFrame:
    """A Parquet or JSONL file (by suffix; anything but `.parquet` is read as JSONL), lazily."""
    return pl.scan_parquet(path) if path.suffix == ".parquet" else pl.scan_ndjson(path)


def write_frame(frame: pl.DataFrame, path: Path, *, metadata: dict[str, str] | None = None) -> None:
    """Write Parquet (with key-value `metadata`) or JSONL, by suffix, atomically."""
    with atomic_path(path) as temp, polars_io_errors(path):
        if path.suffix == ".parquet":
            frame.write_parquet(temp, metadata=metadata)
        else:
            frame.write_ndjson(temp)


def sink_frames(parts: list[pl.LazyFrame], path: Path) -> None:
    """Write lazy frames one after another into one Parquet or JSONL file (by suffix),
    atomically, in row order, with bounded memory. Parquet is streamed by Polars, zstd at level 1
    (the size pyarrow's default gives) in row groups of `SINK_ROW_GROUP` rows compressed on every
    core (~1.5 GB at most for 10 M rows); JSON Lines is written part by part, one in memory at a
    time (Polars' streaming JSON sink held ~3 GB for 6 GB of rows, and was no faster)."""
    with atomic_path(path) as temp, polars_io_errors(path):
        if path.suffix == ".parquet":
            pl.concat(parts).sink_parquet(
                temp, compression="zstd", compression_level=1, row_group_size=SINK_ROW_GROUP
            )
        else:
            with temp.open("wb") as handle:
                for part in parts:
                    part.collect().write_ndjson(handle)


SINK_ROW_GROUP = 50_000


@contextlib.contextmanager
def polars_io_errors(path: Path) -> Iterator[None]:
    """Raise polars' I/O failures (disk full, file too large) as an error naming `path`.

    Polars reports a failed Parquet write as a `ComputeError` ("underlying IO error: ..."), not
    an `OSError`.
    """
    try:
        yield
    except pl.exceptions.ComputeError as error:
        msg = f"cannot write {path}: {error}"
        raise OrpoPipelineError(msg) from error


def write_text(text: str, path: Path) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def count_rows(path: Path) -> int | None:
    """Records in a Parquet or JSON Lines file (`.jsonl`, `.jsonl.gz`); None for other files."""
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            return pl.scan_parquet(path).select(pl.len()).collect().item()
        if name.endswith((".jsonl", ".jsonl.gz")):
            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rb") as f:
                return sum(1 for line in f if line.strip())
    except (OSError, EOFError, pl.exceptions.PolarsError):
        return None  # unreadable as records: the hash still identifies it
    return None


def digest_cached(path: Path, cache_file: Path | None) -> dict[str, str | int | None]:
    """Sha256 and row count of a file, reused while its size, mtime and inode are unchanged."""
    if cache_file is None:
        return {"sha256": sha256_file(path), "rows": count_rows(path)}
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}"
    try:
        known = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if not isinstance(known.get(key), dict):
        known[key] = {"sha256": sha256_file(path), "rows": count_rows(path)}
        # A read-only cache only costs a rehash next time.
        with contextlib.suppress(OrpoPipelineError):
            write_text(json.dumps(known, indent=0, sort_keys=True), cache_file)
    return known[key]


def sha256_cached(path: Path, cache_file: Path | None) -> str:
    """Sha256 of a file, reusing an earlier result while size, mtime and inode are unchanged."""
    if cache_file is None:
        return sha256_file(path)
    return digest_cached(path, cache_file)["sha256"]
