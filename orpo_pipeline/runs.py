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
from orpo_pipeline.io import digest_cached, sha256_cached, write_text


def config_hash(config: BaseModel) -> str:
    """Sha256 of the config's canonical JSON."""
    canonical = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def utc_stamp() -> str:
    """Current UTC time as yyyymmdd-HHMMSS."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")


def describe_inputs(paths: list[Path], *, stat_cache: Path | None = None) -> list[dict[str, Any]]:
    """Path, size, sha256 and rows (of record files) of files and of every file in directories.

    With `stat_cache`, a file whose size, mtime and inode are unchanged is not hashed again.
    """
    files = []
    for path in paths:
        if not path.exists():
            msg = f"input not found: {path}"
            raise DataError(msg)
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    return [
        {"path": str(f), "bytes": f.stat().st_size, **digest_cached(f, stat_cache)} for f in files
    ]


DIFF_TEXT_LIMIT = 1_000_000
"""Bytes of `git diff` text kept in a manifest; the sha256 and the stat always cover all of it."""


def _git(*args: str) -> bytes:
    """Stdout of a git command as bytes (diffs need not be UTF-8); raises on any failure."""
    return subprocess.run(["git", *args], capture_output=True, check=True, timeout=30).stdout


def _diff_stat(numstat: bytes) -> dict[str, int]:
    """Files changed, insertions, deletions and binary files from `git diff --numstat -z`."""
    stat = {"files": 0, "insertions": 0, "deletions": 0, "binary_files": 0}
    for record in numstat.split(b"\0"):
        fields = record.split(b"\t")
        if len(fields) < 3:  # a rename's paths follow as their own records
            continue
        stat["files"] += 1
        if fields[0] == b"-":
            stat["binary_files"] += 1
        else:
            stat["insertions"] += int(fields[0])
            stat["deletions"] += int(fields[1])
    return stat


def _worktree_diff() -> dict[str, Any]:
    """sha256, stat and (up to DIFF_TEXT_LIMIT bytes of) text of the uncommitted change."""
    diff = _git("diff", "HEAD")
    if not diff:
        return {"diff_sha256": None, "diff_stat": None, "diff": None}
    text = diff[:DIFF_TEXT_LIMIT].decode("utf-8", errors="replace")
    return {
        "diff_sha256": hashlib.sha256(diff).hexdigest(),
        "diff_stat": _diff_stat(_git("diff", "HEAD", "--numstat", "-z")),
        "diff_bytes": len(diff),
        "diff_truncated": len(diff) > DIFF_TEXT_LIMIT,
        "diff": text,
    }


def _optional_git(*args: str) -> str | None:
    """A one-line git answer, or None where git says no (detached HEAD, no commit yet)."""
    try:
        return _git(*args).decode("utf-8", errors="replace").strip()
    except subprocess.CalledProcessError:
        return None


def git_state() -> dict[str, Any]:
    """Commit, branch, dirty flag and diff of the working tree.

    `{"sha": None}` outside a checkout, and `sha` None with a note in a repository with no commit.
    Nothing here can fail a run: any other problem becomes `{"error": ...}`.
    """
    try:
        if _optional_git("rev-parse", "--is-inside-work-tree") != "true":
            return {"sha": None}
        state = {
            "sha": _optional_git("rev-parse", "--verify", "-q", "HEAD"),
            "branch": _optional_git("symbolic-ref", "--short", "-q", "HEAD") or "HEAD",
            "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        }
        if state["sha"] is None:
            return {**state, "note": "the repository has no commit yet"}
        return {**state, **_worktree_diff()}
    except Exception as error:  # the manifest records the failure; the run goes on
        return {"error": f"{type(error).__name__}: {error}"}


def _cpu_model() -> str:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return platform.processor()
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line]
    return names[0] if names else platform.processor()


def hardware() -> dict[str, Any]:
    """CPU, memory and, when torch is already loaded, its threads and CUDA devices."""
    pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    info: dict[str, Any] = {
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gb": round(pages * os.sysconf("SC_PAGE_SIZE") / 2**30, 1) if pages else None,
    }
    torch = sys.modules.get("torch")  # never imported just for this: data runs stay light
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def distributed() -> dict[str, Any] | None:
    """Accelerate's process layout and precision, when an Accelerator runs in this process."""
    if "accelerate" not in sys.modules:
        return None
    from accelerate.state import AcceleratorState

    if not AcceleratorState._shared_state:  # no Accelerator was created
        return None
    state = AcceleratorState()
    return {
        "distributed_type": str(state.distributed_type),
        "num_processes": state.num_processes,
        "mixed_precision": state.mixed_precision,
        "device": str(state.device),
    }


def environment() -> dict[str, Any]:
    """Python, package versions, hardware and the distributed setup."""
    versions = {
        dist.metadata["Name"].lower(): dist.version for dist in importlib.metadata.distributions()
    }
    return {
        "python": sys.version.split()[0],
        "packages": dict(sorted(versions.items())),
        "platform": platform.platform(),
        "hardware": hardware(),
        "distributed": distributed(),
    }


