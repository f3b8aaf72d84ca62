import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from orpo_pipeline.config_files import load_config
from orpo_pipeline.errors import ConfigError
from orpo_pipeline.train import loop
from orpo_pipeline.train.config import TrainConfig
from orpo_pipeline.train.loop import TIMING_METRICS, resolve_mixed_precision, train
from tests.train.conftest import make_pairs, write_pairs

REPO = Path(__file__).resolve().parents[2]


def read_metrics(run_dir: Path) -> list[dict]:
    """Metrics records without the wall-clock ones, which differ between identical runs."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [
        {k: v for k, v in json.loads(line).items() if k not in TIMING_METRICS} for line in lines
    ]


def train_lines(run_dir: Path) -> list[dict]:
    return [m for m in read_metrics(run_dir) if "loss" in m]


def test_every_trainable_tensor_changes_and_the_run_dir_is_complete(make_config, tiny_dir):
    result = train(make_config(max_steps=3, learning_rate=1e-2))
    before = load_file(tiny_dir / "model.safetensors")
    after = load_file(result.final_dir / "model.safetensors")
    assert before.keys() == after.keys()
    assert [name for name in before if torch.equal(before[name], after[name])] == []

    run = result.run_dir
    assert run.parent == make_config().output_dir
    files = {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}
    assert {
        "config.yaml",
        "data.json",
        "metrics.jsonl",
        "manifest.json",
        "samples/step-000000.jsonl",
        "samples/step-000003.jsonl",
        "final/model.safetensors",
        "final/config.json",
        "final/tokenizer.json",
        "final/chat_template.jinja",
    } <= files
    assert not any(name.startswith((".tmp", "checkpoints")) for name in files)
    model = AutoModelForCausalLM.from_pretrained(result.final_dir)
    assert model.config.num_hidden_layers == 2
    tokenizer = AutoTokenizer.from_pretrained(result.final_dir)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(tiny_dir).chat_template

    metrics = read_metrics(run)
    assert [(m["step"], "eval_loss" in m) for m in metrics] == [
        (0, True),
        (1, False),
        (2, False),
        (3, False),
        (3, True),
    ]
    assert {
        "loss",
        "nll_loss",
        "log_odds_ratio",
        "log_odds_chosen",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
        "grad_norm",
        "learning_rate",
        "epoch",
    } <= set(metrics[1])
    assert result.eval_before == metrics[0] and result.eval_after == metrics[-1]
    assert result.eval_after["eval_nll_loss"] < result.eval_before["eval_nll_loss"]
    assert str(run) in result.summary() and "rewards/accuracies" in result.summary()
    sample = json.loads((run / "samples/step-000003.jsonl").read_text().splitlines()[0])
    assert set(sample) == {"id", "prompt", "completion", "chosen"}


@pytest.mark.parametrize("share_prompt", [True, False])
def test_batch_of_1_with_4_accumulation_steps_equals_batch_of_4(make_config, share_prompt):
    """Token-weighted NLL across micro-batches, and no second division by the GA steps."""
    settings = {"max_steps": 2, "eval_pairs": None, "share_prompt": share_prompt}
    big = train(make_config(per_device_batch_size=4, gradient_accumulation_steps=1, **settings))
    small = train(make_config(per_device_batch_size=1, gradient_accumulation_steps=4, **settings))
    for a, b in zip(train_lines(big.run_dir), train_lines(small.run_dir), strict=True):
        assert a.keys() == b.keys()
        for name in a:  # grad_norm too: a double division would shrink it 4x
            assert a[name] == pytest.approx(b[name], rel=1e-5, abs=1e-6), name
    a = load_file(big.final_dir / "model.safetensors")
    b = load_file(small.final_dir / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6)


def test_layouts_train_identically(make_config):
    shared = train(make_config(share_prompt=True, eval_pairs=None))
    separate = train(make_config(share_prompt=False, eval_pairs=None))
    for a, b in zip(train_lines(shared.run_dir), train_lines(separate.run_dir), strict=True):
        for name in a:
            assert a[name] == pytest.approx(b[name], rel=1e-5, abs=1e-6), name


def test_prompts_longer_than_max_length_train_without_nan(make_config, tmp_path):
    """TRL 1.16 goes NaN here (empty completions, orpo-reference §2.5); we cut the prompt."""
    path = write_pairs(make_pairs(6, prompt_words=80), tmp_path / "long.parquet")
    result = train(
        make_config(
            train_pairs=path, eval_pairs=path, max_length=32, max_prompt_length=24, max_steps=3
        )
    )
    report = json.loads((result.run_dir / "data.json").read_text())
    assert report["train"]["prompts_truncated"] == 6 and report["train"]["rejects"] == {}
    for line in read_metrics(result.run_dir):
        assert all(math.isfinite(v) for v in line.values()), line


def test_lora_trains_only_the_adapters_and_merges_into_a_plain_checkpoint(make_config, tiny_dir):
    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    result = train(make_config(lora=lora, save_every_steps=1, learning_rate=1e-2))
    base = load_file(tiny_dir / "model.safetensors")
    state = load_file(result.run_dir / "checkpoints/step-000001/model.safetensors")
    state = {k.removeprefix("model."): v for k, v in state.items()}  # the policy wraps the model
    adapters = {k: v for k, v in state.items() if "lora_" in k}
    assert adapters and all(v.abs().sum() > 0 for k, v in adapters.items() if "lora_B" in k)
    for key, value in state.items():
        if "lora_" not in key:
            name = key.removeprefix("base_model.model.").replace(".base_layer", "")
            assert torch.equal(value, base[name]), key

    merged = load_file(result.final_dir / "model.safetensors")
    assert merged.keys() == base.keys()
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed == {
        f"model.layers.{i}.self_attn.{p}.weight" for i in (0, 1) for p in ("q_proj", "v_proj")
    }
    AutoModelForCausalLM.from_pretrained(result.final_dir)


def test_lora_without_merge_saves_the_adapter(make_config):
    lora = {"r": 4, "alpha": 8, "merge_on_save": False}
    result = train(make_config(lora=lora, max_steps=1, eval_pairs=None))
    assert (result.final_dir / "adapter_config.json").is_file()
    assert (result.final_dir / "adapter_model.safetensors").is_file()


def test_auto_mixed_precision_is_off_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert resolve_mixed_precision("auto") == "no"
    assert resolve_mixed_precision("bf16") == "bf16"


def test_a_requested_tracker_that_is_not_installed_is_an_error(make_config, monkeypatch):
    monkeypatch.setitem(loop.TRACKER_PACKAGES, "mlflow", ("json", "orpo_no_such_package"))
    config = make_config(trackers=["jsonl", "mlflow"])
    with pytest.raises(ConfigError, match=r"mlflow.*: pip install orpo_no_such_package$"):
        train(config)
    assert not config.output_dir.exists()


def test_config_rejects_bad_lengths_and_unknown_keys(tmp_path):
    with pytest.raises(ValueError, match="max_prompt_length"):
        TrainConfig(train_pairs=tmp_path / "a.parquet", max_length=8, max_prompt_length=9)
    with pytest.raises(ValueError, match="Extra inputs"):
        TrainConfig.model_validate({"train_pairs": "a.parquet", "lr": 1})


def test_config_module_does_not_import_torch():
    code = "import sys, orpo_pipeline.train.config; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize(
    "path", sorted((REPO / "pipelines" / "train").glob("*.yaml")), ids=lambda p: p.name
)
def test_pipeline_train_configs_validate(path):
    load_config(path, TrainConfig)
