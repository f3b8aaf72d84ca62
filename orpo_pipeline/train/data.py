"""Training data to token ids with the chat template, rejects with reasons, and the collator.

An objective trains on one kind of data (`DataKind`): preference pairs, completions (SFT) or
labelled completions (KTO). Pair files feed all three; SFT records and labelled rows feed the
objectives that take them.
"""

from collections import Counter
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import polars as pl
import torch

from orpo_pipeline.errors import ConfigError, DataError
from orpo_pipeline.io import FRAME_SUFFIXES, scan_frame
from orpo_pipeline.records import pair_id

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

COLUMNS = ("id", "prompt", "chosen", "rejected")
DataKind = Literal["pairs", "completions", "labelled"]
"""What an objective trains on: preference pairs; completions (a pair's chosen answer, or an SFT
record's answer); or completions labelled desirable or undesirable (KTO)."""


def read_pairs(path: Path, *, limit: int | None = None) -> list[dict[str, Any]]:
    """The `id`, `prompt`, `chosen` and `rejected` of a canonical pair file, in file order."""
    if path.suffix not in FRAME_SUFFIXES:
        msg = f"{path}: expected a .parquet or .jsonl pair file"
        raise DataError(msg)
    if not path.exists():
        msg = f"pair file not found: {path}; run `orpo-pipeline data` first or fix the path"
        raise DataError(msg)
    try:
        frame = scan_frame(path)
        missing = [c for c in COLUMNS if c not in frame.collect_schema()]
        if missing:
            msg = f"{path}: no column(s) {missing}; expected canonical pairs (see records.py)"
            raise DataError(msg)
        return frame.select(COLUMNS).head(limit).collect().to_dicts()
    except pl.exceptions.PolarsError as error:
        msg = f"cannot read pairs from {path}: {error}"
        raise DataError(msg) from error


def read_examples(path: Path, data: DataKind, *, limit: int | None = None) -> list[dict[str, Any]]:
    """The rows of `path` an objective of kind `data` trains on, in file order.

    A pair file feeds every kind: as it is, or for `labelled` unpaired as TRL's
    `unpair_preference_dataset` does (each pair's chosen answer desirable, its rejected answer
    undesirable). Other files hold one answer per row, read as `id`, `prompt`, `completion` and
    `label`: SFT records (`messages` ending with the answer, or `prompt` + `completion`) for
    `completions`, and rows with a boolean `label` (TRL's unpaired `prompt`, `completion`,
    `label`, or LLaMA-Factory's `messages` + `label`) for `labelled`. `limit` counts rows.
    """
    if path.suffix in FRAME_SUFFIXES and path.exists():
        try:
            columns = set(scan_frame(path).collect_schema())
        except pl.exceptions.PolarsError as error:
            msg = f"cannot read {path}: {error}"
            raise DataError(msg) from error
    else:
        columns = set(COLUMNS)  # read_pairs says what is wrong with the path
    if {"chosen", "rejected"} <= columns:
        rows = read_pairs(path, limit=limit)
        return [row for pair in rows for row in _unpair(pair)] if data == "labelled" else rows
    if data == "pairs" or (data == "labelled" and "label" not in columns):
        needs = "`chosen` and `rejected`" if data == "pairs" else "a boolean `label`"
        msg = f"{path}: no columns {needs}; this objective trains on {data} (see the README)"
        raise DataError(msg)
    if data == "completions" and "label" in columns:
        msg = f"{path}: labelled rows train objective kto; sft would learn the undesirable answers"
        raise DataError(msg)
    from orpo_pipeline.formats.readers import BadRow, BlankLine, position_unit, read_rows

    rows = []
    for item in read_rows(path):  # row by row: exact JSON types, and where each row is
        if isinstance(item, BadRow):
            msg = f"{path}: {position_unit(path)} {item.line}: {item.reason}: {item.detail}"
            raise DataError(msg)
        if not isinstance(item, BlankLine):
            where = f"{path}: {position_unit(path)} {item.line}"
            rows.append(_completion_row(item.value, where, labelled=data == "labelled"))
        if len(rows) == limit:
            break
    return rows


def _unpair(pair: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"id": pair["id"], "prompt": pair["prompt"], "completion": pair[key], "label": label}
        for key, label in (("chosen", True), ("rejected", False))
    ]


