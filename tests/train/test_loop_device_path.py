"""The loop's device path on CPU: config settings reach the policy, token-budget steps, batches
prefetched one step ahead, host-side counts, wall-time throughput and the LR schedule."""

import json
import math
import subprocess
import sys

import pytest
import torch
from transformers import AutoTokenizer, get_scheduler

from orpo_pipeline.errors import ConfigError
from orpo_pipeline.train import loop
from orpo_pipeline.train.data import token_budget_batches
from orpo_pipeline.train.loop import StepPlan, build_optimizer, train


def metric_lines(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if "loss" in record]


@pytest.fixture
def prefetched(monkeypatch) -> list:
    """Every item `train()` takes from `prefetch_to_device` (the real one, recorded)."""
    items = []
    real = loop.prefetch_to_device

    def recording(windows, device):
        for item in real(windows, device):
            items.append(item)
            yield item

    monkeypatch.setattr(loop, "prefetch_to_device", recording)
    return items


def epoch_cut(sizes: list[int], epoch: int, *, seed: int, budget: int) -> list[list[int]]:
    """Epoch `epoch`'s seeded shuffle (as `step_pairs` orders pairs), cut by token budget."""
    order = loop.step_pairs(epoch, num_pairs=len(sizes), pairs_per_step=len(sizes), seed=seed)
    return list(token_budget_batches(sizes, order, budget))


def pair_sizes(config) -> list[int]:
    tokenizer = AutoTokenizer.from_pretrained(config.model)
    return [
        pair.num_tokens for pair in loop.load_split(config.train_pairs, tokenizer, config).pairs
    ]


def test_bucket_tokens_reach_the_collate_and_batches_come_through_prefetch(make_config, prefetched):
    config = make_config(max_steps=3, bucket_tokens=64, eval_pairs=None)
    train(config)
    assert len(prefetched) == 3  # one item per step: this process's micro-batches (each with
    # its labels and pair keys) and every process's indices
    for window, batches in prefetched:
        assert [batch.num_pairs for batch, _, _ in window] == [len(b) for b in batches] == [2]
        rows, width = window[0][0].input_ids.shape
        assert width % 64 == 0 and rows & (rows - 1) == 0  # a bucket: 64·k wide, 2^j rows


def test_attention_setting_reaches_the_policy(make_config):
    with pytest.raises(ConfigError, match="flex_attention trains on CUDA only"):
        train(make_config(max_steps=1, attention="flex_attention", eval_pairs=None))


def test_compile_setting_compiles_the_layers_and_trains_as_eager(make_config, monkeypatch):
    """`compile: true` in train() (traced with the `aot_eager` backend: no C++ build)."""
    compiled = []
    compile_module = torch.nn.Module.compile

    def compile_aot_eager(self):
        compiled.append(type(self).__name__)
        compile_module(self, backend="aot_eager")

    eager = metric_lines(train(make_config(eval_pairs=None)).run_dir)
    monkeypatch.setattr(torch.nn.Module, "compile", compile_aot_eager)
    lines = metric_lines(train(make_config(compile=True, eval_pairs=None)).run_dir)
    assert compiled == ["LlamaDecoderLayer"] * 2
    assert [line["loss"] for line in lines] == pytest.approx(
        [line["loss"] for line in eager], rel=1e-5
    )


