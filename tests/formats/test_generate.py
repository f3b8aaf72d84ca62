import shutil

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import orpo_pipeline.models
from orpo_pipeline.formats.generate import (
    SampleCache,
    Sampling,
    chat_ids,
    decode,
    model_sha256,
    sample_responses,
)
from tests.formats.conftest import TEST_DATA, texts

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
    digest = model_sha256(str(tiny_model_dir))
    base = SampleCache(tmp_path, digest, Sampling())
    assert SampleCache(tmp_path, digest, Sampling()).directory == base.directory
    changed = Sampling(max_new_tokens=7)
    assert SampleCache(tmp_path, digest, changed).directory != base.directory
    assert model_sha256("some/hub-id") != digest
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert model_sha256(str(copy)) == digest  # content, not path or mtime
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    assert model_sha256(str(copy)) != digest


def _loaded(folder):
    from orpo_pipeline.models import load_model, load_tokenizer

    return load_model(str(folder)), load_tokenizer(str(folder))


def test_greedy_decoding_equals_transformers_generate(tiny_model_dir):
    model, tokenizer = _loaded(tiny_model_dir)
    prompts = [[{"role": "user", "content": r["instruction"]}] for r in ROWS]
    ids = [chat_ids(tokenizer, p) for p in prompts]
    ours = decode(model, tokenizer, ids, Sampling(max_new_tokens=8), seeds=[0, 0, 0])
    for row, sample in zip(ids, ours, strict=True):
        out = model.generate(
            torch.tensor([row]), max_new_tokens=8, do_sample=False, pad_token_id=0
        )[0, len(row) :].tolist()
        eos = tokenizer.eos_token_id
        expected = out[: out.index(eos)] if eos in out else out
        assert sample.num_tokens == len(expected)
        assert sample.text == tokenizer.decode(expected, skip_special_tokens=True).strip()
        assert sample.finish_reason == ("stop" if eos in out else "length")


def test_sampling_is_seeded_per_row_not_per_batch(tiny_model_dir):
    model, tokenizer = _loaded(tiny_model_dir)
    ids = [chat_ids(tokenizer, [{"role": "user", "content": r["instruction"]}]) for r in ROWS]
    sampling = Sampling(max_new_tokens=10, temperature=1.5, top_p=0.95, seed=3)
    together = decode(model, tokenizer, ids, sampling, seeds=[11, 12, 13])
    torch.manual_seed(999)  # the global RNG plays no part
    alone = [
        decode(model, tokenizer, [i], sampling, seeds=[s])[0]
        for i, s in zip(ids, [11, 12, 13], strict=True)
    ]
    assert together == alone
    reseeded = decode(model, tokenizer, ids, sampling, seeds=[21, 22, 23])
    assert reseeded != together


def test_sample_responses_cache_is_sharded_and_reused(tiny_model_dir, tmp_path, monkeypatch):
    prompts = [[{"role": "user", "content": r["instruction"]}] for r in ROWS]
    sampling = Sampling(max_new_tokens=6, temperature=1.0, seed=1)
    first = sample_responses(
        prompts, str(tiny_model_dir), sampling, num_samples=3, batch_size=4, cache_dir=tmp_path
    )
    assert [len(r) for r in first] == [3, 3, 3]
    assert len(list(tmp_path.glob("samples/*/*.jsonl"))) == 3  # 9 jobs in batches of 4
    assert not list(tmp_path.glob("samples/*/.*"))  # no temp files left

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded although every response is cached")

    monkeypatch.setattr(orpo_pipeline.models, "load_model", no_loading)
    again = sample_responses(
        prompts[::-1], str(tiny_model_dir), sampling, num_samples=3, cache_dir=tmp_path
    )
    assert again == first[::-1]


# Issue 13 item 1: generation never starts by surprise.

ALPACA_EVAL_OUTPUTS = TEST_DATA / "alpaca-eval-cut" / "outputs.json"


