"""Data parallel training: 2 CPU processes (gloo) equal 1 process with doubled accumulation."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.commands.launch import launch_command_parser
from accelerate.utils import DeepSpeedPlugin, DistributedType
from safetensors.torch import load_file

from orpo_pipeline.train.loop import train
from tests.train.test_loop import read_metrics

REPO = Path(__file__).resolve().parents[2]
ACCELERATE_CONFIGS = REPO / "pipelines" / "accelerate"

CHILD = """
import sys
from orpo_pipeline.train.config import TrainConfig
from orpo_pipeline.train.loop import train
train(TrainConfig.model_validate_json(sys.argv[1]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config, world_size: int) -> list[subprocess.Popen]:
    """Start `world_size` training processes the way `accelerate launch --cpu` sets them up."""
    port = str(free_port())
    processes = []
    for rank in range(world_size):
        env = os.environ | {
            "ACCELERATE_USE_CPU": "true",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "WORLD_SIZE": str(world_size),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "OMP_NUM_THREADS": "1",
        }
        processes.append(
            subprocess.Popen(
                [sys.executable, "-c", CHILD, config.model_dump_json()],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return processes


def test_two_cpu_processes_equal_one_process_with_doubled_accumulation(make_config, tmp_path):
    settings = {"max_steps": 3, "eval_every_steps": 2, "num_sample_generations": 0}
    two = make_config(gradient_accumulation_steps=1, output_dir=tmp_path / "ddp", **settings)
    processes = launch(two, world_size=2)  # runs while the single process trains
    try:
        single = train(make_config(gradient_accumulation_steps=2, **settings))
        for process in processes:
            _, stderr = process.communicate(timeout=120)
            assert process.returncode == 0, stderr[-3000:]
    finally:
        for process in processes:
            process.kill()

    [run_dir] = two.output_dir.iterdir()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["environment"]["distributed"]["num_processes"] == 2
    assert manifest["environment"]["distributed"]["distributed_type"] == str(
        DistributedType.MULTI_CPU
    )
    expected, result = read_metrics(single.run_dir), read_metrics(run_dir)
    assert [m["step"] for m in result] == [0, 1, 2, 2, 3, 3]  # evals at 0, 2 and 3
    for a, b in zip(expected, result, strict=True):
        assert a.keys() == b.keys()
        for name in a:  # sums reduced across processes: eval metrics too
            assert a[name] == pytest.approx(b[name], rel=1e-5, abs=1e-6), (a["step"], name)
    a = load_file(single.final_dir / "model.safetensors")
    b = load_file(run_dir / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6)


EXPECTED_TYPES = {
    "single_gpu.yaml": DistributedType.NO,
    "ddp.yaml": DistributedType.MULTI_GPU,
    "fsdp.yaml": DistributedType.FSDP,
    "deepspeed_zero3.yaml": DistributedType.DEEPSPEED,
}


def test_every_accelerate_config_is_tested():
    assert {p.name for p in ACCELERATE_CONFIGS.glob("*.yaml")} == set(EXPECTED_TYPES)


@pytest.mark.parametrize("name", sorted(EXPECTED_TYPES))
def test_accelerate_config_loads_with_accelerates_classes(name):
    path = ACCELERATE_CONFIGS / name
    config = ClusterConfig.from_yaml_file(path)  # unknown top-level keys raise
    assert config.distributed_type == EXPECTED_TYPES[name]
    assert not config.use_cpu
    # Nested keys become `accelerate launch` options; an unknown one would be dropped silently.
    options = {action.dest for action in launch_command_parser()._actions}
    assert set(config.fsdp_config) | set(config.deepspeed_config) <= options
    assert (config.distributed_type == DistributedType.FSDP) == bool(config.fsdp_config)
    assert (config.distributed_type == DistributedType.DEEPSPEED) == bool(config.deepspeed_config)


def test_fsdp_config_is_fsdp2_with_full_weights_in_checkpoints():
    fsdp = yaml.safe_load((ACCELERATE_CONFIGS / "fsdp.yaml").read_text())["fsdp_config"]
    assert fsdp["fsdp_version"] == 2
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"


def test_deepspeed_config_builds_a_zero3_plugin_that_gathers_weights_on_save():
    settings = yaml.safe_load((ACCELERATE_CONFIGS / "deepspeed_zero3.yaml").read_text())
    plugin = DeepSpeedPlugin(**settings["deepspeed_config"])
    assert plugin.zero_stage == 3
    zero = plugin.deepspeed_config["zero_optimization"]
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert plugin.deepspeed_config["gradient_accumulation_steps"] == "auto"  # from the config
