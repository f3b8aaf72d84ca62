"""The cache directory and the content-addressed stage cache."""

import hashlib
import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import polars as pl
from pydantic import BaseModel

from orpo_pipeline.errors import OrpoPipelineError

COMPLETE = "COMPLETE"


def cache_root() -> Path:
    """`$ORPO_PIPELINE_CACHE`, else `~/.cache/orpo-pipeline`."""
    configured = os.environ.get("ORPO_PIPELINE_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "orpo-pipeline"


def code_version(*parts: Callable | ModuleType) -> str:
    """Sha256 of the source files defining the given functions or modules (a package: all files)."""
    files: set[Path] = set()
    for part in parts:
        path = Path(inspect.getfile(part))
        files.update(path.parent.rglob("*.py") if path.name == "__init__.py" else [path])
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def stage_key(*, parent: str, config: BaseModel, code: str) -> str:
    """Key of a stage's output: its input's key, its config and its code."""
    payload = {"parent": parent, "config": config.model_dump(mode="json"), "code": code}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class StageCache:
    """Kept and rejected frames of finished stages, stored by key under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def load(self, key: str) -> tuple[pl.DataFrame, pl.DataFrame, int] | None:
        """The cached (kept, rejected, rows_in), or None when the entry is missing or unreadable.

        An entry that cannot be read (cut short by a crash or a partial copy) is removed so the
        stage is recomputed and stored again.
        """
        entry = self.root / key
        if not (entry / COMPLETE).exists():
            return None
        try:
            rows_in = int((entry / COMPLETE).read_text())
            kept = pl.read_parquet(entry / "kept.parquet")
            rejected = pl.read_parquet(entry / "rejected.parquet")
        except (OSError, ValueError, pl.exceptions.PolarsError):
            shutil.rmtree(entry, ignore_errors=True)
            return None
        return kept, rejected, rows_in

    def store(self, key: str, kept: pl.DataFrame, rejected: pl.DataFrame, *, rows_in: int) -> None:
        """Write both frames into a temp dir, mark it complete, then rename it into place."""
        final = self.root / key
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            temp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}.", dir=self.root))
        except OSError as error:
            msg = f"cannot write the stage cache in {self.root}: {error.strerror}"
            raise OrpoPipelineError(msg) from error
        try:
            kept.write_parquet(temp / "kept.parquet")
            rejected.write_parquet(temp / "rejected.parquet")
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


def _fsync(path: Path) -> None:
    """Flush a file to disk so a rename never publishes a file cut short by a power loss."""
    with path.open("rb") as handle:
        os.fsync(handle.fileno())
