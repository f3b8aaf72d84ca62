"""Kill -9 during `orpo-pipeline data`: no partial file at a final path, and the rerun matches.

A real subprocess runs a recipe on ~15k generated rows (a couple of seconds) and is killed with
SIGKILL at seeded random moments, and at the moment a temporary file or cache directory shows up
(the write windows). After every kill each file at a final path (outputs, rejects, report,
manifest, stage-cache entries) must be complete: byte-identical to the uninterrupted run's, or for
the report and manifest, parseable JSON. Then a rerun on the same output directory and cache
must give byte-identical outputs.
"""

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

ROWS = 15_000
SEED = 20261124
RANDOM_KILLS = 5
VARYING = {"report.json", "manifest.json"}
"""Files holding timings, dates or cache flags: compared after dropping those."""

RECIPE = {
    "name": "kill",
    "source": {"inputs": ["hh.jsonl.gz"], "format": "hh_rlhf"},
    "stages": [
        {"stage": "validate"},
        {"stage": "dedupe"},
        {"stage": "filter"},
        {"stage": "split", "eval_size": 100},
    ],
    "output_dir": "out",
}


def make_workdir(path: Path) -> Path:
    """A directory with the input and the recipe, all paths relative, and its own cache."""
    path.mkdir()
    lines = []
    for i in range(ROWS):
        prompt = f"\n\nHuman: question {i % (ROWS - 500)} " + "lorem ipsum " * 10
        row = {
            "chosen": f"{prompt}\n\nAssistant: good answer {i}",
            "rejected": f"{prompt}\n\nAssistant: bad answer {i % 7}",
        }
        lines.append(json.dumps(row) + "\n")
    data = "".join([*lines, "{not json\n"]).encode()
    (path / "hh.jsonl.gz").write_bytes(gzip.compress(data, mtime=0))  # same bytes, same keys
    (path / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    return path


def start(workdir: Path) -> subprocess.Popen:
    env = {**os.environ, "ORPO_PIPELINE_CACHE": str(workdir / "cache")}
    return subprocess.Popen(
        [sys.executable, "-m", "orpo_pipeline", "data", "recipe.yaml"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(process: subprocess.Popen) -> None:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err.decode()
    assert b"Traceback" not in out + err


def kill(process: subprocess.Popen) -> bool:
    """SIGKILL the run; True if it was still running."""
    running = process.poll() is None
    if running:
        os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    return running


def temporaries(workdir: Path) -> set[Path]:
    """Temporary files and cache directories (their names start with a dot)."""
    found = set()
    for root in (workdir / "out", workdir / "out" / "rejects", workdir / "cache" / "stages"):
        if root.is_dir():
            found.update(p for p in root.iterdir() if p.name.startswith("."))
    return found


def kill_when_a_temporary_appears(workdir: Path, root: str) -> bool:
    """Start a run and SIGKILL it as soon as a new temporary shows up in `root`; True if the
    kill left that temporary behind (it landed inside a write)."""
    before = temporaries(workdir)
    process = start(workdir)
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:  # busy: writes take ms
        if any(p.parent == workdir / root for p in temporaries(workdir) - before):
            break
    kill(process)
    return any(p.parent == workdir / root for p in temporaries(workdir) - before)


def final_files(workdir: Path) -> dict[str, Path]:
    """Files at final paths (no dot-named component), relative to the work directory."""
    roots = [workdir / "out", workdir / "cache" / "stages"]
    return {
        str(path.relative_to(workdir)): path
        for root in roots
        if root.exists()
        for path in root.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
    }


def comparable(name: str, path: Path) -> object:
    """The file's bytes; for the report and manifest, their JSON without timings and dates."""
    if Path(name).name not in VARYING:
        return path.read_bytes()
    document = json.loads(path.read_text())
    if "stages" in document and "created" not in document:  # report.json
        for stage in document["stages"]:
            del stage["seconds"], stage["cached"]
        return document
    return {key: document[key] for key in ("kind", "config_sha256", "inputs", "outputs")}


def assert_complete(workdir: Path, reference: dict[str, object]) -> None:
    """Every file at a final path is whole: identical to the reference run's file."""
    for name, path in final_files(workdir).items():
        assert name in reference, f"unexpected final file {name}"
        if name.endswith(".parquet"):
            pl.read_parquet(path)
        assert comparable(name, path) == reference[name], f"{name} differs from the reference"
    for entry in (workdir / "cache" / "stages").glob("[!.]*"):
        assert (entry / "COMPLETE").exists(), f"cache entry {entry.name} has no COMPLETE marker"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[dict[str, object], float]:
    """Final files of an uninterrupted run, and how long it took."""
    workdir = make_workdir(tmp_path_factory.mktemp("kill") / "reference")
    started = time.monotonic()
    finish(start(workdir))
    seconds = time.monotonic() - started
    files = {name: comparable(name, path) for name, path in final_files(workdir).items()}
    assert "out/train.parquet" in files
    assert not temporaries(workdir)
    return files, seconds


def test_kill_9_leaves_no_partial_file_and_the_rerun_matches(reference, tmp_path):
    files, seconds = reference
    workdir = make_workdir(tmp_path / "killed")
    rng = random.Random(SEED)
    inside_a_write = [kill_when_a_temporary_appears(workdir, "cache/stages")]
    assert_complete(workdir, files)
    running = []
    for _ in range(RANDOM_KILLS):
        process = start(workdir)
        time.sleep(rng.uniform(0.05, seconds))
        running.append(kill(process))
        assert_complete(workdir, files)
    inside_a_write += [kill_when_a_temporary_appears(workdir, "out") for _ in range(2)]
    assert_complete(workdir, files)
    assert any(inside_a_write), "no kill landed inside a write"
    assert any(running), "every run had finished before its kill"

    finish(start(workdir))
    assert_complete(workdir, files)
    assert set(final_files(workdir)) == set(files)


def _cache_entries(workdir: Path) -> list[Path]:
    return sorted((workdir / "cache" / "stages").glob("[!.]*"))


def test_an_incomplete_cache_entry_is_recomputed(reference, tmp_path):
    # What a non-atomic writer (or a partial copy of the cache) leaves: files but no marker.
    files, _ = reference
    workdir = make_workdir(tmp_path / "partial")
    finish(start(workdir))
    entry = _cache_entries(workdir)[0]
    (entry / "COMPLETE").unlink()
    kept = entry / "kept-00000.parquet"
    kept.write_bytes(kept.read_bytes()[:100])
    finish(start(workdir))
    assert_complete(workdir, files)


def test_an_unreadable_cache_entry_is_recomputed(reference, tmp_path):
    files, _ = reference
    workdir = make_workdir(tmp_path / "torn")
    finish(start(workdir))
    kept = _cache_entries(workdir)[0] / "kept-00000.parquet"
    kept.write_bytes(kept.read_bytes()[:100])
    finish(start(workdir))
    assert_complete(workdir, files)
