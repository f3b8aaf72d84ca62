"""Prefix-shared, padding-free batches and a chunked LM head: the same ORPO loss, fewer FLOPs.

Each pair becomes one segment `[prompt | chosen | rejected]`: the rejected tokens attend to the
prompt and to themselves, never to the chosen tokens, and their positions restart where the prompt
ends, so the prompt is computed once instead of twice. Several segments share a row (padding-free
packing) under a block-diagonal mask. Log-probs come from the final hidden states of the positions
the loss needs only, pushed through the LM head in chunks that are recomputed in the backward pass,
so `[rows, T, V]` logits never exist.

On a GPU, shapes that repeat matter as much as FLOPs: kernels are planned or compiled once per
shape, so `bucket_tokens` rounds each batch's width up to a multiple of it and its row count up to
a power of two; the loss does not change. The block mask of a batch exists in two forms: a dense
additive mask for SDPA and eager attention (CPU), and a FlexAttention `BlockMask` (CUDA), which
skips fully masked blocks and needs no per-shape host planning.

Shapes: R packed rows, T tokens per row, H hidden size, V vocabulary, N scored tokens, B pairs.
"""

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

from orpo_pipeline.train.data import TokenizedPair
from orpo_pipeline.train.loss import PairLogps

PAD, PROMPT, CHOSEN, REJECTED = -1, 0, 1, 2


@dataclass(frozen=True)
class PackedBatch:
    """Token rows of prefix-shared pairs and, for every scored token, where it is predicted."""

    input_ids: torch.Tensor  # (R, T) long
    position_ids: torch.Tensor  # (R, T) long, restarting per pair and for the rejected branch
    segment_ids: torch.Tensor  # (R, T) long, index of the pair in its row; -1 on padding
    branch: torch.Tensor  # (R, T) long: PROMPT, CHOSEN, REJECTED or PAD
    predictor: torch.Tensor  # (N,) long, flat index into R*T of the state that predicts target
    target: torch.Tensor  # (N,) long
    group: torch.Tensor  # (N,) long: pair i's chosen answer i, its rejected B+i, its prompt 2B+i
    num_pairs: int

    def allowed(self, row: torch.Tensor, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """Whether `query` may attend to `key` in `row` (broadcasting index tensors).

        A token sees the earlier tokens of its own pair, except that rejected tokens never see
        chosen ones; every token sees itself, so padding stays finite. Written as a FlexAttention
        `mask_mod` (pure indexing), so the dense and the block mask are one rule.
        """
        segment, branch = self.segment_ids, self.branch
        same_pair = segment[row, query] == segment[row, key]
        crosses = (branch[row, query] == REJECTED) & (branch[row, key] == CHOSEN)
        return (same_pair & (key <= query) & ~crosses) | (key == query)

    def attention_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask (R, 1, T, T): 0 where a query may attend to a key, else dtype's min."""
        rows, width = self.input_ids.shape
        index = torch.arange(width, device=self.input_ids.device)
        row = torch.arange(rows, device=index.device)[:, None, None]
        allowed = self.allowed(row, index[:, None], index[None, :])  # (R, T, T)
        mask = torch.zeros(allowed.shape, dtype=dtype, device=index.device)
        return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]

    def block_mask(self) -> "BlockMask":
        """The same mask as a FlexAttention `BlockMask` (blocks of 128 tokens, all heads alike)."""
        from torch.nn.attention.flex_attention import create_block_mask

        rows, width = self.input_ids.shape

        def mask_mod(row, head, query, key):
            return self.allowed(row, query, key)

        return create_block_mask(mask_mod, rows, None, width, width, device=self.input_ids.device)

    def pin_memory(self) -> "PackedBatch":
        """The same batch in page-locked host memory, so a copy to the GPU can be asynchronous."""
        return self._map(torch.Tensor.pin_memory)

    def to(self, device: torch.device, *, non_blocking: bool = False) -> "PackedBatch":
        """The same batch on `device`."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def _map(self, move) -> "PackedBatch":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return PackedBatch(**{k: move(v) if k != "num_pairs" else v for k, v in moved.items()})


def bucket_shape(rows: int, width: int, bucket_tokens: int | None) -> tuple[int, int]:
    """(rows, width) rounded up to a power of two rows and a multiple of `bucket_tokens` tokens.

    >>> bucket_shape(5, 300, 128), bucket_shape(1, 128, 128), bucket_shape(5, 300, None)
    ((8, 384), (1, 128), (5, 300))
    """
    if bucket_tokens is None:
        return rows, width
    return 1 << (rows - 1).bit_length(), -(-width // bucket_tokens) * bucket_tokens


def _segment(pair: TokenizedPair) -> tuple[list[int], list[int], list[int]]:
    """Token ids, position ids and branch of one pair's `[prompt | chosen | rejected]`."""
    p, c, r = len(pair.prompt_ids), len(pair.chosen_ids), len(pair.rejected_ids)
    ids = pair.prompt_ids + pair.chosen_ids + pair.rejected_ids
    positions = [*range(p + c), *range(p, p + r)]
    branch = [PROMPT] * p + [CHOSEN] * c + [REJECTED] * r
    return ids, positions, branch