def _completion_row(row: dict[str, Any], where: str, *, labelled: bool) -> dict[str, Any]:
    """One SFT record or labelled row as `id`, `prompt`, `completion` (one message), `label`."""
    from orpo_pipeline.formats.options import ConvertOptions
    from orpo_pipeline.formats.rows import RowError
    from orpo_pipeline.formats.sft import parse_kto, parse_openai_messages, parse_prompt_completion

    options = ConvertOptions()
    try:
        if labelled:
            unpaired = parse_kto(row, options)[0]
            prompt, answer, label = unpaired.prompt, unpaired.answer, unpaired.desirable
        else:
            parse = parse_openai_messages if "messages" in row else parse_prompt_completion
            conversation = [m.model_dump() for m in parse(row, options)[0].messages]
            prompt, answer, label = conversation[:-1], conversation[-1]["content"], None
    except RowError as error:
        msg = f"{where}: {error}"
        raise DataError(msg) from error
    completion = [{"role": "assistant", "content": answer}]
    return {
        "id": pair_id(prompt, completion, []),
        "prompt": prompt,
        "completion": completion,
        "label": label,
    }


@dataclass(frozen=True)
class TokenizedPair:
    """Token ids of one pair: the shared prompt and the two responses."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]

    @property
    def num_tokens(self) -> int:
        """Prompt, chosen and rejected tokens: the work any batch layout has to do."""
        return len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)

    def nll_tokens(self, *, nll_on_prompt: bool) -> int:
        """Tokens in the NLL: prompt (not its first token) + chosen response, or the response."""
        return len(self.chosen_ids) + (len(self.prompt_ids) - 1 if nll_on_prompt else 0)


@dataclass(frozen=True)
class TokenizedPairs:
    """What tokenization kept, where it came from, and what it rejected or cut."""

    pairs: list[TokenizedPair]
    rows: list[int]
    """Input row index of each kept pair."""
    rejects: dict[str, int]
    """Rejected rows per reason."""
    prompts_truncated: int
    responses_truncated: int


def _render_responses(
    tokenizer: "PreTrainedTokenizerBase",
    rows: Sequence[dict[str, Any]],
    prompt_texts: list[str],
    key: str,
) -> list[str]:
    """Text the template adds after the prompt for the `key` answer (its end-of-turn included)."""
    full_texts = tokenizer.apply_chat_template(
        [row["prompt"] + row[key] for row in rows], tokenize=False
    )
    responses = []
    for prompt_text, full_text in zip(prompt_texts, full_texts, strict=True):
        if not full_text.startswith(prompt_text):
            msg = (
                "the chat template renders the prompt differently when an answer follows it, "
                "so the prompt/response boundary is ambiguous; set `chat_template` to a template "
                "whose generation prompt is a prefix of the rendered answer"
            )
            raise ConfigError(msg)
        responses.append(full_text[len(prompt_text) :])
    return responses


def _end_at_eos(ids: list[int], eos: int) -> list[int]:
    """Cut after the last EOS (dropping e.g. the template's trailing newline), or append one."""
    if eos in ids:
        return ids[: len(ids) - ids[::-1].index(eos)]
    return [*ids, eos]


def tokenize_pairs(
    rows: Sequence[dict[str, Any]],
    tokenizer: "PreTrainedTokenizerBase",
    *,
    max_length: int,
    max_prompt_length: int,
    answers: tuple[str, ...] = ("chosen", "rejected"),
) -> TokenizedPairs:
    """Tokenize conversational rows; truncate; reject rows that cannot train.

    `answers` names the rows' answer fields: a pair's `chosen` and `rejected`, or one
    `completion` (kept as the chosen answer, with no rejected one).
    The prompt is rendered with `add_generation_prompt=True` and each answer is the text the
    template adds after it; they are tokenized separately (batched, no special tokens) and
    concatenated, so the prompt boundary is exact. Each answer ends with exactly one EOS (the
    tokenizer's `eos_token`, the end-of-turn token of chat models). BOS is prepended only when the
    tokenizer adds one by itself and the template did not render it.

    Prompts longer than `max_prompt_length` lose their oldest tokens (BOS is kept); answers are
    cut to fit `max_length` (a cut answer has no EOS). Rejected: `no_room_for_response` (the
    prompt fills `max_length`) and `chosen_equals_rejected` (identical ids after the cut).
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        msg = "the tokenizer has no eos_token; set one so responses can end"
        raise ConfigError(msg)
    bos = tokenizer.bos_token_id
    adds_bos = bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
    prompt_texts = tokenizer.apply_chat_template(
        [row["prompt"] for row in rows], tokenize=False, add_generation_prompt=True
    )

    def encode(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    answer_ids = [encode(_render_responses(tokenizer, rows, prompt_texts, key)) for key in answers]
    pairs, kept, rejects = [], [], Counter()
    prompts_cut = responses_cut = 0
    for index, (prompt, *responses) in enumerate(
        zip(encode(prompt_texts), *answer_ids, strict=True)
    ):
        if adds_bos and prompt[:1] != [bos]:
            prompt = [bos, *prompt]
        if len(prompt) > max_prompt_length:
            prompts_cut += 1
            head = prompt[:1] if adds_bos else []
            prompt = head + prompt[len(prompt) - max_prompt_length + len(head) :]
        room = max_length - len(prompt)
        if room < 1:
            rejects["no_room_for_response"] += 1
            continue
        responses = [_end_at_eos(response, eos) for response in responses]
        responses_cut += any(len(response) > room for response in responses)
        chosen, rejected = (*(response[:room] for response in responses), [])[:2]
        if chosen == rejected:
            rejects["chosen_equals_rejected"] += 1
            continue
        pairs.append(TokenizedPair(prompt, chosen, rejected))
        kept.append(index)
    return TokenizedPairs(pairs, kept, dict(rejects), prompts_cut, responses_cut)


@dataclass(frozen=True)
class Feed:
    """An objective's tokenized examples, and how a micro-batch of them is forwarded.

    Without `kl`, a micro-batch is its pairs (or completions, with no rejected answer). With
    `kl` (KTO), example i is forwarded as the pair (prompt_i, completion_i, completion_j): its
    own completion, and as its mismatched KL completion that of the example before it in the
    micro-batch (the last one's for the first). This is TRL's rotation,
    (x_1, y_n), (x_2, y_1), ..., (x_n, y_{n-1}), so the KL completions are the batch's own.
    """

    pairs: Sequence[TokenizedPair]
    labels: Sequence[bool] | None = None
    """Per example: desirable (True) or undesirable (False); None for pairs and SFT records."""
    kl: bool = False

    @property
    def sizes(self) -> list[int]:
        """Tokens each example puts through the model (its share of the KL completions too)."""
        return [p.num_tokens + (len(p.chosen_ids) if self.kl else 0) for p in self.pairs]

    def arrange(self, indices: Sequence[int]) -> tuple[list[TokenizedPair], list[Hashable]]:
        """The pairs a micro-batch of `indices` forwards, and a key naming each of them."""
        if not self.kl:
            return [self.pairs[i] for i in indices], list(indices)
        partners = [indices[-1], *indices[:-1]]
        pairs = [
            TokenizedPair(
                self.pairs[i].prompt_ids, self.pairs[i].chosen_ids, self.pairs[j].chosen_ids
            )
            for i, j in zip(indices, partners, strict=True)
        ]
        return pairs, list(zip(indices, partners, strict=True))

    def label_tensor(self, indices: Sequence[int]) -> torch.Tensor | None:
        """(B,) bool labels of the examples at `indices`, on the host; None without labels."""
        if self.labels is None:
            return None
        return torch.tensor([self.labels[i] for i in indices], dtype=torch.bool)


@dataclass(frozen=True)
class PreferenceBatch:
    """Chosen rows then rejected rows, right-padded to the longest row (TRL's layout)."""

    input_ids: torch.Tensor  # (2B, T) long
    attention_mask: torch.Tensor  # (2B, T) long, 1 on prompt and response tokens
    completion_mask: torch.Tensor  # (2B, T) bool, True on response tokens

    @property
    def num_pairs(self) -> int:
        """B, the number of pairs."""
        return self.input_ids.shape[0] // 2

    def nll_mask(self, *, nll_on_prompt: bool) -> torch.Tensor:
        """Tokens of the NLL term: chosen rows, prompt + response (TRL) or response; (2B, T)."""
        mask = self.attention_mask.bool() if nll_on_prompt else self.completion_mask.clone()
        mask[self.num_pairs :] = False
        return mask

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch's tensors in field order."""
        return self.input_ids, self.attention_mask, self.completion_mask

    def pin_memory(self) -> "PreferenceBatch":
        """The same batch in page-locked host memory, so a copy to the GPU can be asynchronous."""
        return PreferenceBatch(*(t.pin_memory() for t in self.tensors))

    def to(self, device: torch.device, *, non_blocking: bool = False) -> "PreferenceBatch":
        """The same batch on `device`."""
        return PreferenceBatch(*(t.to(device, non_blocking=non_blocking) for t in self.tensors))


@dataclass(frozen=True)
class PreferenceCollator:
    """Stack pairs as `[prompt + chosen]` rows, then `[prompt + rejected]` rows, right-padded.

    >>> collate = PreferenceCollator(pad_token_id=0)
    >>> batch = collate([TokenizedPair([1, 5], [6, 2], [7, 8, 2]),
    ...                  TokenizedPair([1, 9, 9], [6, 2], [2])])
    >>> batch.input_ids
    tensor([[1, 5, 6, 2, 0],
            [1, 9, 9, 6, 2],
            [1, 5, 7, 8, 2],
            [1, 9, 9, 2, 0]])
    >>> batch.attention_mask
    tensor([[1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1],
            [1, 1, 1, 1, 0]])
    >>> batch.completion_mask.long()
    tensor([[0, 0, 1, 1, 0],
            [0, 0, 0, 1, 1],
            [0, 0, 1, 1, 1],
            [0, 0, 0, 1, 0]])
    """

    pad_token_id: int
    bucket_tokens: int | None = None
    """Round the width up to a multiple of this, so batch shapes repeat; None: the longest row."""

    def __call__(self, pairs: Sequence[TokenizedPair]) -> PreferenceBatch:
        """Collate `pairs` into one batch."""
        rows = [(p.prompt_ids, p.chosen_ids) for p in pairs]
        rows += [(p.prompt_ids, p.rejected_ids) for p in pairs]
        width = max(len(prompt) + len(response) for prompt, response in rows)
        if self.bucket_tokens is not None:
            width = -(-width // self.bucket_tokens) * self.bucket_tokens
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        completion_mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, (prompt, response) in enumerate(rows):
            start, end = len(prompt), len(prompt) + len(response)
            input_ids[i, :end] = torch.tensor(prompt + response)
            attention_mask[i, :end] = 1
            completion_mask[i, start:end] = True
        return PreferenceBatch(input_ids, attention_mask, completion_mask)


def token_budget_batches(
    sizes: Sequence[int], order: Iterable[int], max_tokens: int
) -> Iterator[list[int]]:
    """Cut `order` (indices into `sizes`) into consecutive batches of at most `max_tokens`.

    A batch closes before the pair that would overflow it; a pair larger than the budget is a
    batch of its own. Batches then hold about the same work however long the pairs are, which is
    what keeps a GPU busy on long-tailed data.

    >>> list(token_budget_batches([5, 3, 4, 9, 1], [0, 1, 2, 3, 4], max_tokens=8))
    [[0, 1], [2], [3], [4]]
    """
    batch, used = [], 0
    for index in order:
        if batch and used + sizes[index] > max_tokens:
            yield batch
            batch, used = [], 0
        batch.append(index)
        used += sizes[index]
    if batch:
        yield batch


Item = TypeVar("Item")


def _to_device(item: Any, device: torch.device) -> Any:
    if isinstance(item, list | tuple):
        return type(item)(_to_device(part, device) for part in item)
    if not hasattr(item, "pin_memory"):  # host values (indices, counts) stay as they are
        return item
    if device.type == "cuda":  # page-locked source: the copy runs while the host moves on
        return item.pin_memory().to(device, non_blocking=True)
    return item.to(device)


def prefetch_to_device(items: Iterable[Item], device: torch.device) -> Iterator[Item]:
    """Yield `items` (batches, or lists and tuples of them and of host values such as pair
    indices, which stay on the host) with every batch and tensor on `device`, one step ahead.

    Item k + 1 is collated on the host and its copy is queued before item k is handed out, so the
    host prepares the next step while the GPU runs this one, and no step waits on a copy. On CUDA
    the copies come from pinned memory without blocking the host; PyTorch's pinned-memory cache
    keeps each source buffer alive until its copy is done.
    """
    pending, has_pending = None, False
    for item in items:
        moved = _to_device(item, device)
        if has_pending:
            yield pending
        pending, has_pending = moved, True
    if has_pending:
        yield pending
