"""Atomic file writes, Parquet/JSONL by file suffix (the one place that chooses), and hashing."""

import contextlib
import gzip
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

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


def write_parts(parts: Iterable[pl.LazyFrame], path: Path) -> int:
    """Write lazy frames one after another into one Parquet or JSONL file (by suffix),
    atomically, in row order; return the rows written. Each part is collected on its own, so
    memory holds about two parts whatever the total (Polars' streaming sinks read every part at
    once when a filter keeps few rows: 3.3 GB for 15 slices of 200 k pairs, and its JSON sink
    buffered ~3 GB). Parquet is zstd at level 1 in row groups of exactly `ROW_GROUP` rows (the
    last excepted), compressed by a second thread while the next part is read."""
    rows = 0
    with atomic_path(path) as temp, polars_io_errors(path):
        if path.suffix == ".parquet":
            with _ParquetRowGroups(temp) as writer:
                for part in parts:
                    rows += writer.append(part.collect().to_arrow())
        else:
            with temp.open("wb") as handle:
                for part in parts:
                    frame = part.collect()
                    frame.write_ndjson(handle)
                    rows += frame.height
    return rows


ROW_GROUP = 50_000


class _ParquetRowGroups:
    """Appends Arrow tables to one Parquet file in whole row groups of `ROW_GROUP` rows; the
    rows short of a group wait for the next table, so the file's layout does not depend on how
    its rows were split. Each group is written by a background thread (pyarrow compresses
    without the GIL) while the caller reads the next table. A file given only empty tables has
    their schema and no row group."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: pq.ParquetWriter | None = None
        self._pending: list[pa.Table] = []
        self._background = ThreadPoolExecutor(1)
        self._writing: Future | None = None

    def __enter__(self) -> "_ParquetRowGroups":
        return self

    def append(self, table: pa.Table) -> int:
        """Queue `table`'s rows; write every whole row group queued. Returns its rows."""
        if self._writer is None:
            self._writer = pq.ParquetWriter(
                self.path, table.schema, compression="zstd", compression_level=1
            )
        self._pending.append(table)
        queued = pa.concat_tables(self._pending)
        whole = queued.num_rows - queued.num_rows % ROW_GROUP
        self._pending = [queued.slice(whole)]
        if whole:
            self._write(queued.slice(0, whole))
        return table.num_rows

    def _write(self, table: pa.Table) -> None:
        if self._writing is not None:
            self._writing.result()  # one group in flight: order kept, memory bounded
        self._writing = self._background.submit(
            self._writer.write_table, table, row_group_size=ROW_GROUP
        )

    def __exit__(self, *failed: object) -> None:
        try:
            if failed[0] is None and self._pending:
                rest = pa.concat_tables(self._pending)
                if rest.num_rows:
                    self._write(rest)
            if failed[0] is None and self._writing is not None:
                self._writing.result()  # a failed write raises here
        finally:
            self._background.shutdown(wait=True)
            if self._writer is not None:
                self._writer.close()


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
