"""Atomic training checkpoints around `Accelerator.save_state` (runs-and-ecosystem.md §5.3).

A checkpoint is written to `.tmp-step-NNNNNN/`, its files are fsynced, a `COMPLETE` marker is
written last, the directory is renamed to `step-NNNNNN/`, and only then are old ones pruned.
Readers accept only directories with the marker, so a kill at any moment leaves the previous
checkpoint usable.
"""

import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from accelerate import Accelerator

MARKER = "COMPLETE"
STATE = "train_state.json"
_NAME = re.compile(r"^step-(\d{6,})$")


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def complete_checkpoints(root: Path) -> list[Path]:
    """Checkpoint directories holding the completion marker, oldest step first."""
    if not root.is_dir():
        return []
    found = [
        (int(match.group(1)), path)
        for path in root.iterdir()
        if (match := _NAME.match(path.name)) and (path / MARKER).is_file()
    ]
    return [path for _, path in sorted(found)]


def save_checkpoint(
    accelerator: "Accelerator",
    root: Path,
    step: int,
    state: dict[str, Any],
    *,
    copies: tuple[Path, ...] = (),
    keep: int | None = None,
) -> Path:
    """Save model, optimizer, registered objects and RNG states atomically as `step-NNNNNN/`.

    Args:
        accelerator: Holds the prepared objects; every process must call this.
        root: The run's `checkpoints/` directory.
        step: Optimizer steps done.
        state: JSON-serialisable loop state, stored as `train_state.json`.
        copies: Files copied into the checkpoint (e.g. `metrics.jsonl` as of this step).
        keep: Prune to this many complete checkpoints after the new one is in place.
    """
    final = root / f"step-{step:06d}"
    temp = root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(temp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(temp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (temp / STATE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        for path in copies:
            if path.exists():
                shutil.copy2(path, temp / path.name)
        _fsync_tree(temp)
        (temp / MARKER).write_text(f"{final.name}\n", encoding="utf-8")
        _fsync_tree(temp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(temp, final)
        _fsync_dir(root)
        if keep is not None:
            for old in complete_checkpoints(root)[:-keep]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: "Accelerator", root: Path) -> tuple[Path, dict[str, Any]] | None:
    """Restore the newest complete checkpoint under `root`; None when there is none.

    Leftover `.tmp-*` directories from a killed save are removed first.
    """
    if accelerator.is_main_process and root.is_dir():
        for leftover in root.glob(".tmp-step-*"):
            shutil.rmtree(leftover)
    accelerator.wait_for_everyone()
    found = complete_checkpoints(root)
    if not found:
        return None
    latest = found[-1]
    accelerator.load_state(latest)
    return latest, json.loads((latest / STATE).read_text(encoding="utf-8"))
