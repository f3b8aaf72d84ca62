"""Every objective trains through the one trainer: accumulation, resume, 2 processes, references."""

import json
import math
import signal
import subprocess
import sys
import typing

import pytest
import torch
from safetensors.torch import load_file

from orpo_pipeline.errors import ConfigError, DataError
from orpo_pipeline.train.config import ObjectiveName, TrainConfig
from orpo_pipeline.train.loop import train
from orpo_pipeline.train.objectives import OBJECTIVES, build_objective
from tests.train.conftest import make_pairs
from tests.train.test_checkpoints import CHILD as KILLED_CHILD
from tests.train.test_checkpoints import REPO
from tests.train.test_distributed import launch
from tests.train.test_loop import read_metrics, train_lines


def assert_same_metrics(a_dir, b_dir, *, rel=1e-5, ignore=()):
    a, b = read_metrics(a_dir), read_metrics(b_dir)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for name in x.keys() - set(ignore):
            assert x[name] == pytest.approx(y[name], rel=rel, abs=1e-6), (x["step"], name)


def assert_same_weights(a_dir, b_dir):
    # atol 1e-5 (lr 1e-3): DPO's log-ratios are differences of ~-50-nat fp32 sums, so layout
    # rounding (~1e-6) moves near-zero gradients, which Adam's normalisation then amplifies.
    a, b = load_file(a_dir / "model.safetensors"), load_file(b_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


def test_every_objective_name_has_one_class():
    assert set(OBJECTIVES) == set(typing.get_args(ObjectiveName))


@pytest.mark.parametrize("objective", ["sft", "dpo", "simpo", "cpo", "kto"])
def test_each_objective_trains_every_weight_and_reports_its_metrics(
    make_config, tiny_dir, objective
):
    eval_pairs = make_config().eval_pairs  # trained on: its own loss must fall on it
    config = make_config(objective=objective, max_steps=3, learning_rate=5e-3)
    result = train(config.model_copy(update={"train_pairs": eval_pairs}))
    before = load_file(tiny_dir / "model.safetensors")
    after = load_file(result.final_dir / "model.safetensors")
    assert [name for name in before if torch.equal(before[name], after[name])] == []
    names = set(OBJECTIVES[objective].metric_names)
    lines = read_metrics(result.run_dir)
    for line in lines:
        assert all(math.isfinite(v) for v in line.values()), line
    evals = [line for line in lines if "eval_loss" in line]
    assert [e["step"] for e in evals] == [0, 3]
    assert {f"eval_{name}" for name in names} <= set(evals[-1])
    train_names = names - ({"logp_accuracy", "logp_margin"} if objective == "sft" else set())
    assert train_names <= set(train_lines(result.run_dir)[0])
    assert result.eval_after["eval_loss"] < result.eval_before["eval_loss"]
    flops = [line["flops"] for line in lines]
    assert flops == sorted(flops) and flops[-1] > 0
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["objective"] == objective and manifest["parameters"] > 0


@pytest.mark.parametrize("objective", ["sft", "dpo"])
def test_batch_of_1_with_4_accumulation_steps_equals_batch_of_4(make_config, objective):
    settings = {"max_steps": 2, "eval_pairs": None, "objective": objective, "rpo_alpha": 0.5}
    big = train(make_config(per_device_batch_size=4, gradient_accumulation_steps=1, **settings))
    small = train(make_config(per_device_batch_size=1, gradient_accumulation_steps=4, **settings))
    assert_same_metrics(big.run_dir, small.run_dir)
    assert_same_weights(big.final_dir, small.final_dir)


def test_dpo_reference_precomputed_equals_a_frozen_model_and_is_cached(make_config):
    settings = {"objective": "dpo", "max_steps": 3, "eval_every_steps": 2}
    frozen = train(make_config(reference="model", **settings))
    first = train(make_config(**settings))
    again = train(make_config(**settings))
    for run in (first, again):  # FLOPs differ: a precomputed reference runs once, up front
        assert_same_metrics(frozen.run_dir, run.run_dir, rel=2e-5, ignore={"flops"})
    assert read_metrics(first.run_dir)[0]["flops"] > 0 == read_metrics(frozen.run_dir)[0]["flops"]
    cached = [
        json.loads((r.run_dir / "reference.json").read_text())["cached"] for r in (first, again)
    ]
    assert cached[1] == {"train": True, "eval": True}
    assert not (frozen.run_dir / "reference.json").exists()
    # Before any step the policy is the reference: every log-ratio, hence every reward, is 0.
    assert frozen.eval_before["eval_rewards/margins"] == pytest.approx(0, abs=1e-5)
    assert frozen.eval_before["eval_loss"] == pytest.approx(math.log(2), rel=1e-5)


def test_dpo_reference_with_lora_switched_off_equals_the_precomputed_base(make_config):
    lora = {"r": 4, "alpha": 8}
    settings = {"objective": "dpo", "max_steps": 3, "lora": lora, "learning_rate": 5e-2}
    off = train(make_config(reference="lora_disabled", **settings))
    precomputed = train(make_config(**settings))
    assert_same_metrics(off.run_dir, precomputed.run_dir, rel=2e-5, ignore={"flops"})
    assert off.eval_after["eval_rewards/margins"] != pytest.approx(0, abs=1e-4)  # it trained


def test_reference_settings_are_checked():
    with pytest.raises(ValueError, match="lora_disabled needs `lora`"):
        TrainConfig(train_pairs="x.parquet", objective="dpo", reference="lora_disabled")


@pytest.mark.parametrize("objective", ["sft", "dpo"])
def test_resume_after_kill_9_ends_bit_identical(make_config, tmp_path, objective):
    settings = {
        "objective": objective,
        "max_steps": 6,
        "save_every_steps": 2,
        "save_total_limit": 1,
        "eval_every_steps": 3,
        "num_sample_generations": 0,
    }
    reference = train(make_config(**settings))
    config = make_config(**settings, output_dir=tmp_path / "killed")
    child = subprocess.run(
        [sys.executable, "-c", KILLED_CHILD, config.model_dump_json()],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    [run_dir] = config.output_dir.iterdir()
    resumed = train(config.model_copy(update={"resume": run_dir}))
    assert read_metrics(run_dir) == read_metrics(reference.run_dir)
    a = load_file(reference.final_dir / "model.safetensors")
    b = load_file(resumed.final_dir / "model.safetensors")
    assert all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.parametrize(  # kto too: each process estimates KL on its own micro-batches
    "objective",
    [pytest.param(o, marks=pytest.mark.slow) for o in ("sft", "kto")] + ["dpo"],  # orpo: its own
)
def test_two_cpu_processes_equal_one_process_with_doubled_accumulation(
    make_config, tmp_path, objective
):
    settings = {
        "objective": objective,
        "max_steps": 3,
        "eval_every_steps": 2,
        "num_sample_generations": 0,
    }
    two = make_config(gradient_accumulation_steps=1, output_dir=tmp_path / "ddp", **settings)
    processes = launch(two, world_size=2)
    try:
        single = train(make_config(gradient_accumulation_steps=2, **settings))
        for process in processes:
            _, stderr = process.communicate(timeout=180)
            assert process.returncode == 0, stderr[-3000:]
    finally:
        for process in processes:
            process.kill()
    [run_dir] = two.output_dir.iterdir()
    assert_same_metrics(single.run_dir, run_dir)
    assert_same_weights(single.final_dir, run_dir / "final")


def test_kto_reference_precomputed_equals_a_frozen_model_and_starts_at_one_half(make_config):
    settings = {"objective": "kto", "max_steps": 3, "eval_every_steps": 2, "beta": 0.5}
    frozen = train(make_config(reference="model", num_sample_generations=2, **settings))
    samples = (frozen.run_dir / "samples" / "step-000000.jsonl").read_text().splitlines()
    assert len({json.dumps(json.loads(s)["prompt"]) for s in samples}) == 2  # not one twice
    precomputed = train(make_config(**settings))
    assert_same_metrics(frozen.run_dir, precomputed.run_dir, rel=2e-5, ignore={"flops"})
    assert (precomputed.run_dir / "reference.json").is_file()
    # Before any step the policy is the reference: every log-ratio and the KL estimate are 0,
    # so each example's loss is 1 - σ(0).
    assert frozen.eval_before["eval_kl"] == pytest.approx(0, abs=1e-6)
    assert frozen.eval_before["eval_loss"] == pytest.approx(0.5, rel=1e-6)
    assert frozen.eval_after["eval_loss"] != pytest.approx(0.5, abs=1e-4)  # it trained


def write_jsonl(rows: list[dict], path):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_kto_trains_on_unpaired_rows_and_sft_on_sft_records(make_config, tmp_path):
    pairs = make_pairs(12)
    unpaired = [  # TRL's unpaired format; one prompt given as a plain string
        {"prompt": pair["prompt"], "completion": pair[answer], "label": answer == "chosen"}
        for pair, answer in zip(pairs, ["chosen", "rejected", "rejected"] * 4, strict=True)
    ]
    unpaired[0]["prompt"] = unpaired[0]["prompt"][-1]["content"]
    records = [{"messages": pair["prompt"] + pair["chosen"]} for pair in pairs]  # SFT records
    for objective, rows in (("kto", unpaired), ("sft", records)):
        train_file = write_jsonl(rows[:8], tmp_path / f"{objective}-train.jsonl")
        eval_file = write_jsonl(rows[8:], tmp_path / f"{objective}-eval.jsonl")
        config = make_config(
            objective=objective, train_pairs=train_file, eval_pairs=eval_file, max_steps=2
        )
        result = train(config)
        data = json.loads((result.run_dir / "data.json").read_text())
        assert data["train"]["rows"] == data["train"]["pairs"] == 8
        assert data["eval"]["rows"] == data["eval"]["pairs"] == 4
        lines = read_metrics(result.run_dir)
        assert all(math.isfinite(v) for line in lines for v in line.values())
        assert "eval_chosen_nll" in result.eval_after  # no rejected answers: no logp_accuracy
        assert "eval_logp_accuracy" not in result.eval_after
        samples = (result.run_dir / "samples" / "step-000000.jsonl").read_text().splitlines()
        answer = rows[8]["completion"] if objective == "kto" else rows[8]["messages"][-1:]
        assert json.loads(samples[0])["chosen"] == answer[-1]["content"]
    with pytest.raises(DataError, match="no columns a boolean `label`"):
        train(make_config(objective="kto", train_pairs=tmp_path / "sft-train.jsonl"))
    with pytest.raises(DataError, match="no columns `chosen` and `rejected`"):
        train(make_config(objective="dpo", train_pairs=tmp_path / "kto-train.jsonl"))
    with pytest.raises(DataError, match="labelled rows train objective kto"):
        train(make_config(objective="sft", train_pairs=tmp_path / "kto-train.jsonl"))


def test_kto_settings_are_checked():
    with pytest.raises(ValueError, match="per_device_batch_size >= 2"):
        TrainConfig(train_pairs="x.parquet", objective="kto", per_device_batch_size=1)
    with pytest.raises(ValueError, match="not tokens"):
        TrainConfig(train_pairs="x.parquet", objective="kto", micro_batch_tokens=256)
    with pytest.raises(ValueError, match="greater than 0"):
        TrainConfig(train_pairs="x.parquet", objective="kto", undesirable_weight=0)
    with pytest.raises(ConfigError, match="kto needs beta > 0"):
        build_objective(TrainConfig(train_pairs="x.parquet", objective="kto", beta=0))