def pack_pairs(
    pairs: Sequence[TokenizedPair],
    *,
    max_row_tokens: int | None,
    pad_token_id: int,
    bucket_tokens: int | None = None,
) -> PackedBatch:
    """Pack pairs into rows of at most `max_row_tokens` tokens, first-fit decreasing.

    None makes rows as wide as the longest pair: short pairs share rows, so padding shrinks while
    the per-row attention cost (width²) does not grow. With `bucket_tokens`, the batch is padded
    to `bucket_shape` (rows of padding only, and padding at the end of each row).

    >>> batch = pack_pairs([TokenizedPair([1, 5], [6, 2], [7, 2]), TokenizedPair([1], [8], [9])],
    ...                    max_row_tokens=None, pad_token_id=0)
    >>> batch.input_ids
    tensor([[1, 5, 6, 2, 7, 2],
            [1, 8, 9, 0, 0, 0]])
    >>> batch.position_ids
    tensor([[0, 1, 2, 3, 2, 3],
            [0, 1, 1, 0, 0, 0]])
    >>> batch.target.tolist(), batch.group.tolist()
    ([6, 2, 7, 2, 5, 8, 9], [0, 0, 2, 2, 4, 1, 3])
    >>> pack_pairs([TokenizedPair([1], [8], [9])] * 3, max_row_tokens=3, pad_token_id=0,
    ...            bucket_tokens=4).input_ids
    tensor([[1, 8, 9, 0],
            [1, 8, 9, 0],
            [1, 8, 9, 0],
            [0, 0, 0, 0]])
    >>> short = [TokenizedPair([1], [8], [9]), TokenizedPair([1], [4], [3])]
    >>> pack_pairs([*short, TokenizedPair([1, 5], [6, 2], [7, 2])],
    ...            max_row_tokens=None, pad_token_id=0).input_ids
    tensor([[1, 5, 6, 2, 7, 2],
            [1, 8, 9, 1, 4, 3]])
    """
    sizes = [pair.num_tokens for pair in pairs]
    budget = max(sizes) if max_row_tokens is None else max_row_tokens
    if max(sizes) > budget:
        msg = f"a pair of {max(sizes)} tokens does not fit a row of {budget}"
        raise ValueError(msg)
    rows: list[list[int]] = []  # pair indices per row
    lengths: list[int] = []
    for index in sorted(range(len(pairs)), key=lambda i: -sizes[i]):
        row = next((r for r, used in enumerate(lengths) if used + sizes[index] <= budget), None)
        if row is None:
            rows.append([index])
            lengths.append(sizes[index])
        else:
            rows[row].append(index)
            lengths[row] += sizes[index]
    shape = bucket_shape(len(rows), max(lengths), bucket_tokens)
    width = shape[1]
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    segment_ids = torch.full(shape, PAD, dtype=torch.long)
    branch = torch.full(shape, PAD, dtype=torch.long)
    num_pairs = len(pairs)
    predictor, target, group = [], [], []
    for row, members in enumerate(rows):
        offset = 0
        for slot, index in enumerate(members):
            pair = pairs[index]
            ids, positions, kinds = _segment(pair)
            span = slice(offset, offset + len(ids))
            input_ids[row, span] = torch.tensor(ids)
            position_ids[row, span] = torch.tensor(positions)
            segment_ids[row, span] = slot
            branch[row, span] = torch.tensor(kinds)
            start = row * width + offset
            p, c = len(pair.prompt_ids), len(pair.chosen_ids)
            last_prompt = start + p - 1
            # Chosen token j is predicted by the state before it; the first by the last prompt one.
            predictor += [last_prompt, *range(start + p, start + p + c - 1)]
            target += pair.chosen_ids
            group += [index] * c
            # Rejected token j likewise, its first token also from the last prompt state.
            r = len(pair.rejected_ids)
            predictor += [last_prompt, *range(start + p + c, start + p + c + r - 1)][:r]
            target += pair.rejected_ids
            group += [num_pairs + index] * r
            # The prompt's own tokens, for the NLL over prompt + chosen (position 0 is not scored).
            predictor += list(range(start, start + p - 1))
            target += pair.prompt_ids[1:]
            group += [2 * num_pairs + index] * (p - 1)
            offset += len(ids)
    return PackedBatch(
        input_ids,
        position_ids,
        segment_ids,
        branch,
        torch.tensor(predictor),
        torch.tensor(target),
        torch.tensor(group),
        num_pairs,
    )


