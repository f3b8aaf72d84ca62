"""Tiny models built in-process for the AI-feedback tests: a chat LM, a reward model, a prompt."""

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> "
    "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant{% endif %}"
)
WORDS = [
    "A",
    "B",
    "which",
    "is",
    "better",
    "answer",
    "tell",
    "me",
    "a",
    "fact",
    "about",
    "honey",
    "bees",
    "sky",
    "colour",
    "blue",
    "never",
    "spoils",
    "it",
    "is",
    "what",
    "the",
    "why",
    "how",
    "do",
    "you",
    "make",
    "bread",
    "water",
    "flour",
    "salt",
    "yes",
    "no",
    "maybe",
]
JUDGE_PROMPT = "which is better {conversation} A {response_a} B {response_b} answer A or B"


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with a chat template; 'A' and 'B' are single tokens."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    specials = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>", "user", "assistant", "system"]
    tokenizer.train_from_iterator(
        [" ".join(WORDS)], trainers.WordLevelTrainer(special_tokens=specials)
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>", eos_token="<|im_end|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _config(tokenizer: PreTrainedTokenizerFast, **extra) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **extra,
    )


def save_causal_lm(folder: Path, seed: int) -> Path:
    """A random two-layer Llama chat model saved with its tokenizer."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    LlamaForCausalLM(_config(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    return save_causal_lm(tmp_path_factory.mktemp("tiny-lm"), seed=0)


@pytest.fixture(scope="session")
def tiny_lm_other(tmp_path_factory) -> Path:
    """A second random model of the same shape (a 'trained policy' for implicit reward)."""
    return save_causal_lm(tmp_path_factory.mktemp("tiny-lm-other"), seed=1)


@pytest.fixture(scope="session")
def tiny_rm(tmp_path_factory) -> Path:
    """A random Llama reward model (one logit) saved with its tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-rm")
    tokenizer = tiny_tokenizer()
    torch.manual_seed(2)
    LlamaForSequenceClassification(_config(tokenizer, num_labels=1)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def judge_prompt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("judge") / "judge_prompt.txt"
    path.write_text(JUDGE_PROMPT)
    return path


PROMPTS = [
    "tell me a fact about honey",
    "what is the sky colour",
    "why bees",
    "how do you make bread",
    "is water blue",
    "tell me about salt",
]


def write_pairs(path: Path, count: int) -> Path:
    """`count` TRL-style pairs with distinct prompts made of the tiny vocabulary."""
    words = WORDS[2:]
    lines = []
    for i in range(count):
        prompt = (
            f"{PROMPTS[i % len(PROMPTS)]} {words[i % len(words)]} {words[(i * 7) % len(words)]}"
        )
        prompt += f" {' '.join(words[: i // 20 + 1])}" if i >= len(PROMPTS) else ""
        row = {"prompt": prompt, "chosen": "honey never spoils", "rejected": "no"}
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n")
    return path