def test_sft_file_without_options_needs_no_model(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from orpo_pipeline.cli import cli

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded without --negatives model")

    monkeypatch.setattr(orpo_pipeline.models, "load_model", no_loading)
    out = tmp_path / "pairs.parquet"
    done = CliRunner().invoke(cli, ["convert", str(ALPACA_EVAL_OUTPUTS), "-o", str(out)])
    assert done.exit_code == 0, done.output
    assert "format          alpaca (sft)" in done.output
    assert "pairs out       12" in done.output
    import polars as pl

    assert set(pl.read_parquet(out)["source"]) == {"outputs.json#rejected=other_prompt"}


def test_generation_says_what_it_runs_and_how_long(tiny_model_dir, tmp_path):
    from click.testing import CliRunner

    from orpo_pipeline.cli import cli

    args = [
        "convert",
        str(ALPACA_EVAL_OUTPUTS),
        "-o",
        str(tmp_path / "pairs.parquet"),
        "--negatives",
        "model",
        "--model",
        str(tiny_model_dir),
        "--max-new-tokens",
        "4",
        "--generation-batch-size",
        "5",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 0, done.output
    assert (
        f"generating rejected answers with {tiny_model_dir} for 12 prompts (0 cached), "
        "5 per batch, up to 4 new tokens each" in done.stderr
    )
    assert "first batch: 5 prompts in " in done.stderr
    assert "for the other 7" in done.stderr
    again = CliRunner().invoke(cli, args)  # all cached: nothing to announce
    assert again.exit_code == 0, again.output
    assert "generating" not in again.stderr


def tty_convert(tiny_model_dir, tmp_path, monkeypatch, answer: bytes, **knobs):
    """Convert the AlpacaEval outputs with a model, stdin and stderr on a real terminal."""
    import os
    import pty
    import select
    import sys

    from orpo_pipeline.formats import ConvertOptions, convert_files, sft

    monkeypatch.setattr(sft, "CONFIRM_OVER_S", 0.0)  # any estimate counts as long
    leader, follower = pty.openpty()
    os.write(leader, answer)
    terminal_in = os.fdopen(os.dup(follower), "r")
    terminal_out = os.fdopen(follower, "w")
    monkeypatch.setattr(sys, "stdin", terminal_in)
    monkeypatch.setattr(sys, "stderr", terminal_out)
    options = ConvertOptions(
        negatives="model",
        model=str(tiny_model_dir),
        max_new_tokens=4,
        generation_batch_size=5,
        cache_dir=tmp_path / "cache",
        **knobs,
    )
    try:
        return convert_files([ALPACA_EVAL_OUTPUTS], options)
    finally:
        terminal_out.flush()
        shown = b""
        while select.select([leader], [], [], 0.5)[0]:  # a pty read returns one chunk
            shown += os.read(leader, 65536)
        monkeypatch.undo()
        terminal_in.close()
        terminal_out.close()
        os.close(leader)
        tty_convert.shown = shown.decode()


def test_a_long_estimate_asks_on_a_terminal_and_no_stops(tiny_model_dir, tmp_path, monkeypatch):
    from orpo_pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="generation stopped at your request"):
        tty_convert(tiny_model_dir, tmp_path, monkeypatch, b"n\n")
    assert "continue generating? [y/N]" in tty_convert.shown
    (shard,) = (tmp_path / "cache" / "samples").glob("*/*.jsonl")
    assert len(shard.read_text().splitlines()) == 5  # the first batch is kept for the rerun


def test_yes_answers_the_question(tiny_model_dir, tmp_path, monkeypatch):
    result = tty_convert(tiny_model_dir, tmp_path, monkeypatch, b"y\n")
    assert "continue generating?" in tty_convert.shown
    assert result.rows_in == 12
    skipped = tty_convert(tiny_model_dir, tmp_path / "other", monkeypatch, b"", yes=True)
    assert "continue generating?" not in tty_convert.shown
    assert skipped.rows_in == 12
