"""The GPU path's pieces on CPU: shape buckets, the FlexAttention block mask, token-budget
batches, prefetched batches and compiled decoder layers; each leaves the loss unchanged.

Tests marked `gpu` run the same checks on CUDA (`benchmarks/gpu_check.sh`)."""

import itertools
import random

import pytest
import torch
from torch.nn.attention.flex_attention import create_mask

from orpo_pipeline.errors import ConfigError
from orpo_pipeline.train.data import (
    PreferenceCollator,
    TokenizedPair,
    prefetch_to_device,
    token_budget_batches,
)
from orpo_pipeline.train.loss import batch_loss, pair_logps
from orpo_pipeline.train.packing import PackedPolicy, pack_pairs
from orpo_pipeline.train.policy import PaddedPolicy, build_policy
from tests.test_packing import random_pairs, tiny_llama


def long_tailed_pairs(count: int, seed: int = 0) -> list[TokenizedPair]:
    rng = random.Random(seed)

    def ids(n):
        return [rng.randrange(3, 50) for _ in range(n)]

    return [
        TokenizedPair([1, *ids(rng.choice([3, 10, 40, 150]))], ids(rng.randint(1, 30)), ids(5))
        for _ in range(count)
    ]


def loss_and_grads(model, policy, batch, nll_on_prompt=True):
    model.zero_grad()
    logps = policy(batch, nll_on_prompt=nll_on_prompt)
    loss = batch_loss(logps, beta=0.1).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("nll_on_prompt", [True, False])
def test_bucket_padding_leaves_loss_and_gradients_unchanged(nll_on_prompt):
    pairs = random_pairs()
    model = tiny_llama("sdpa")
    policy = PackedPolicy(model, chunk_tokens=7)
    tight = pack_pairs(pairs, max_row_tokens=27, pad_token_id=0)
    padded = pack_pairs(pairs, max_row_tokens=27, pad_token_id=0, bucket_tokens=16)
    assert tight.input_ids.shape == (3, 27)
    assert padded.input_ids.shape == (4, 32)  # a row of padding only, and padded row ends
    want_loss, want_grads = loss_and_grads(model, policy, tight, nll_on_prompt)
    got_loss, got_grads = loss_and_grads(model, policy, padded, nll_on_prompt)
    torch.testing.assert_close(got_loss, want_loss, rtol=0, atol=1e-6)
    for got, want in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)

    padded_layout = PaddedPolicy(model)
    want_loss, _ = loss_and_grads(model, padded_layout, PreferenceCollator(0)(pairs))
    batch = PreferenceCollator(0, bucket_tokens=16)(pairs)
    assert batch.input_ids.shape[1] == 16
    got_loss, _ = loss_and_grads(model, padded_layout, batch)
    torch.testing.assert_close(got_loss, want_loss, rtol=0, atol=1e-6)


def test_buckets_make_shapes_repeat():
    pairs = long_tailed_pairs(400)
    rng = random.Random(1)
    shapes_tight, shapes_bucketed = set(), set()
    for _ in range(60):
        batch = rng.sample(pairs, 8)
        shapes_tight.add(pack_pairs(batch, max_row_tokens=None, pad_token_id=0).input_ids.shape)
        rows, width = pack_pairs(
            batch, max_row_tokens=None, pad_token_id=0, bucket_tokens=128
        ).input_ids.shape
        assert width % 128 == 0 and rows & (rows - 1) == 0
        shapes_bucketed.add((rows, width))
    # widths 128 or 256 and 1, 2, 4 or 8 rows: at most 8 shapes where tight packing has dozens
    assert len(shapes_bucketed) <= 8 < len(shapes_tight)


def test_block_mask_is_the_dense_mask():
    pairs = long_tailed_pairs(6, seed=3)
    batch = pack_pairs(pairs, max_row_tokens=None, pad_token_id=0, bucket_tokens=128)
    rows, width = batch.input_ids.shape
    dense = batch.attention_mask(torch.float32)[:, 0] == 0  # (R, T, T) allowed
    block_mask = batch.block_mask()
    assert block_mask.shape == (rows, 1, width, width)
    from_mod = create_mask(block_mask.mask_mod, rows, None, width, width, device="cpu")[:, 0]
    assert torch.equal(from_mod, dense)
    # Block sparsity: a 128 x 128 block is computed exactly when some pair in it may attend.
    blocks = dense.unflatten(1, (-1, 128)).unflatten(3, (-1, 128)).any(dim=(2, 4))
    assert torch.equal(block_mask.to_dense()[:, 0].bool(), blocks)
    # The rules themselves: rejected tokens never see chosen ones, pairs never see each other.
    branch, segment = batch.branch[0], batch.segment_ids[0]
    rejected, chosen = branch == 2, branch == 1
    assert not dense[0][rejected][:, chosen].any()
    other_pair = segment[:, None] != segment[None, :]
    off_diagonal = ~torch.eye(width, dtype=torch.bool)
    assert not (dense[0] & other_pair & off_diagonal).any()


