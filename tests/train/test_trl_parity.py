"""Our loss and metrics equal TRL 1.16's ORPOTrainer on the same model and the same pairs."""

import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from orpo_pipeline.train.data import tokenize_pairs
from orpo_pipeline.train.loss import batch_loss, metric_sums, metrics_from_sums
from orpo_pipeline.train.policy import build_policy
from tests.train.conftest import CHAT_TEMPLATE, make_pairs

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
trl_orpo = pytest.importorskip("trl.experimental.orpo")

METRICS = (  # TRL returns the loss itself, not as a metric
    "nll_loss",
    "log_odds_ratio",
    "log_odds_chosen",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


def test_loss_and_every_metric_equal_trl(tiny_dir, tmp_path):
    from datasets import Dataset

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    # TRL appends EOS after the template's trailing newline; without that newline TRL's ids and
    # ours coincide, so both sides see the very same tokens.
    tokenizer.chat_template = CHAT_TEMPLATE.replace("<|im_end|>\n", "<|im_end|>")
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    rows = make_pairs(4)
    trainer = trl_orpo.ORPOTrainer(
        model=model,
        args=trl_orpo.ORPOConfig(
            output_dir=str(tmp_path),
            bf16=False,
            use_cpu=True,
            gradient_checkpointing=False,
            max_length=128,
            beta=0.1,
            per_device_eval_batch_size=4,
            report_to=[],
            remove_unused_columns=False,
        ),
        train_dataset=Dataset.from_list(rows).select_columns(["prompt", "chosen", "rejected"]),
        eval_dataset=Dataset.from_list(rows).select_columns(["prompt", "chosen", "rejected"]),
        processing_class=tokenizer,
    )
    trl_batch = next(iter(trainer.get_eval_dataloader()))  # the 4 pairs, in order
    with torch.no_grad():
        trl_loss, trl_metrics = trainer.get_batch_loss_metrics(trainer.model, trl_batch)

    tokenized = tokenize_pairs(rows, tokenizer, max_length=128, max_prompt_length=128)
    for i, p in enumerate(tokenized.pairs):
        for side, ids in (("chosen", p.chosen_ids), ("rejected", p.rejected_ids)):
            real = trl_batch[f"{side}_attention_mask"][i].bool()
            assert trl_batch[f"{side}_input_ids"][i][real].tolist() == p.prompt_ids + ids

    for share_prompt in (False, True):  # TRL's layout, and ours
        policy, collate = build_policy(
            model, share_prompt=share_prompt, pad_token_id=tokenizer.pad_token_id
        )
        with torch.no_grad():
            logps = policy(collate(tokenized.pairs), nll_on_prompt=True)
            out = batch_loss(logps, beta=0.1)
        ours = metrics_from_sums(metric_sums(logps, out).tolist(), beta=0.1)
        assert out.loss.item() == pytest.approx(trl_loss.item(), rel=1e-5)
        assert ours["loss"] == pytest.approx(trl_loss.item(), rel=1e-5)
        for name in METRICS:
            # abs: log-odds and margins are differences of ~-5.7-nat fp32 log-probs, whose
            # rounding (~1e-7) differs between TRL's log_softmax and our logsumexp.
            assert ours[name] == pytest.approx(trl_metrics[name], rel=1e-5, abs=1e-6), name