def seeds(config: BaseModel) -> dict[str, Any]:
    """Every seed in a config, by its dotted key."""
    flat = _flatten(config.model_dump(mode="json"))
    return {key: value for key, value in flat.items() if key.split(".")[-1].endswith("seed")}


def _relative_to(path: str, run_dir: Path) -> str:
    """`path` relative to the run directory when inside it, so identical runs compare equal."""
    try:
        return str(Path(path).resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return path


def write_manifest(
    run_dir: Path,
    *,
    kind: str,
    config: BaseModel,
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write `manifest.json` into `run_dir` and return it; output paths are relative to it."""
    manifest = {
        "kind": kind,
        "run_id": run_dir.name,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": sys.argv,
        "config": config.model_dump(mode="json"),
        "config_sha256": config_hash(config),
        "seeds": seeds(config),
        "inputs": inputs,
        "outputs": [{**entry, "path": _relative_to(entry["path"], run_dir)} for entry in outputs],
        "git": git_state(),
        "environment": environment(),
        **(extra or {}),
    }
    write_text(json.dumps(manifest, indent=2) + "\n", run_dir / "manifest.json")
    return manifest


def find_runs(root: Path) -> list[Path]:
    """Every directory under `root` holding a manifest, oldest first."""
    manifests = sorted(root.rglob("manifest.json"), key=lambda p: p.stat().st_mtime)
    return [m.parent for m in manifests]


def resolve_run(name: str, root: Path) -> Path:
    """A run directory from its path or its id (directory name) under `root`."""
    if (Path(name) / "manifest.json").exists():
        return Path(name)
    matches = [run for run in find_runs(root) if run.name == name]
    if len(matches) != 1:
        found = "no run" if not matches else f"{len(matches)} runs"
        msg = f"{found} named {name!r} under {root}; pass the run directory instead"
        raise DataError(msg)
    return matches[0]


def load_manifest(run_dir: Path) -> dict[str, Any]:
    """The manifest of a run directory."""
    try:
        return json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        msg = f"cannot read {run_dir / 'manifest.json'}: {error}"
        raise DataError(msg) from error


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        items: dict[str, Any] = {}
        for key, inner in value.items():
            items.update(_flatten(inner, f"{prefix}{key}."))
        return items
    return {prefix.rstrip("."): value}


def _changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[Any]]:
    keys = sorted(set(before) | set(after))
    return {k: [before.get(k), after.get(k)] for k in keys if before.get(k) != after.get(k)}


def without_diff(git: dict[str, Any]) -> dict[str, Any]:
    """Git state without the diff text (its sha256 stands for it)."""
    return {k: v for k, v in git.items() if k != "diff"}


def diff_manifests(a: dict[str, Any], b: dict[str, Any]) -> dict[str, dict[str, list[Any]]]:
    """What changed from run a to run b: inputs, outputs, config keys, code, packages and the
    evaluation's headline numbers."""

    def by_path(files: list[dict[str, Any]]) -> dict[str, Any]:
        return {f["path"]: f["sha256"] for f in files}

    def inputs(manifest: dict[str, Any]) -> dict[str, Any]:
        template = {"chat template": manifest.get("chat_template_sha256")}  # training runs
        return by_path(manifest["inputs"]) | (template if template["chat template"] else {})

    return {
        "inputs": _changes(inputs(a), inputs(b)),
        "outputs": _changes(by_path(a["outputs"]), by_path(b["outputs"])),
        "config": _changes(_flatten(a["config"]), _flatten(b["config"])),
        "code": _changes(without_diff(a["git"]), without_diff(b["git"])),
        "packages": _changes(a["environment"]["packages"], b["environment"]["packages"]),
        "evaluation": _changes(
            a.get("evaluation", {}).get("summary", {}), b.get("evaluation", {}).get("summary", {})
        ),
    }


def verify_run(manifest: dict[str, Any]) -> list[str]:
    """Reasons the run cannot be reproduced as things stand now (empty when it can)."""
    problems = []
    for entry in manifest["inputs"]:
        path = Path(entry["path"])
        if not path.exists():
            problems.append(f"input missing: {path}")
        elif sha256_cached(path, None) != entry["sha256"]:
            problems.append(f"input changed: {path}")
    then, now = manifest["git"], git_state()
    if then.get("dirty"):
        problems.append("the run was made from uncommitted code")
    if then.get("sha") != now.get("sha") or now.get("dirty"):
        problems.append(
            f"code differs: run at {then.get('sha')}, now at {now.get('sha')}"
            f"{' (dirty)' if now.get('dirty') else ''}"
        )
    for package, version in _changes(
        manifest["environment"]["packages"], environment()["packages"]
    ).items():
        problems.append(f"package {package}: {version[0]} then, {version[1]} now")
    return problems
