"""The prefix-shared, packed path gives the padded path's log-probs, NLL and gradients."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from orpo_pipeline.train.data import PreferenceCollator, TokenizedPair
from orpo_pipeline.train.loss import orpo_loss, pair_logps
from orpo_pipeline.train.packing import PackedPolicy, pack_pairs


def tiny_llama(attn: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_implementation=attn,
    )
    return LlamaForCausalLM(config)


def random_pairs() -> list[TokenizedPair]:
    generator = torch.Generator().manual_seed(1)

    def ids(n):
        return torch.randint(3, 50, (n,), generator=generator).tolist()

    sizes = [(5, 3, 6), (1, 7, 2), (9, 1, 1), (3, 4, 4)]
    return [TokenizedPair([1, *ids(p)], [*ids(c), 2], [*ids(r), 2]) for p, c, r in sizes]


def loss_of(logps, num_pairs):
    return orpo_loss(
        logps.chosen,
        logps.rejected,
        logps.nll_sum,
        beta=0.1,
        nll_tokens=logps.nll_tokens,
        num_pairs=num_pairs,
    ).loss


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("max_row_tokens", [None, 30, 100])
@pytest.mark.parametrize("nll_on_prompt", [True, False])
def test_packed_equals_padded(attn, max_row_tokens, nll_on_prompt):
    pairs = random_pairs()
    model = tiny_llama(attn)
    batch = PreferenceCollator(pad_token_id=0)(pairs)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    expected = pair_logps(logits, batch, nll_on_prompt=nll_on_prompt)
    loss_of(expected, 4).backward()
    expected_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    packed = pack_pairs(pairs, max_row_tokens=max_row_tokens, pad_token_id=0)
    result = PackedPolicy(model, chunk_tokens=7)(packed, nll_on_prompt=nll_on_prompt)
    loss_of(result, 4).backward()
    for got, want in zip(result, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for param, want in zip(model.parameters(), expected_grads, strict=True):
        torch.testing.assert_close(param.grad, want, rtol=1e-4, atol=1e-6)


def test_packing_saves_tokens_and_respects_the_row_budget():
    pairs = random_pairs()
    padded = PreferenceCollator(pad_token_id=0)(pairs).input_ids.numel()
    packed = pack_pairs(pairs, max_row_tokens=30, pad_token_id=0)
    assert packed.input_ids.shape[1] <= 30
    assert packed.input_ids.numel() < padded
    assert sorted(set(packed.group.tolist())) == list(range(12))
    with pytest.raises(ValueError, match="does not fit"):
        pack_pairs(pairs, max_row_tokens=10, pad_token_id=0)


def test_default_rows_are_as_wide_as_the_longest_pair_and_shared():
    pairs = [
        TokenizedPair([1, 3, 4], [5, 6, 2], [7, 2]),  # 8 tokens: a row of its own
        TokenizedPair([1], [8], [2]),  # 3 + 5 = 8: these two share the second row
        TokenizedPair([1, 3], [9, 2], [2]),
    ]
    packed = pack_pairs(pairs, max_row_tokens=None, pad_token_id=0)
    assert packed.input_ids.tolist() == [[1, 3, 4, 5, 6, 2, 7, 2], [1, 3, 9, 2, 2, 1, 8, 2]]
    assert packed.segment_ids.tolist() == [[0] * 8, [0] * 5 + [1] * 3]
