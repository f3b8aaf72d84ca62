"""Gradient checkpointing gives the same loss and gradients while keeping fewer activations."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from orpo_pipeline.train.config import LoraConfig
from orpo_pipeline.train.data import tokenize_pairs
from orpo_pipeline.train.loop import _add_lora, train
from orpo_pipeline.train.loss import batch_loss
from orpo_pipeline.train.policy import build_policy
from tests.train.conftest import make_pairs
from tests.train.test_loop import train_lines

LORA = LoraConfig(r=4, alpha=8, dropout=0.2)  # dropout: the recompute must replay its masks


def loss_grads_and_saved_bytes(tiny_dir, *, share_prompt, lora, checkpointing):
    """One forward and backward on 4 pairs: loss, gradients by name, bytes kept for backward."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    if lora is not None:
        torch.manual_seed(0)  # same adapter initialisation on both sides
        model = _add_lora(model, lora)
        for name, param in model.named_parameters():  # B starts at zero: make it matter
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.1)
    model.train()
    policy, collate = build_policy(
        model,
        share_prompt=share_prompt,
        pad_token_id=tokenizer.pad_token_id,
        gradient_checkpointing=checkpointing,
    )
    pairs = tokenize_pairs(make_pairs(4), tokenizer, max_length=64, max_prompt_length=48).pairs
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logps = policy(collate(pairs), nll_on_prompt=True)
        out = batch_loss(logps, beta=0.1)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return out.loss.item(), grads, sum(saved)


@pytest.mark.parametrize("share_prompt", [True, False], ids=["shared-prompt", "padded"])
@pytest.mark.parametrize("lora", [None, LORA], ids=["full", "lora"])
def test_checkpointing_keeps_loss_and_grads_and_saves_activations(tiny_dir, share_prompt, lora):
    settings = {"share_prompt": share_prompt, "lora": lora}
    loss, grads, kept = loss_grads_and_saved_bytes(tiny_dir, checkpointing=False, **settings)
    loss_ckpt, grads_ckpt, kept_ckpt = loss_grads_and_saved_bytes(
        tiny_dir, checkpointing=True, **settings
    )
    assert kept_ckpt < 0.7 * kept  # the decoder layers' activations are recomputed instead
    assert loss_ckpt == pytest.approx(loss, rel=1e-6)
    assert grads.keys() == grads_ckpt.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_training_with_checkpointing_matches_training_without(make_config):
    settings = {"eval_pairs": None, "max_steps": 2, "lora": {"r": 4, "alpha": 8}}
    plain = train(make_config(**settings))
    checkpointed = train(make_config(gradient_checkpointing=True, **settings))
    for a, b in zip(train_lines(plain.run_dir), train_lines(checkpointed.run_dir), strict=True):
        for name in a:
            assert a[name] == pytest.approx(b[name], rel=1e-5, abs=1e-7), name
