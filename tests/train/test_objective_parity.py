"""Each objective's loss and metrics equal TRL 1.16's on the same batch, weights and token ids.

TRL tokenizes the pairs itself; we then feed TRL's own token ids through both of our layouts
(prefix-shared and padded), so the comparison is of the losses alone.
"""

import copy
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from orpo_pipeline.train.data import Feed, TokenizedPair
from orpo_pipeline.train.objective import LossBatch
from orpo_pipeline.train.objectives.cpo import Cpo, Simpo
from orpo_pipeline.train.objectives.dpo import Dpo
from orpo_pipeline.train.objectives.kto import Kto
from orpo_pipeline.train.objectives.sft import Sft
from orpo_pipeline.train.policy import build_policy
from tests.train.conftest import make_pairs

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

REWARD_METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)
COMMON = {"bf16": False, "use_cpu": True, "report_to": [], "per_device_eval_batch_size": 4}


def close(ours: float, theirs: float) -> bool:
    # abs: margins and log-ratios are differences of fp32 sums whose rounding (~1e-6 on sums of
    # ~-50 nats) differs between TRL's log_softmax and our logsumexp.
    return ours == pytest.approx(theirs, rel=1e-5, abs=1e-5)


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` with small seeded noise on every weight: a reference that differs."""
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return other


def our_logps(model, pairs: list[TokenizedPair], *, share_prompt: bool, pad_token_id: int):
    policy, collate = build_policy(model, share_prompt=share_prompt, pad_token_id=pad_token_id)
    with torch.no_grad():
        return policy(collate(pairs), nll_on_prompt=False)


def dataset(rows):
    columns = ["prompt", "chosen", "rejected"]
    return datasets.Dataset.from_list(rows).select_columns(columns)


@pytest.mark.parametrize(
    ("loss_type", "rpo_alpha"),
    [("sigmoid", None), ("ipo", None), ("hinge", None), ("sigmoid", 0.7)],
)
def test_dpo_equals_trl_dpo_trainer(tiny_dir, tmp_path, loss_type, rpo_alpha):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    reference = perturbed(model)
    ours_model, ours_reference = copy.deepcopy(model), copy.deepcopy(reference)
    rows = make_pairs(4)
    args = trl.DPOConfig(
        output_dir=str(tmp_path),
        beta=0.3,
        loss_type=[loss_type] if rpo_alpha is None else [loss_type, "sft"],
        loss_weights=None if rpo_alpha is None else [1.0, rpo_alpha],
        max_length=128,
        **COMMON,
    )
    trainer = trl.DPOTrainer(
        model=model,
        ref_model=reference,
        args=args,
        train_dataset=dataset(rows),
        eval_dataset=dataset(rows),
        processing_class=tokenizer,
    )
    trainer.model.eval()
    batch = next(iter(trainer.get_eval_dataloader()))  # the 4 pairs, in order
    with torch.no_grad():
        trl_loss = trainer._compute_loss(trainer.model, batch, return_outputs=False).item()
    trl_metrics = {name: values[-1] for name, values in trainer._metrics["eval"].items()}
    pairs = [
        TokenizedPair(row["prompt_ids"], row["chosen_ids"], row["rejected_ids"])
        for row in trainer.eval_dataset
    ]

    objective = Dpo(beta=0.3, loss_type=loss_type, rpo_alpha=rpo_alpha)
    for share_prompt in (False, True):
        pad = tokenizer.pad_token_id
        logps = our_logps(ours_model, pairs, share_prompt=share_prompt, pad_token_id=pad)
        ref = our_logps(ours_reference, pairs, share_prompt=share_prompt, pad_token_id=pad)
        out = objective.loss(logps, LossBatch.alone(logps, ref))
        ours = objective.metrics(out.sums.tolist())
        assert close(out.loss.item(), trl_loss), share_prompt
        assert close(ours["loss"], trl_loss), share_prompt
        for name in REWARD_METRICS:
            assert close(ours[name], trl_metrics[name]), (share_prompt, name)


def cpo_pairs(trainer) -> list[TokenizedPair]:
    """TRL's token ids of each pair: the labels are -100 over the prompt."""
    pairs = []
    for row in trainer.eval_dataset:
        prompt_len = sum(label == -100 for label in row["chosen_labels"])
        assert prompt_len == sum(label == -100 for label in row["rejected_labels"])
        prompt = row["chosen_input_ids"][:prompt_len]
        assert row["rejected_input_ids"][:prompt_len] == prompt
        pairs.append(
            TokenizedPair(
                prompt, row["chosen_input_ids"][prompt_len:], row["rejected_input_ids"][prompt_len:]
            )
        )
    return pairs


@pytest.mark.parametrize(
    ("loss_type", "cpo_alpha"),
    [("sigmoid", 1.0), ("hinge", 0.5), ("ipo", 1.0), ("simpo", 0.0), ("simpo", 0.5)],
)
def test_cpo_and_simpo_equal_trl_cpo_trainer(tiny_dir, tmp_path, loss_type, cpo_alpha):
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    ours_model = copy.deepcopy(model)
    rows = make_pairs(4)
    beta = 2.0 if loss_type == "simpo" else 0.2
    trainer = CPOTrainer(
        model=model,
        args=CPOConfig(
            output_dir=str(tmp_path),
            beta=beta,
            loss_type=loss_type,
            cpo_alpha=cpo_alpha,
            simpo_gamma=0.8,
            max_length=128,
            remove_unused_columns=False,
            gradient_checkpointing=False,
            **COMMON,
        ),
        train_dataset=dataset(rows),
        eval_dataset=dataset(rows),
        processing_class=tokenizer,
    )
    batch = next(iter(trainer.get_eval_dataloader()))
    with torch.no_grad():
        trl_loss, trl_metrics = trainer.get_batch_loss_metrics(trainer.model, batch, "eval")
    pairs = cpo_pairs(trainer)

    if loss_type == "simpo":
        objective = Simpo(beta=beta, cpo_alpha=cpo_alpha, simpo_gamma=0.8)
    else:
        objective = Cpo(beta=beta, loss_type=loss_type, cpo_alpha=cpo_alpha)
    names = REWARD_METRICS + (("nll_loss",) if cpo_alpha else ())  # TRL logs 0 without the NLL
    for share_prompt in (False, True):
        logps = our_logps(
            ours_model, pairs, share_prompt=share_prompt, pad_token_id=tokenizer.pad_token_id
        )
        out = objective.loss(logps, LossBatch.alone(logps))
        ours = objective.metrics(out.sums.tolist())
        assert close(out.loss.item(), trl_loss.item()), share_prompt
        for name in names:
            assert close(ours[name], trl_metrics[f"eval_{name}"]), (share_prompt, name)


def test_sft_equals_trl_sft_trainer(tiny_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    ours_model = copy.deepcopy(model)
    rows = [{"prompt": row["prompt"], "completion": row["chosen"]} for row in make_pairs(4)]
    trainer = trl.SFTTrainer(
        model=model,
        args=trl.SFTConfig(output_dir=str(tmp_path), max_length=128, **COMMON),
        train_dataset=datasets.Dataset.from_list(rows),
        eval_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    trainer.model.eval()
    batch = next(iter(trainer.get_eval_dataloader()))
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch).item()
    pairs = []
    for row in trainer.eval_dataset:
        start = next(i for i, label in enumerate(row["labels"]) if label != -100)
        assert all(label != -100 for label in row["labels"][start:])
        pairs.append(TokenizedPair(row["input_ids"][:start], row["input_ids"][start:], []))

    objective = Sft()
    for share_prompt in (False, True):
        logps = our_logps(
            ours_model, pairs, share_prompt=share_prompt, pad_token_id=tokenizer.pad_token_id
        )
        out = objective.loss(logps, LossBatch.alone(logps))
        assert close(out.loss.item(), trl_loss), share_prompt
        assert close(objective.metrics(out.sums.tolist())["loss"], trl_loss), share_prompt


@pytest.mark.parametrize(("desirable_weight", "undesirable_weight"), [(1.0, 1.0), (1.3, 0.8)])
def test_kto_equals_trl_kto_trainer(tiny_dir, tmp_path, desirable_weight, undesirable_weight):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    reference = perturbed(model)
    ours_model, ours_reference = copy.deepcopy(model), copy.deepcopy(reference)
    labels = [True, False, False, True, True]
    rows = [  # unpaired: 5 prompts, each with one answer, desirable or not
        {
            "prompt": row["prompt"],
            "completion": row["chosen" if label else "rejected"],
            "label": label,
        }
        for row, label in zip(make_pairs(5), labels, strict=True)
    ]
    args = trl.KTOConfig(
        output_dir=str(tmp_path),
        beta=0.3,
        desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight,
        max_length=128,
        per_device_train_batch_size=5,  # the KL completions rotate within blocks of this size
        **COMMON | {"per_device_eval_batch_size": 5},
    )
    trainer = trl.KTOTrainer(
        model=model,
        ref_model=reference,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        eval_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    trainer.model.eval()
    batch = next(iter(trainer.get_eval_dataloader()))  # the 5 examples, in order
    with torch.no_grad():
        trl_loss = trainer._compute_loss(trainer.model, batch, return_outputs=False).item()
    trl_metrics = {name: values[-1] for name, values in trainer._metrics["eval"].items()}
    examples = [
        TokenizedPair(r["prompt_ids"], r["completion_ids"], []) for r in trainer.eval_dataset
    ]
    feed = Feed(examples, labels, kl=True)
    pairs, keys = feed.arrange(range(5))
    # TRL's KL batch: (x_1, y_5), (x_2, y_1), ..., (x_5, y_4); ours forwards the same pairs.
    assert [pair.rejected_ids for pair in pairs] == trainer.eval_dataset["KL_completion_ids"]
    assert keys == [(0, 4), (1, 0), (2, 1), (3, 2), (4, 3)]

    objective = Kto(
        beta=0.3, desirable_weight=desirable_weight, undesirable_weight=undesirable_weight
    )
    names = (
        "kl",
        *(f"{kind}/{side}" for kind in ("rewards", "logps") for side in ("chosen", "rejected")),
        "rewards/margins",
    )
    for share_prompt in (False, True):
        pad = tokenizer.pad_token_id
        logps = our_logps(ours_model, pairs, share_prompt=share_prompt, pad_token_id=pad)
        ref = our_logps(ours_reference, pairs, share_prompt=share_prompt, pad_token_id=pad)
        out = objective.loss(logps, LossBatch.alone(logps, ref, feed.label_tensor(range(5))))
        ours = objective.metrics(out.sums.tolist())
        assert close(out.loss.item(), trl_loss), share_prompt
        assert close(ours["loss"], trl_loss), share_prompt
        assert trl_metrics["kl"] > 0  # the reference differs: the KL term is exercised
        for name in names:
            assert close(ours[name], trl_metrics[name]), (share_prompt, name)