@pytest.mark.parametrize("accumulation", [1, 2])
def test_token_budget_steps_train_every_pair_once_per_epoch(make_config, prefetched, accumulation):
    config = make_config(
        micro_batch_tokens=120,
        max_steps=None,
        num_epochs=1,
        gradient_accumulation_steps=accumulation,
        eval_pairs=None,
    )
    sizes = pair_sizes(config)
    first_epoch = epoch_cut(sizes, 0, seed=0, budget=120)
    steps = math.ceil(len(first_epoch) / accumulation)
    assert 3 <= len(first_epoch) < len(sizes)  # budgets, not single pairs or one big batch

    result = train(config)
    lines = metric_lines(result.run_dir)
    trained = [batch for _, batches in prefetched for batch in batches]
    assert result.steps == len(lines) == len(prefetched) == steps
    assert trained[: len(first_epoch)] == first_epoch
    assert sorted(i for batch in first_epoch for i in batch) == list(range(len(sizes)))
    for batch in trained:
        assert sum(sizes[i] for i in batch) <= 120 or len(batch) == 1
    for window, batches in prefetched:  # one process: its micro-batches are the step's
        assert [b.num_pairs for b, _, _ in window] == [len(b) for b in batches]
    assert lines[-1]["epoch"] == pytest.approx(len([i for b in trained for i in b]) / len(sizes))
    if accumulation == 1:
        assert lines[-1]["epoch"] == 1.0
        assert lines[-1]["train_tokens"] == sum(sizes)
    for line in lines:
        assert all(math.isfinite(v) for v in line.values() if isinstance(v, float))
        assert 0 <= line["rewards/accuracies"] <= 1 and 0 <= line["logp_accuracy"] <= 1
        assert line["loss"] > 0 and line["step_seconds"] > 0
    tokens = [0] + [line["train_tokens"] for line in lines]
    for before, line in zip(tokens, lines, strict=False):  # log_every_steps 1: one step a line
        step_tokens = line["train_tokens"] - before
        assert line["tokens_per_second"] * line["step_seconds"] == pytest.approx(step_tokens)


def test_step_plan_is_the_pair_count_order_without_a_budget():
    plan = StepPlan([5] * 10, seed=3, batches_per_step=3, micro_batch=2)
    assert plan.num_steps(1.0) == 2  # 10 pairs in steps of 6, rounded up
    for step in range(4):
        order = loop.step_pairs(step, num_pairs=10, pairs_per_step=6, seed=3)
        assert plan(step) == [order[0:2], order[2:4], order[4:6]]


def test_step_plan_token_budget_continues_into_the_next_epoch():
    sizes = [3, 9, 4, 4, 7, 1, 8, 2, 5, 6, 3]
    plan = StepPlan(sizes, seed=1, batches_per_step=2, micro_batch=1, max_tokens=10)
    epochs = [epoch_cut(sizes, epoch, seed=1, budget=10) for epoch in range(4)]
    assert plan.num_steps(1.0) == math.ceil(len(epochs[0]) / 2)
    assert plan.num_steps(2.5) == math.ceil(2.5 * len(epochs[0]) / 2)
    steps = sum(map(len, epochs[:3])) // 2
    stream = [batch for step in range(steps) for batch in plan(step)]
    assert stream == [batch for epoch in epochs for batch in epoch][: 2 * steps]
    assert all(sum(sizes[i] for i in batch) <= 10 for batch in stream)
    fresh = StepPlan(sizes, seed=1, batches_per_step=2, micro_batch=1, max_tokens=10)
    assert fresh(steps - 1) == plan(steps - 1)  # a resume starts mid-stream: the same batches


@pytest.mark.parametrize("shape", ["linear", "cosine"])
def test_lr_schedule_equals_transformers_get_scheduler(make_config, shape):
    config = make_config(lr_scheduler=shape, warmup_steps=3, learning_rate=0.5)
    ours = build_optimizer(torch.nn.Linear(2, 2), config, total_steps=11)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    theirs = get_scheduler(shape, optimizer, num_warmup_steps=3, num_training_steps=11)
    for _ in range(13):
        assert ours[1].get_last_lr()[0] == pytest.approx(theirs.get_last_lr()[0], abs=1e-12)
        for opt, scheduler in ((ours[0], ours[1]), (optimizer, theirs)):
            opt.step()
            scheduler.step()


def test_importing_the_loop_skips_transformers_optimization_and_peft():
    code = (
        "import sys, orpo_pipeline.train.loop\n"
        "print([m for m in ('transformers.optimization', 'transformers.trainer_utils', 'peft')"
        " if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
