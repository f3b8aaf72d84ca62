"""Kill -9 during `orpo-pipeline train`, then resume: final weights equal an uninterrupted run.

Real subprocesses on CPU with a tiny Llama: one run is killed at a seeded random moment after its
second checkpoint, resumed with `--set resume=RUN_DIR`, killed again while it writes a
checkpoint, and resumed to the end. Each resume must start from the newest complete checkpoint,
and the final weights and the metrics must be identical to those of an uninterrupted run.
"""

import dataclasses
import itertools
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from orpo_pipeline.train.checkpoints import complete_checkpoints
from tests.train.conftest import build_model, build_tokenizer, make_pairs, write_pairs
from tests.train.test_loop import read_metrics

SEED = 20261124
STEPS = 100
SAVE_EVERY = 5
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",  # a tiny model on shared cores: more threads only contend
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train-kill")
    tokenizer = build_tokenizer()
    build_model(tokenizer).save_pretrained(root / "tiny")
    tokenizer.save_pretrained(root / "tiny")
    rows = make_pairs(40)
    config = {
        "name": "kill",
        "model": str(root / "tiny"),
        "train_pairs": str(write_pairs(rows[:32], root / "train.parquet")),
        "eval_pairs": str(write_pairs(rows[32:], root / "eval.parquet")),
        "max_length": 64,
        "max_prompt_length": 48,
        "per_device_batch_size": 2,
        "max_steps": STEPS,
        "learning_rate": 1e-3,
        "eval_every_steps": 25,
        "num_sample_generations": 0,
        "save_every_steps": SAVE_EVERY,
        "save_total_limit": 2,
    }
    path = root / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


_log_numbers = itertools.count()


@dataclasses.dataclass
class Run:
    """A background `orpo-pipeline train` process and the file its output goes to."""

    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8")


def start(config: Path, output_dir: Path, *overrides: str) -> Run:
    command = [sys.executable, "-m", "orpo_pipeline", "train", str(config)]
    command += ["--set", f"output_dir={output_dir}"]
    for override in overrides:
        command += ["--set", override]
    log = output_dir.parent / f"{output_dir.name}-{next(_log_numbers)}.log"
    with log.open("w", encoding="utf-8") as stream:  # a pipe nobody reads would fill up
        return Run(subprocess.Popen(command, env=ENV, stdout=stream, stderr=stream), log)


def finish(run: Run) -> str:
    run.process.wait(timeout=300)
    assert run.process.returncode == 0, run.output()[-3000:]
    assert "Traceback" not in run.output()
    return run.output()


def wait_for(condition, run: Run, what: str) -> None:
    deadline = time.monotonic() + 240
    while not condition():
        assert run.process.poll() is None, f"the run ended before {what}: {run.output()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def kill(run: Run) -> None:
    assert run.process.poll() is None, "the run had finished before its kill"
    os.kill(run.process.pid, signal.SIGKILL)
    run.process.wait(timeout=60)


def newest_step(checkpoints: Path) -> int:
    found = complete_checkpoints(checkpoints)
    return int(found[-1].name.removeprefix("step-")) if found else 0


def first_progress(output: str) -> int:
    """The step the progress bar started at: the resumed step."""
    return int(re.search(rf"(\d+)/{STEPS} \[", output).group(1))


def test_kill_9_during_training_resumes_to_identical_weights(config_file, tmp_path):
    rng = random.Random(SEED)
    reference = start(config_file, tmp_path / "reference")  # runs alongside, one thread each
    runs = tmp_path / "killed"
    first = start(config_file, runs)

    def run_dir() -> Path:
        found = list(runs.iterdir()) if runs.exists() else []
        return found[0] if found else runs / "none"

    # 1. At a random moment after the second checkpoint.
    wait_for(lambda: newest_step(run_dir() / "checkpoints") >= 2 * SAVE_EVERY, first, "step 10")
    time.sleep(rng.uniform(0.0, 0.3))
    kill(first)
    checkpoints = run_dir() / "checkpoints"
    last = newest_step(checkpoints)
    assert last >= 2 * SAVE_EVERY
    assert not (run_dir() / "final").exists()

    # 2. Resumed; once it has saved a checkpoint, killed while it writes the next one.
    second = start(config_file, runs, f"resume={run_dir()}")
    wait_for(lambda: newest_step(checkpoints) > last, second, "a checkpoint after resuming")
    saved = newest_step(checkpoints)

    def writing_the_next() -> bool:
        steps = [int(p.name.removeprefix(".tmp-step-")) for p in checkpoints.glob(".tmp-step-*")]
        return any(step > saved for step in steps)

    wait_for(writing_the_next, second, "the next checkpoint being written")
    kill(second)
    last = newest_step(checkpoints)
    assert last >= saved
    assert not (run_dir() / "final").exists()

    # 3. Resumed to the end, from the newest complete checkpoint.
    log = finish(start(config_file, runs, f"resume={run_dir()}"))
    assert first_progress(log) == last
    finish(reference)

    [reference_dir] = (tmp_path / "reference").iterdir()
    expected = load_file(reference_dir / "final" / "model.safetensors")
    actual = load_file(run_dir() / "final" / "model.safetensors")
    assert expected.keys() == actual.keys()
    assert [name for name in expected if not torch.equal(expected[name], actual[name])] == []
    assert read_metrics(reference_dir) == read_metrics(run_dir())
    assert not list(checkpoints.glob(".tmp-*")), "a torn checkpoint was left behind"
