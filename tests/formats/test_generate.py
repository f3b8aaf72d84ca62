import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import orpo_pipeline.models
from orpo_pipeline.formats.generate import cache_path, model_fingerprint
from tests.formats.conftest import texts

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> "
    "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant{% endif %}"
)
WORDS = [
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
]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained in-process (no hub), with a chat template."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(
        special_tokens=[
            "<unk>",
            "<pad>",
            "<|im_start|>",
            "<|im_end|>",
            "user",
            "assistant",
            "system",
        ]
    )
    tokenizer.train_from_iterator([" ".join(WORDS)], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>", eos_token="<|im_end|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised two-layer Llama and its tokenizer, saved like a checkpoint."""
    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


ROWS = [
    {"instruction": "tell me a fact about honey", "output": "honey never spoils"},
    {"instruction": "what is the sky colour", "output": "it is blue"},
    {"instruction": "why bees", "output": "bees tell a fact"},
]


def test_model_negatives_are_generated_in_batches_and_cached(
    convert, tiny_model_dir, tmp_path, monkeypatch
):
    options = {
        "negatives": "model",
        "model": str(tiny_model_dir),
        "max_new_tokens": 6,
        "generation_batch_size": 2,
        "cache_dir": tmp_path / "cache",
    }
    first = convert(ROWS, **options)
    assert first.rows_in == first.rows_converted + first.rows_rejected == 3
    assert first.pairs.height >= 1  # a random model may repeat the reference answer
    assert set(first.pairs["source"]) == {"input.jsonl#rejected=model"}
    for chosen, rejected in texts(first):
        assert chosen != rejected
    assert all(
        word in " ".join([*WORDS, "<unk>"])
        for _, rejected in texts(first)
        for word in rejected.split()
    )

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded although every prompt is cached")

    monkeypatch.setattr(orpo_pipeline.models, "load_model", no_loading)
    second = convert(ROWS, **options)
    assert second.pairs.equals(first.pairs)
    assert second.rejects.equals(first.rejects)


def test_cache_key_follows_model_files_and_settings(tiny_model_dir, tmp_path):
    from orpo_pipeline.formats import ConvertOptions

    base = ConvertOptions(cache_dir=tmp_path)
    path = cache_path(str(tiny_model_dir), base)
    assert cache_path(str(tiny_model_dir), base) == path
    assert cache_path(str(tiny_model_dir), base.model_copy(update={"max_new_tokens": 7})) != path
    assert cache_path("some/hub-id", base) != path
    assert model_fingerprint("some/hub-id") == ["some/hub-id"]
