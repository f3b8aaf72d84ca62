import doctest
import json
from pathlib import Path

import polars as pl
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from orpo_pipeline.errors import DataError
from orpo_pipeline.train import data
from orpo_pipeline.train.data import PreferenceCollator, read_examples, read_pairs, tokenize_pairs
from orpo_pipeline.train.policy import build_policy
from tests.train.conftest import make_pairs, write_pairs


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return AutoTokenizer.from_pretrained(tiny_dir)


def pair(prompt: str, chosen: str, rejected: str) -> dict:
    return {
        "id": "x",
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_collator_doctest_shows_exact_tensors():
    assert doctest.testmod(data, raise_on_error=True).attempted >= 3


def test_two_uneven_pairs_give_exact_ids_and_tensors(tokenizer):
    rows = [pair("the cat", "yes", "no sorry"), pair("why is the dog red", "sure", "no")]
    out = tokenize_pairs(rows, tokenizer, max_length=64, max_prompt_length=48)
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    prompts = [
        [bos, *encode(tokenizer, f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")]
        for text in ("the cat", "why is the dog red")
    ]
    # The template's newline after <|im_end|> is dropped: each response ends at one EOS.
    answers = [
        [encode(tokenizer, f"{text}<|im_end|>") for text in two]
        for two in (("yes", "no sorry"), ("sure", "no"))
    ]
    assert [(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in out.pairs] == [
        (prompts[0], *answers[0]),
        (prompts[1], *answers[1]),
    ]
    assert (out.rows, out.rejects, out.prompts_truncated, out.responses_truncated) == (
        [0, 1],
        {},
        0,
        0,
    )
    batch = PreferenceCollator(pad)(out.pairs)
    sides = [
        prompts[0] + answers[0][0],
        prompts[1] + answers[1][0],
        prompts[0] + answers[0][1],
        prompts[1] + answers[1][1],
    ]
    width = max(map(len, sides))
    expected = torch.tensor([row + [pad] * (width - len(row)) for row in sides])
    assert torch.equal(batch.input_ids, expected)
    assert batch.attention_mask.sum(1).tolist() == [len(row) for row in sides]
    assert batch.completion_mask.sum(1).tolist() == [
        len(a) for a in (answers[0][0], answers[1][0], answers[0][1], answers[1][1])
    ]
    for row, mask in zip(batch.input_ids, batch.attention_mask, strict=True):
        real = row[mask.bool()].tolist()
        assert real.count(bos) == 1 and real[0] == bos
        assert real.count(eos) == 1 + 1 and real[-1] == eos  # prompt's user turn + the answer
    for p in out.pairs:
        assert p.chosen_ids.count(eos) == p.rejected_ids.count(eos) == 1
        assert p.chosen_ids[-1] == p.rejected_ids[-1] == eos


def test_no_bos_when_the_tokenizer_does_not_add_one(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    no_bos = AutoTokenizer.from_pretrained(tmp_path)
    no_bos._tokenizer.post_processor = None  # SmolLM2 and Qwen: nothing added by the tokenizer
    out = tokenize_pairs(
        [pair("the cat", "yes", "no")], no_bos, max_length=64, max_prompt_length=48
    )
    assert tokenizer.bos_token_id not in out.pairs[0].prompt_ids


def test_long_prompts_lose_their_oldest_tokens_but_keep_bos(tokenizer):
    long_prompt = " ".join(["cat dog"] * 40)
    [full] = tokenize_pairs(
        [pair(long_prompt, "yes", "no")], tokenizer, max_length=512, max_prompt_length=512
    ).pairs
    out = tokenize_pairs(
        [pair(long_prompt, "yes", "no")], tokenizer, max_length=40, max_prompt_length=20
    )
    [cut] = out.pairs
    assert out.prompts_truncated == 1
    assert cut.prompt_ids == [tokenizer.bos_token_id, *full.prompt_ids[-19:]]
    assert cut.chosen_ids == full.chosen_ids  # the generation prompt and answers are kept


def test_responses_are_cut_to_fit_and_unusable_rows_are_rejected_with_reasons(tokenizer):
    rows = [
        pair("the cat", "yes yes yes yes yes", "no no no no"),  # cut, still different
        pair("the cat", "sorry the cat sat", "sorry the cat ran"),  # identical once cut
        pair(" ".join(["dog"] * 30), "yes", "no"),  # prompt fills max_length
    ]
    [prompt_len] = {
        len(p.prompt_ids)
        for p in tokenize_pairs(rows[:2], tokenizer, max_length=512, max_prompt_length=512).pairs
    }
    out = tokenize_pairs(
        rows, tokenizer, max_length=prompt_len + 2, max_prompt_length=prompt_len + 2
    )
    assert out.rows == [0]
    assert out.rejects == {"chosen_equals_rejected": 1, "no_room_for_response": 1}
    assert len(out.pairs[0].prompt_ids) + len(out.pairs[0].chosen_ids) == prompt_len + 2
    assert out.responses_truncated == 2


def test_shared_prompt_policy_gives_the_padded_policys_logps(tiny_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    pairs = tokenize_pairs(make_pairs(5), tokenizer, max_length=64, max_prompt_length=48).pairs
    padded, padded_collate = build_policy(model, share_prompt=False, pad_token_id=0)
    shared, shared_collate = build_policy(model, share_prompt=True, pad_token_id=0)
    assert shared_collate(pairs).input_ids.numel() < padded_collate(pairs).input_ids.numel()
    with torch.no_grad():
        for on_prompt in (True, False):
            a = padded(padded_collate(pairs), nll_on_prompt=on_prompt)
            b = shared(shared_collate(pairs), nll_on_prompt=on_prompt)
            assert a.nll_tokens == sum(p.nll_tokens(nll_on_prompt=on_prompt) for p in pairs)
            for x, y in zip(a, b, strict=True):
                torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


def test_read_pairs_names_what_is_wrong(tmp_path: Path):
    with pytest.raises(DataError, match=r"\.parquet or \.jsonl"):
        read_pairs(tmp_path / "pairs.csv")
    with pytest.raises(DataError, match="not found"):
        read_pairs(tmp_path / "missing.parquet")
    pl.DataFrame({"id": ["a"], "prompt": ["hi"]}).write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"no column\(s\) \['chosen', 'rejected'\]"):
        read_pairs(tmp_path / "bad.parquet")
    path = write_pairs(make_pairs(3), tmp_path / "ok.parquet")
    pl.read_parquet(path).write_ndjson(tmp_path / "ok.jsonl")
    assert read_pairs(tmp_path / "ok.jsonl", limit=2) == read_pairs(path)[:2]


def test_read_examples_unpairs_pairs_and_names_bad_rows(tmp_path: Path):
    pairs = read_pairs(write_pairs(make_pairs(2), tmp_path / "pairs.parquet"))
    unpaired = read_examples(tmp_path / "pairs.parquet", "labelled")
    assert [(row["completion"], row["label"]) for row in unpaired] == [
        (pair[answer], answer == "chosen") for pair in pairs for answer in ("chosen", "rejected")
    ]
    rows = [
        {"prompt": "hi", "completion": "hello", "label": True},
        {"prompt": "hi", "completion": "go away", "label": "no"},
    ]
    path = tmp_path / "unpaired.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DataError, match=r"unpaired.jsonl: line 2: wrong_type: field 'label'"):
        read_examples(path, "labelled")
