"""The cache directory and the content-addressed stage cache."""

import hashlib
import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import polars as pl
from pydantic import BaseModel

from orpo_pipeline.errors import OrpoPipelineError
from orpo_pipeline.io import ParquetAppender

COMPLETE = "COMPLETE"
PACKAGE = "orpo_pipeline"


def cache_root() -> Path:
    """`$ORPO_PIPELINE_CACHE`, else `~/.cache/orpo-pipeline`."""
    configured = os.environ.get("ORPO_PIPELINE_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "orpo-pipeline"


def _package_modules(part: Callable | ModuleType, found: dict[str, ModuleType]) -> None:
    """Add the module defining `part` and, transitively, the package modules it imports."""
    module = part if isinstance(part, ModuleType) else inspect.getmodule(part)
    if module is None or not module.__name__.startswith(PACKAGE) or module.__name__ in found:
        return
    found[module.__name__] = module
    for value in vars(module).values():
        if isinstance(value, ModuleType) or inspect.isfunction(value) or inspect.isclass(value):
            _package_modules(value, found)


def code_version(*parts: Callable | ModuleType) -> str:
    """Sha256 of the source files defining the given functions or modules and every package
    module they import, transitively (a stage's key changes when a helper it uses changes)."""
    found: dict[str, ModuleType] = {}
    for part in parts:
        _package_modules(part, found)
    files: set[Path] = set()
    for module in found.values():
        path = Path(inspect.getfile(module))
        files.update(path.parent.rglob("*.py") if path.name == "__init__.py" else [path])
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def stage_key(*, parent: str, config: BaseModel, code: str, reads: Sequence[str] = ()) -> str:
    """Key of a stage's output: its input's key, its config, its code and the sha256 of every
    other file it reads."""
    payload = {
        "parent": parent,
        "config": config.model_dump(mode="json"),
        "code": code,
        "reads": list(reads),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class StageOutput(NamedTuple):
    """A finished stage in the cache: kept and rejected rows as Parquet files, in `_row` order."""

    kept: Path
    rejected: Path
    rows_in: int


Shard = tuple[pl.DataFrame, pl.DataFrame, int]
"""Kept rows, rejected rows and rows in, of one shard."""


class StageCache:
    """Kept and rejected rows of finished stages, stored by key under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def load(self, key: str) -> StageOutput | None:
        """The cached output, or None when the entry is missing or unreadable.

        An entry that cannot be read (cut short by a crash or a partial copy) is removed so the
        stage is recomputed and stored again.
        """
        entry = self.root / key
        if not (entry / COMPLETE).exists():
            return None
        output = StageOutput(entry / "kept.parquet", entry / "rejected.parquet", 0)
        try:
            rows_in = int((entry / COMPLETE).read_text())
            for path in (output.kept, output.rejected):
                pl.read_parquet_schema(path)  # a torn file has no footer
        except (OSError, ValueError, pl.exceptions.PolarsError):
            shutil.rmtree(entry, ignore_errors=True)
            return None
        return output._replace(rows_in=rows_in)

    def store(self, key: str, shards: Iterable[Shard]) -> StageOutput:
        """Write the shards one by one into a temp dir, mark it complete, rename it into place.

        Only one shard is in memory at a time; each becomes a row group of the two files.
        """
        final = self.root / key
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            temp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}.", dir=self.root))
        except OSError as error:
            msg = f"cannot write the stage cache in {self.root}: {error.strerror}"
            raise OrpoPipelineError(msg) from error
        try:
            rows_in = _write_shards(shards, temp / "kept.parquet", temp / "rejected.parquet")
            (temp / COMPLETE).write_text(str(rows_in))
            for name in ("kept.parquet", "rejected.parquet", COMPLETE):
                _fsync(temp / name)
            if final.exists() and not (final / COMPLETE).exists():  # left by a torn write
                shutil.rmtree(final, ignore_errors=True)
            temp.rename(final)
        except (OSError, pl.exceptions.PolarsError) as error:  # polars raises its own on I/O
            shutil.rmtree(temp, ignore_errors=True)
            if not (final / COMPLETE).exists():  # else a concurrent run stored it first
                reason = error.strerror if isinstance(error, OSError) else None
                msg = f"cannot write the stage cache entry {final}: {reason or error}"
                raise OrpoPipelineError(msg) from error
        return StageOutput(final / "kept.parquet", final / "rejected.parquet", rows_in)


def _write_shards(shards: Iterable[Shard], kept_path: Path, rejected_path: Path) -> int:
    """Append each shard's frames to two Parquet files; return the sum of rows in."""
    kept_file, rejected_file = ParquetAppender(kept_path), ParquetAppender(rejected_path)
    rows_in = 0
    try:
        for kept, rejected, shard_rows_in in shards:
            kept_file.write(kept)
            rejected_file.write(rejected)
            rows_in += shard_rows_in
    finally:
        kept_file.close()
        rejected_file.close()
    return rows_in


def _fsync(path: Path) -> None:
    """Flush a file to disk so a rename never publishes a file cut short by a power loss."""
    with path.open("rb") as handle:
        os.fsync(handle.fileno())
