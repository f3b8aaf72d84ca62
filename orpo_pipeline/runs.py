"""Run manifests: every input by content hash, the resolved config, code and environment."""

import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from orpo_pipeline.errors import DataError
from orpo_pipeline.io import sha256_cached, write_text

PACKAGES = (
    "orpo-pipeline",
    "polars",
    "pydantic",
    "datasets",
    "torch",
    "transformers",
    "accelerate",
    "peft",
)


def config_hash(config: BaseModel) -> str:
    """Sha256 of the config's canonical JSON."""
    canonical = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def utc_stamp() -> str:
    """Current UTC time as yyyymmdd-HHMMSS."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")


def describe_inputs(paths: list[Path], *, stat_cache: Path | None = None) -> list[dict[str, Any]]:
    """Path, size and sha256 of files, and of every file inside directories, in a stable order.

    With `stat_cache`, a file whose size, mtime and inode are unchanged is not hashed again.
    """
    files = []
    for path in paths:
        if not path.exists():
            msg = f"input not found: {path}"
            raise DataError(msg)
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    return [
        {"path": str(f), "bytes": f.stat().st_size, "sha256": sha256_cached(f, stat_cache)}
        for f in files
    ]


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def git_state() -> dict[str, Any]:
    """Commit, branch, dirty flag and diff of the working tree (None outside a checkout)."""
    sha = _git("rev-parse", "HEAD")
    if sha is None:
        return {"sha": None}
    diff = _git("diff", "HEAD") or ""
    return {
        "sha": sha,
        "branch": _git("rev-parse", "--abbrev-ref", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None,
    }


def environment() -> dict[str, Any]:
    """Python, package versions and hardware."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": sys.version.split()[0],
        "packages": versions,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }


def write_manifest(
    run_dir: Path,
    *,
    kind: str,
    config: BaseModel,
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write `manifest.json` into `run_dir` and return it."""
    manifest = {
        "kind": kind,
        "run_id": run_dir.name,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": sys.argv,
        "config": config.model_dump(mode="json"),
        "config_sha256": config_hash(config),
        "inputs": inputs,
        "outputs": outputs,
        "git": git_state(),
        "environment": environment(),
        **(extra or {}),
    }
    write_text(json.dumps(manifest, indent=2) + "\n", run_dir / "manifest.json")
    return manifest
