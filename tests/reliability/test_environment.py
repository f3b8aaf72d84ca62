"""Disk full, unwritable output directories and config errors: one clear message, nothing corrupted.

"Disk full" is simulated with `RLIMIT_FSIZE` in a subprocess that ignores SIGXFSZ, so writes past
the limit fail with EFBIG like they would with ENOSPC. Root ignores file modes, so "unwritable"
is an output directory below a regular file, or a read-only bind mount in a private mount
namespace where the sandbox allows one.
"""

import gzip
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml
from click.testing import CliRunner

from orpo_pipeline.cli import cli
from orpo_pipeline.formats.generate import Sample, SampleCache, Sampling

ROWS = 3000


def make_workdir(path: Path) -> Path:
    """A recipe over ROWS generated HH rows, with relative paths and its own cache."""
    path.mkdir()
    rows = []
    for i in range(ROWS):
        prompt = f"\n\nHuman: question {i} " + "lorem ipsum " * 10
        rows.append(
            {
                "chosen": f"{prompt}\n\nAssistant: good answer {i}",
                "rejected": f"{prompt}\n\nAssistant: bad answer {i}",
            }
        )
    data = "".join(json.dumps(row) + "\n" for row in rows) + "{not json\n"
    (path / "hh.jsonl.gz").write_bytes(gzip.compress(data.encode(), mtime=0))
    recipe = {
        "name": "env",
        "source": {"inputs": ["hh.jsonl.gz"], "format": "hh_rlhf"},
        "stages": [{"stage": "validate"}, {"stage": "dedupe"}, {"stage": "split", "eval_size": 50}],
        "output_dir": "out",
    }
    (path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return path


def run_cli(
    workdir: Path, *args: str, file_limit: int | None = None
) -> subprocess.CompletedProcess:
    """`orpo-pipeline ARGS` in a subprocess, with files capped at `file_limit` bytes."""

    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    return subprocess.run(
        [sys.executable, "-m", "orpo_pipeline", *args],
        cwd=workdir,
        env={**os.environ, "ORPO_PIPELINE_CACHE": str(workdir / "cache")},
        preexec_fn=limit_files if file_limit is not None else None,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def assert_one_clear_error(done: subprocess.CompletedProcess, *names: str) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    message = done.stderr.strip()
    assert message.startswith("Error: "), message
    for name in names:
        assert name in message, message
    return message


def assert_no_temporaries(directory: Path) -> None:
    assert not list(directory.rglob(".*")), "temporary files were left behind"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A work directory after one complete run: outputs in out/, a full stage cache."""
    workdir = make_workdir(tmp_path_factory.mktemp("env") / "work")
    done = run_cli(workdir, "data", "recipe.yaml")
    assert done.returncode == 0, done.stderr
    return workdir


def copy_of(finished: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "work"))


def test_disk_full_while_writing_an_output_keeps_the_earlier_outputs(finished, tmp_path):
    workdir = copy_of(finished, tmp_path)
    before = snapshot(workdir / "out")
    # Fill the cache for a changed split elsewhere, so the capped run only writes outputs.
    changed = ["--set", "stages.2.eval_size=60"]
    assert (
        run_cli(workdir, "data", "recipe.yaml", *changed, "--set", "output_dir=o2").returncode == 0
    )
    done = run_cli(workdir, "data", "recipe.yaml", *changed, file_limit=20_000)
    message = assert_one_clear_error(done, "cannot write", str(Path("out") / "train.parquet"))
    assert len(message.splitlines()) == 1
    after = snapshot(workdir / "out")
    # Rejects (small) were rewritten whole; train/eval, report and manifest are the old ones.
    for name in ("train.parquet", "eval.parquet", "report.json", "manifest.json", "spec.yaml"):
        assert after[name] == before[name], name
    assert set(after) == set(before)
    for name, data in after.items():
        for line in data.splitlines() if name.endswith(".jsonl") else []:
            json.loads(line)
    assert_no_temporaries(workdir / "out")


def test_disk_full_while_writing_the_stage_cache_leaves_no_entry(finished, tmp_path):
    workdir = copy_of(finished, tmp_path)
    before = snapshot(workdir / "out")
    entries = sorted(p.name for p in (workdir / "cache" / "stages").iterdir())
    done = run_cli(
        workdir, "data", "recipe.yaml", "--set", "source.source=renamed", file_limit=20_000
    )
    assert_one_clear_error(done, "cannot write the stage cache entry")
    assert sorted(p.name for p in (workdir / "cache" / "stages").iterdir()) == entries
    assert snapshot(workdir / "out") == before
    # With room again, the same command completes.
    done = run_cli(workdir, "data", "recipe.yaml", "--set", "source.source=renamed")
    assert done.returncode == 0, done.stderr


def test_disk_full_during_convert_keeps_the_earlier_pair_file(tmp_path):
    workdir = make_workdir(tmp_path / "work")
    assert run_cli(workdir, "convert", "hh.jsonl.gz", "-o", "pairs.parquet").returncode == 0
    before = snapshot(workdir)
    done = run_cli(
        workdir, "convert", "hh.jsonl.gz", "-o", "pairs.parquet", "--source", "x", file_limit=20_000
    )
    assert_one_clear_error(done, "cannot write", "pairs.parquet")
    assert snapshot(workdir) == before
    pl.read_parquet(workdir / "pairs.parquet")


def test_output_directory_below_a_regular_file(finished, tmp_path):
    workdir = copy_of(finished, tmp_path)
    (workdir / "blocker").write_text("a file, not a directory")
    done = run_cli(workdir, "data", "recipe.yaml", "--set", "output_dir=blocker/out")
    assert_one_clear_error(done, "cannot write to blocker/out", "Not a directory")
    convert = run_cli(workdir, "convert", "hh.jsonl.gz", "-o", "blocker/pairs.parquet")
    assert_one_clear_error(convert, "cannot write to blocker: File exists")
    assert (workdir / "blocker").read_text() == "a file, not a directory"


def test_read_only_output_directory(finished, tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) for a private read-only bind mount")
    workdir = copy_of(finished, tmp_path)
    before = snapshot(workdir / "out")
    script = (
        'mount --bind -o ro out out && exec "$0" -m orpo_pipeline data recipe.yaml '
        "--set stages.2.eval_size=70"
    )
    done = subprocess.run(
        ["unshare", "--mount", "--map-root-user", "sh", "-c", script, sys.executable],
        cwd=workdir,
        env={**os.environ, "ORPO_PIPELINE_CACHE": str(workdir / "cache")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if "mount" in done.stderr and done.returncode != 1:
        pytest.skip(f"no private mounts here: {done.stderr.strip()}")
    assert_one_clear_error(done, "out", "Read-only file system")
    assert snapshot(workdir / "out") == before


# ---------------------------------------------------------------------------------------------
# Config errors: the message names the YAML path; no traceback.

DATA = "name: x\nsource: {inputs: [a.jsonl]}\noutput_dir: out\n"
STAGES = "stages: [{stage: validate}, {stage: dedupe}, {stage: filter, %s}]\n"


@pytest.mark.parametrize(
    ("recipe", "expected"),
    [
        (DATA + "colour: red\n", "colour: Extra inputs are not permitted"),
        (
            DATA + STAGES % "min_response_chars: 1, colour: red",
            "stages.2.filter.colour: Extra inputs are not permitted",
        ),
        (
            DATA + STAGES % "min_response_chars: lots",
            "stages.2.filter.min_response_chars: Input should be a valid integer",
        ),
        (
            DATA + STAGES % "min_response_chars: -3",
            "stages.2.filter.min_response_chars: Input should be greater than or equal to 0",
        ),
        (DATA + "stages: [{stage: dedup}]\n", "stages.0: Input tag 'dedup'"),
        (
            "name: x\nsource: {inputs: a.jsonl}\noutput_dir: out\n",
            "source.inputs: Input should be a valid list",
        ),
        (
            "name: x\nsource: {inputs: [a.jsonl], ties: maybe}\noutput_dir: out\n",
            "source.ties: Input should be 'drop' or 'keep'",
        ),
        ("- a list\n", "expected a mapping at the top level"),
        ("name: [x\n", "not valid YAML"),
        (
            "name: !!python/object/apply:os.system ['echo owned']\n",
            "could not determine a constructor",
        ),
    ],
    ids=[
        "unknown-key",
        "unknown-stage-key",
        "wrong-type",
        "bad-value",
        "unknown-stage",
        "not-a-list",
        "bad-choice",
        "not-a-mapping",
        "bad-yaml",
        "python-tag",
    ],
)
def test_data_config_errors_name_the_yaml_path(tmp_path, recipe, expected):
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe)
    result = CliRunner().invoke(cli, ["data", str(path)])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert result.output.startswith(f"Error: {path}")
    assert expected in result.output
    assert "Traceback" not in result.output


def test_non_utf8_config_is_a_clear_error(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    result = CliRunner().invoke(cli, ["data", str(path)])
    assert (result.exit_code, isinstance(result.exception, SystemExit)) == (1, True)
    assert "is not UTF-8" in result.output


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("stages.9.eval_size=1", "no such list position"),
        ("novalue", "expects key=value"),
        ("stages.3.eval_size=-5", "stages.3.split.eval_size"),
        ("source.inputs.0.x=1", "is not a mapping or list"),
    ],
)
def test_bad_overrides_are_clear_errors(override, expected):
    from tests.conftest import REPO

    result = CliRunner().invoke(
        cli, ["data", str(REPO / "pipelines" / "default.yaml"), "--set", override]
    )
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert expected in result.output


TRAIN = "train_pairs: t.parquet\n"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (TRAIN + "colour: red\n", "colour: Extra inputs are not permitted"),
        (TRAIN + "learning_rate: fast\n", "learning_rate: Input should be a valid number"),
        (TRAIN + "lora: {r: 0}\n", "lora.r: Input should be greater than or equal to 1"),
        (TRAIN + "trackers: [wandb]\n", "trackers.0: Input should be"),
        (TRAIN + "max_prompt_length: 5000\n", "max_prompt_length (5000) exceeds max_length"),
        ("model: default\n", "train_pairs: Field required"),
    ],
    ids=["unknown-key", "wrong-type", "bad-nested-value", "bad-choice", "cross-field", "missing"],
)
def test_train_config_errors_name_the_yaml_path(tmp_path, config, expected):
    path = tmp_path / "train.yaml"
    path.write_text(config)
    result = CliRunner().invoke(cli, ["train", str(path)])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.output.startswith(f"Error: {path}")
    assert expected in result.output
    assert "Traceback" not in result.output


def test_a_sample_shard_cut_by_kill_9_is_never_read(tmp_path):
    # Shards are written to a temp file and renamed: kill -9 mid-write leaves only the temp file.
    cache = SampleCache(tmp_path, "0" * 64, Sampling())
    cache.store([("k1", 0)], [Sample("café", "stop", 2)])
    torn = json.dumps({"prompt": "k2", "index": 0, "text": "café"}, ensure_ascii=False).encode()
    (cache.directory / ".abc.jsonl.x1y2.tmp").write_bytes(torn[:-3])
    assert cache.load() == {("k1", 0): Sample("café", "stop", 2)}