def test_flex_attention_forward_equals_sdpa_on_cpu():
    """FlexAttention (compiled by transformers) on CPU: the same loss as SDPA with the 4-D mask,
    within 1e-6 in fp32. Forward only: torch has no FlexAttention backward on CPU."""
    pairs = long_tailed_pairs(8, seed=5)
    batch = pack_pairs(pairs, max_row_tokens=None, pad_token_id=0, bucket_tokens=128)
    model = tiny_llama("sdpa")
    policy = PackedPolicy(model)
    with torch.no_grad():
        want = policy(batch, nll_on_prompt=True)
        model.set_attn_implementation("flex_attention")
        got = policy(batch, nll_on_prompt=True)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        batch_loss(got, beta=0.1).loss, batch_loss(want, beta=0.1).loss, rtol=0, atol=1e-6
    )


def test_auto_settings_follow_the_device():
    pairs = long_tailed_pairs(8, seed=2)
    cpu_model = tiny_llama("sdpa")
    _, collate = build_policy(cpu_model, share_prompt=True, pad_token_id=0, device_type="cpu")
    assert cpu_model.config._attn_implementation == "sdpa"
    tight = collate(pairs)
    assert tight.input_ids.shape[1] == max(p.num_tokens for p in pairs)

    cuda_model = tiny_llama("sdpa")
    _, collate = build_policy(cuda_model, share_prompt=True, pad_token_id=0, device_type="cuda")
    assert cuda_model.config._attn_implementation == "flex_attention"
    assert collate(pairs).input_ids.shape[1] % 128 == 0

    padded_model = tiny_llama("sdpa")
    _, collate = build_policy(padded_model, share_prompt=False, pad_token_id=0, device_type="cuda")
    assert padded_model.config._attn_implementation == "sdpa"  # TRL's layout needs no block mask
    assert collate(pairs).input_ids.shape[1] % 128 == 0


def test_flex_attention_training_on_cpu_is_a_config_error():
    with pytest.raises(ConfigError, match=r"flex_attention.*CUDA"):
        build_policy(
            tiny_llama("sdpa"),
            share_prompt=True,
            pad_token_id=0,
            attention="flex_attention",
            device_type="cpu",
        )


