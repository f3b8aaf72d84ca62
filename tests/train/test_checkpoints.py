import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from orpo_pipeline.errors import ConfigError
from orpo_pipeline.train.checkpoints import MARKER, complete_checkpoints
from orpo_pipeline.train.loop import train
from tests.train.test_loop import read_metrics

REPO = Path(__file__).resolve().parents[2]

# Trains in a child process and kills it with SIGKILL in the middle of saving the step-4
# checkpoint: after Accelerate wrote the state, before the completion marker.
CHILD = """
import os, signal, sys
from accelerate import Accelerator
from orpo_pipeline.train.config import TrainConfig
from orpo_pipeline.train.loop import train

save_state = Accelerator.save_state

def save_then_die(self, output_dir, **kwargs):
    result = save_state(self, output_dir, **kwargs)
    if str(output_dir).endswith("step-000004"):
        os.kill(os.getpid(), signal.SIGKILL)
    return result

Accelerator.save_state = save_then_die
train(TrainConfig.model_validate_json(sys.argv[1]))
"""


@pytest.mark.parametrize(
    "lora", [None, {"r": 4, "alpha": 8, "dropout": 0.3}], ids=["full", "lora-dropout"]
)
def test_resume_after_kill_9_ends_bit_identical(make_config, tmp_path, lora):
    """6 steps == 2 steps + checkpoint + kill -9 while saving step 4 + resume + 4 steps."""
    settings = {
        "max_steps": 6,
        "save_every_steps": 2,
        "save_total_limit": 1,
        "lora": lora,
        "eval_every_steps": 3,
    }
    reference = train(make_config(**settings))
    config = make_config(**settings, output_dir=tmp_path / "killed")
    child = subprocess.run(
        [sys.executable, "-c", CHILD, config.model_dump_json()],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    [run_dir] = config.output_dir.iterdir()
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [".tmp-step-000004", "step-000002"]
    assert complete_checkpoints(checkpoints) == [checkpoints / "step-000002"]

    resumed = train(config.model_copy(update={"resume": run_dir}))
    assert resumed.run_dir == run_dir
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-000004"]
    assert read_metrics(run_dir) == read_metrics(reference.run_dir)
    assert resumed.eval_before == reference.eval_before
    a = load_file(reference.final_dir / "model.safetensors")
    b = load_file(resumed.final_dir / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_only_checkpoints_with_the_marker_count(tmp_path):
    for name in ("step-000002", "step-000010", "step-000004", ".tmp-step-000012", "notes"):
        (tmp_path / name).mkdir()
    for name in ("step-000002", "step-000010", ".tmp-step-000012"):
        (tmp_path / name / MARKER).write_text("")
    assert complete_checkpoints(tmp_path) == [tmp_path / "step-000002", tmp_path / "step-000010"]
    assert complete_checkpoints(tmp_path / "missing") == []


def test_resume_refuses_a_different_config(make_config):
    config = make_config(max_steps=1, eval_pairs=None)
    first = train(config)
    with pytest.raises(ConfigError, match=r"differs .* \['beta'\]"):
        train(config.model_copy(update={"beta": 0.5, "resume": first.run_dir}))
