"""The default model on real HH-RLHF pairs: TRL parity on a real batch, and 2 steps without NaN."""

import math
import os

import polars as pl
import pytest
import torch

from orpo_pipeline.config_files import load_config
from orpo_pipeline.models import load_model, load_tokenizer
from orpo_pipeline.pipeline import PipelineSpec, run_pipeline
from orpo_pipeline.train.config import TrainConfig
from orpo_pipeline.train.data import read_pairs, tokenize_pairs
from orpo_pipeline.train.loop import train
from orpo_pipeline.train.loss import batch_loss, metric_sums, metrics_from_sums
from orpo_pipeline.train.policy import build_policy
from tests.conftest import REPO
from tests.train.test_loop import read_metrics
from tests.train.test_trl_parity import METRICS

pytestmark = pytest.mark.integration
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
MAX_LENGTH = 256


@pytest.fixture(scope="module")
def hh_pairs(tmp_path_factory) -> pl.DataFrame:
    """The train pairs `pipelines/default.yaml` makes from the vendored HH-RLHF file."""
    out = tmp_path_factory.mktemp("hh")
    cwd = os.getcwd()
    os.chdir(REPO)  # the recipe's input path is relative to the repo
    try:
        run_pipeline(
            load_config(REPO / "pipelines/default.yaml", PipelineSpec, [f"output_dir={out}"])
        )
    finally:
        os.chdir(cwd)
    return pl.read_parquet(out / "train.parquet")


def test_loss_and_metrics_equal_trl_on_a_real_batch(default_checkpoint, hh_pairs, tmp_path):
    from datasets import Dataset

    trl_orpo = pytest.importorskip("trl.experimental.orpo")
    template = load_tokenizer(str(default_checkpoint)).chat_template
    # TRL appends EOS after the template's newline that follows <|im_end|>; without that newline
    # its ids and ours coincide (as in test_trl_parity.py).
    template = template.replace("'<|im_end|>' + '\n'", "'<|im_end|>'")
    tokenizer = load_tokenizer(str(default_checkpoint), chat_template=template)
    model = load_model(str(default_checkpoint), dtype=torch.float32)
    path = tmp_path / "pairs.parquet"
    hh_pairs.write_parquet(path)
    rows = read_pairs(path, limit=100)
    tokenized = tokenize_pairs(rows, tokenizer, max_length=MAX_LENGTH, max_prompt_length=MAX_LENGTH)
    # The 4 shortest pairs: no side truncates them, so both score the very same tokens, and the
    # (8, T, 49152) logits of TRL's layout stay small enough for a 2-core CPU.
    by_length = sorted(
        zip(tokenized.rows, tokenized.pairs, strict=True),
        key=lambda item: item[1].num_tokens,
    )[:4]
    batch_rows = [rows[i] for i, _ in by_length]
    pairs = [pair for _, pair in by_length]
    assert all(pair.num_tokens < MAX_LENGTH for pair in pairs)

    dataset = Dataset.from_list(batch_rows).select_columns(["prompt", "chosen", "rejected"])
    trainer = trl_orpo.ORPOTrainer(
        model=model,
        args=trl_orpo.ORPOConfig(
            output_dir=str(tmp_path / "trl"),
            bf16=False,
            use_cpu=True,
            max_length=MAX_LENGTH,
            beta=0.1,
            per_device_eval_batch_size=4,
            report_to=[],
            remove_unused_columns=False,
        ),
        train_dataset=dataset,
        eval_dataset=dataset,
        processing_class=tokenizer,
    )
    trl_batch = next(iter(trainer.get_eval_dataloader()))
    with torch.no_grad():
        trl_loss, trl_metrics = trainer.get_batch_loss_metrics(trainer.model, trl_batch)
    for i, pair in enumerate(pairs):
        for side, ids in (("chosen", pair.chosen_ids), ("rejected", pair.rejected_ids)):
            real = trl_batch[f"{side}_attention_mask"][i].bool()
            assert trl_batch[f"{side}_input_ids"][i][real].tolist() == pair.prompt_ids + ids

    for share_prompt in (False, True):
        policy, collate = build_policy(
            model, share_prompt=share_prompt, pad_token_id=tokenizer.pad_token_id
        )
        with torch.no_grad():
            logps = policy(collate(pairs), nll_on_prompt=True)
            out = batch_loss(logps, beta=0.1)
        ours = metrics_from_sums(metric_sums(logps, out).tolist(), beta=0.1)
        assert ours["loss"] == pytest.approx(trl_loss.item(), rel=1e-5), share_prompt
        for name in METRICS:
            # abs: margins are differences of log-probs rounded differently in fp32 (~1e-7).
            assert ours[name] == pytest.approx(trl_metrics[name], rel=1e-5, abs=1e-6), name


# One objective of each kind: odds ratio with NLL (orpo; sft, simpo and cpo are its terms or
# reference-free variants, tested on tiny models), a frozen reference (dpo), unpaired with KL (kto).
@pytest.mark.parametrize("objective", ["orpo", "dpo", "kto"])
def test_two_steps_on_real_pairs_are_finite(default_checkpoint, hh_pairs, tmp_path, objective):
    path = tmp_path / "pairs.parquet"
    hh_pairs.head(4).write_parquet(path)
    config = TrainConfig(  # pipelines/train/default.yaml, cut to fit a few seconds on 2 cores
        objective=objective,
        model=str(default_checkpoint),
        train_pairs=path,
        output_dir=tmp_path / "runs",
        beta=1.0,
        max_length=128,
        max_prompt_length=96,
        per_device_batch_size=2 if objective == "kto" else 1,  # kto's KL needs 2 examples
        max_steps=2,
        learning_rate=5e-5,
    )
    result = train(config)
    lines = read_metrics(result.run_dir)
    assert [line["step"] for line in lines] == [1, 2]
    for line in lines:
        assert all(math.isfinite(value) for value in line.values()), line
    assert (result.run_dir / "report.html").is_file()