def _chunk_logps(lm_head: nn.Module, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logits = lm_head(hidden).float()  # (chunk, V), alive only inside this chunk
    return logits.gather(-1, target[:, None]).squeeze(-1) - logits.logsumexp(-1)


class PackedPolicy(nn.Module):
    """Wraps a causal LM so one call turns a `PackedBatch` into the loss's `PairLogps`.

    Wrapping (rather than calling parts of the model from the loop) keeps DDP and FSDP hooks on
    the path: Accelerate prepares this module, and its forward runs the decoder and the LM head.
    """

    def __init__(self, model: nn.Module, *, chunk_tokens: int = 256) -> None:
        super().__init__()
        self.model = model
        self.chunk_tokens = chunk_tokens

    def forward(self, batch: PackedBatch, *, nll_on_prompt: bool) -> PairLogps:
        """Mean response log-probs of both answers and the chosen NLL sum, in fp32."""
        decoder, lm_head = self.model.get_decoder(), self.model.get_output_embeddings()
        if self.model.config._attn_implementation == "flex_attention":
            mask = batch.block_mask()
        else:
            mask = batch.attention_mask(next(lm_head.parameters()).dtype)
        hidden = decoder(
            input_ids=batch.input_ids,
            position_ids=batch.position_ids,
            attention_mask=mask,
            use_cache=False,
        ).last_hidden_state  # (R, T, H)
        states = hidden.flatten(0, 1).index_select(0, batch.predictor)  # (N, H)
        chunks = zip(
            states.split(self.chunk_tokens), batch.target.split(self.chunk_tokens), strict=True
        )
        if torch.is_grad_enabled():  # recompute each chunk's logits in backward instead of keeping
            logps = [
                checkpoint(_chunk_logps, lm_head, h, t, use_reentrant=False) for h, t in chunks
            ]
        else:
            logps = [_chunk_logps(lm_head, h, t) for h, t in chunks]
        logps = torch.cat(logps)  # (N,)
        num_pairs = batch.num_pairs
        sums = torch.zeros(3 * num_pairs, device=logps.device).index_add(0, batch.group, logps)
        counts = torch.zeros(3 * num_pairs, dtype=torch.long, device=logps.device).index_add(
            0, batch.group, torch.ones_like(batch.group)
        )
        means = sums[: 2 * num_pairs] / counts[: 2 * num_pairs].clamp(min=1)  # SFT: no rejected
        nll_sum, nll_tokens = -sums[:num_pairs].sum(), counts[:num_pairs].sum()
        if nll_on_prompt:
            nll_sum, nll_tokens = (
                nll_sum - sums[2 * num_pairs :].sum(),
                nll_tokens + counts[2 * num_pairs :].sum(),
            )
        return PairLogps(
            means[:num_pairs],
            means[num_pairs:],
            nll_sum,
            nll_tokens,
            counts[:num_pairs],
            counts[num_pairs : 2 * num_pairs],
        )