def compiled_against_eager():
    eager_model, compiled_model = tiny_llama("sdpa"), tiny_llama("sdpa")
    eager, collate = build_policy(eager_model, share_prompt=True, pad_token_id=0)
    compiled, _ = build_policy(
        compiled_model, share_prompt=True, pad_token_id=0, compile_blocks=True
    )
    for pairs in (random_pairs(), long_tailed_pairs(4, seed=7)):
        batch = collate(pairs)
        want_loss, want_grads = loss_and_grads(eager_model, eager, batch)
        got_loss, got_grads = loss_and_grads(compiled_model, compiled, batch)
        torch.testing.assert_close(got_loss, want_loss, rtol=0, atol=1e-6)
        for got, want in zip(got_grads, want_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert eager_model.state_dict().keys() == compiled_model.state_dict().keys()


def test_compiled_decoder_layers_trace_to_the_same_loss_and_gradients(monkeypatch):
    """`compile: true` traced by dynamo and AOT autograd (the `aot_eager` backend: no C++ build,
    so it fits the default run): the graphs give eager's loss and gradients."""
    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(
        torch.nn.Module, "compile", lambda self: compile_module(self, backend="aot_eager")
    )
    compiled_against_eager()


@pytest.mark.slow
def test_compiled_decoder_layers_give_the_same_loss_and_gradients():
    """`compile: true` as it runs (inductor, C++ kernels on CPU; minutes on 2 cores)."""
    compiled_against_eager()


def test_compile_needs_decoder_layers():
    model = tiny_llama("sdpa")
    model.model.layers = torch.nn.Sequential(*model.model.layers)
    with pytest.raises(ConfigError, match="layers"):
        build_policy(model, share_prompt=True, pad_token_id=0, compile_blocks=True)


def test_token_budget_batches_cover_the_order_within_the_budget():
    pairs = long_tailed_pairs(300, seed=4)
    sizes = [p.num_tokens for p in pairs]
    order = random.Random(0).sample(range(len(pairs)), len(pairs))
    batches = list(token_budget_batches(sizes, order, max_tokens=400))
    assert [i for batch in batches for i in batch] == order
    for batch in batches:
        assert sum(sizes[i] for i in batch) <= 400 or len(batch) == 1
    # each batch is as full as the order allows: the next pair would not have fit
    for batch, following in itertools.pairwise(batches):
        assert sum(sizes[i] for i in batch) + sizes[following[0]] > 400
    # token counts vary far less than with a fixed pair count
    by_tokens = [sum(sizes[i] for i in b) for b in batches]
    by_pairs = [sum(sizes[i] for i in order[k : k + 4]) for k in range(0, len(order), 4)]
    assert max(by_tokens) / min(by_tokens[:-1]) < max(by_pairs) / min(by_pairs)


def test_prefetch_prepares_one_item_ahead_and_keeps_order():
    pulled = []
    pairs = random_pairs()

    def batches():
        for k in range(4):
            pulled.append(k)
            yield [pack_pairs(pairs[: k + 1], max_row_tokens=None, pad_token_id=0)]

    seen = []
    for k, (batch,) in enumerate(prefetch_to_device(batches(), torch.device("cpu"))):
        assert pulled == list(range(min(k + 2, 4)))  # the next one is already collated
        assert batch.num_pairs == k + 1
        seen.append(k)
    assert seen == [0, 1, 2, 3]
    assert list(prefetch_to_device(iter([]), torch.device("cpu"))) == []


@pytest.mark.gpu
def test_prefetched_batches_arrive_pinned_and_equal_on_cuda():
    pairs = long_tailed_pairs(16, seed=8)
    host = [pack_pairs(pairs[k : k + 4], max_row_tokens=None, pad_token_id=0) for k in (0, 4, 8)]
    device = torch.device("cuda")
    for want, got in zip(host, prefetch_to_device(iter(host), device), strict=True):
        assert got.input_ids.device.type == "cuda"
        assert torch.equal(got.predictor.cpu(), want.predictor)
        assert torch.equal(got.input_ids.cpu(), want.input_ids)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flex_attention_training_equals_the_padded_layout_on_cuda(dtype):
    """The issue's bar: fp32 within 1e-6 of the padded layout's loss (bf16 within 2e-2),
    gradients included, FlexAttention with the block mask against TRL's padded layout."""
    pairs = long_tailed_pairs(8, seed=6)
    model = tiny_llama("sdpa").cuda()
    padded_loss, padded_grads = loss_and_grads(
        model, PaddedPolicy(model), PreferenceCollator(0)(pairs).to(torch.device("cuda"))
    )
    policy, collate = build_policy(model, share_prompt=True, pad_token_id=0, device_type="cuda")
    assert model.config._attn_implementation == "flex_attention"
    batch = collate(pairs).to(torch.device("cuda"))
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        loss, grads = loss_and_grads(model, policy, batch)
    tolerance = 1e-6 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(loss, padded_loss, rtol=0, atol=tolerance)
    if dtype == torch.float32:
        for got, want in zip(grads, padded_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_compiled_layers_with_flex_attention_on_cuda():
    pairs = long_tailed_pairs(8, seed=9)
    eager_model, compiled_model = tiny_llama("sdpa").cuda(), tiny_llama("sdpa").cuda()
    eager, collate = build_policy(
        eager_model, share_prompt=True, pad_token_id=0, device_type="cuda"
    )
    compiled, _ = build_policy(
        compiled_model, share_prompt=True, pad_token_id=0, device_type="cuda", compile_blocks=True
    )
    batch = collate(pairs).to(torch.device("cuda"))
    want_loss, _ = loss_and_grads(eager_model, eager, batch)
    got_loss, _ = loss_and_grads(compiled_model, compiled, batch)
    torch.testing.assert_close(got_loss, want_loss, rtol=0, atol=1e-5)


def test_bucketed_packed_loss_equals_trl_layout():
    """Buckets on top of prefix sharing: still the padded (TRL) layout's numbers."""
    pairs = long_tailed_pairs(8, seed=11)
    model = tiny_llama("sdpa")
    batch = PreferenceCollator(0)(pairs)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    want = pair_logps(logits, batch, nll_on_prompt=True)
    got = PackedPolicy(model)(
        pack_pairs(pairs, max_row_tokens=None, pad_token_id=0, bucket_tokens=128),
        nll_on_prompt=True,
    )
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
