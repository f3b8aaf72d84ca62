"""A tiny Llama and a throwaway BPE tokenizer, built once per session and saved to disk."""

import itertools
from pathlib import Path

import polars as pl
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from orpo_pipeline.records import PAIR_SCHEMA, pair_id
from orpo_pipeline.train.config import TrainConfig

# SmolLM2's layout: <|im_end|> then a newline closes every turn.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<unk>", "<pad>", "<s>", "<|im_start|>", "<|im_end|>"]
# fmt: off
WORDS = [
    "the", "cat", "dog", "sat", "ran", "on", "a", "mat", "rug", "in", "house", "garden",
    "big", "small", "red", "blue", "quickly", "slowly", "please", "tell", "me", "how",
    "why", "what", "is", "are", "you", "I", "we", "can", "not", "should", "help", "sorry",
    "sure", "yes", "no",
]
# fmt: on


def sentence(seed: int, length: int) -> str:
    """A deterministic sentence of `length` words."""
    return " ".join(WORDS[(seed * 7 + i * 3) % len(WORDS)] for i in range(length))


def make_pairs(count: int, *, prompt_words: int = 6) -> list[dict]:
    """Canonical pairs of uneven lengths, some with a multi-turn prompt."""
    rows = []
    for i in range(count):
        prompt = [{"role": "user", "content": sentence(i, prompt_words + i % 5)}]
        if i % 3 == 0:
            prompt = [
                {"role": "user", "content": sentence(i + 50, 3)},
                {"role": "assistant", "content": sentence(i + 60, 4)},
                *prompt,
            ]
        chosen = [{"role": "assistant", "content": sentence(i + 100, 3 + i % 4)}]
        rejected = [{"role": "assistant", "content": sentence(i + 200, 2 + i % 6)}]
        rows.append(
            {
                "id": pair_id(prompt, chosen, rejected),
                "prompt": prompt,
                "chosen": chosen,
                "rejected": rejected,
                "source": "test",
                "score_chosen": None,
                "score_rejected": None,
            }
        )
    return rows


def write_pairs(rows: list[dict], path: Path) -> Path:
    """Write canonical pairs as Parquet."""
    pl.DataFrame(rows, schema=PAIR_SCHEMA).write_parquet(path)
    return path


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the test words; adds <s> by itself, like Llama."""
    corpus = [sentence(i, 12) for i in range(200)] + ["user assistant system\n"] * 20
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=SPECIAL,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", backend.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token="<unk>",
        chat_template=CHAT_TEMPLATE,
    )


def build_model(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A 2-layer Llama with hidden size 32 and tied embeddings, like SmolLM2 in miniature."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A saved tiny model + tokenizer directory, loadable with `from_pretrained`."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = build_tokenizer()
    build_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def pairs_files(tmp_path_factory) -> tuple[Path, Path]:
    """Train (16 pairs) and eval (6 pairs) Parquet files."""
    root = tmp_path_factory.mktemp("pairs")
    rows = make_pairs(22)
    return write_pairs(rows[:16], root / "train.parquet"), write_pairs(
        rows[16:], root / "eval.parquet"
    )


_names = itertools.count()


@pytest.fixture
def make_config(tiny_dir, pairs_files, tmp_path):
    """TrainConfig for the tiny model; keyword arguments override the defaults."""

    def make(**overrides) -> TrainConfig:
        train_pairs, eval_pairs = pairs_files
        settings = {
            "name": f"t{next(_names)}",
            "model": str(tiny_dir),
            "train_pairs": train_pairs,
            "eval_pairs": eval_pairs,
            "output_dir": tmp_path / "runs",
            "max_length": 64,
            "max_prompt_length": 48,
            "per_device_batch_size": 2,
            "max_steps": 2,
            "learning_rate": 1e-3,
            "num_sample_generations": 1,
            "max_new_tokens": 4,
        }
        return TrainConfig.model_validate(settings | overrides)

    return make
