"""Reference-model log-probs (DPO, KTO): precomputed and cached, a frozen model, or LoRA off.

A reference is called with a batch, the keys of its pairs (`data.Feed.arrange`: a pair's index
in its split, or KTO's (example, KL partner)), and the split's name, and returns the reference
model's `PairLogps` of those pairs (no gradient).
"""

import hashlib
import json
import os
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from orpo_pipeline.train.data import TokenizedPair
from orpo_pipeline.train.loss import PairLogps

Reference = Callable[[Any, Sequence[Hashable], str], PairLogps]
COLUMNS = ("chosen", "rejected", "chosen_tokens", "rejected_tokens")
"""Per-pair columns of a precomputed table: mean log-probs and token counts of each answer."""


@dataclass(frozen=True)
class FrozenReference:
    """A policy wrapper (`policy.build_policy`) around frozen reference weights."""

    policy: nn.Module

    @torch.no_grad()
    def __call__(self, batch: Any, keys: Sequence[Hashable], split: str) -> PairLogps:
        """The reference log-probs of `batch`."""
        return self.policy(batch, nll_on_prompt=False)


@dataclass(frozen=True)
class AdapterOffReference:
    """The training policy itself with its LoRA adapters disabled: no second copy in memory."""

    policy: nn.Module  # unwrapped: its `model` is a peft model

    @torch.no_grad()
    def __call__(self, batch: Any, keys: Sequence[Hashable], split: str) -> PairLogps:
        """The base model's log-probs of `batch`."""
        with self.policy.model.disable_adapter():
            return self.policy(batch, nll_on_prompt=False)


@dataclass(frozen=True)
class PrecomputedReference:
    """Log-probs computed once per pair before training, looked up by split and key."""

    tables: dict[str, torch.Tensor]  # split -> (pairs, len(COLUMNS)) float64
    rows: dict[str, dict[Hashable, int]]  # split -> the table row of each pair's key

    def __call__(self, batch: Any, keys: Sequence[Hashable], split: str) -> PairLogps:
        """The stored log-probs of the pairs with `keys`."""
        rows = self.tables[split][[self.rows[split][key] for key in keys]]  # (B, 4), on the host
        device = batch.input_ids.device
        if device.type == "cuda":  # from page-locked memory: the host does not wait for the copy
            rows = rows.pin_memory().to(device, non_blocking=True)
        chosen, rejected, chosen_tokens, rejected_tokens = rows.T.to(device)
        zero = torch.zeros((), device=device)
        return PairLogps(
            chosen.float(),
            rejected.float(),
            zero,
            zero,
            chosen_tokens.long(),
            rejected_tokens.long(),
        )


@torch.no_grad()
def compute_table(
    policy: nn.Module,
    pairs: Sequence[TokenizedPair],
    *,
    collate: Callable[[Sequence[TokenizedPair]], Any],
    device: torch.device,
    batch_size: int,
) -> torch.Tensor:
    """The `COLUMNS` of every pair under `policy`, shape (pairs, 4), in pair order."""
    order = sorted(range(len(pairs)), key=lambda i: pairs[i].num_tokens)  # less padding
    table = torch.zeros(len(pairs), len(COLUMNS), dtype=torch.float64)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        logps = policy(collate([pairs[i] for i in chunk]).to(device), nll_on_prompt=False)
        columns = (logps.chosen, logps.rejected, logps.chosen_tokens, logps.rejected_tokens)
        table[chunk] = torch.stack([c.double().cpu() for c in columns], dim=1)
    return table


def table_key(
    model_files: list[dict[str, Any]], pairs: Sequence[TokenizedPair], layout: str
) -> str:
    """Content hash of a table: the reference model's files, the pairs' token ids, the layout."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"model": model_files, "layout": layout}, sort_keys=True).encode())
    for pair in pairs:
        digest.update(json.dumps([pair.prompt_ids, pair.chosen_ids, pair.rejected_ids]).encode())
    return digest.hexdigest()


def cached_table(path: Path, compute: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, bool]:
    """The table stored at `path`, or `compute()` written there atomically; and whether cached."""
    if path.is_file():
        return load_file(path)["table"], True
    table = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    save_file({"table": table.contiguous()}, temp)
    os.replace(temp, path)
    return table, False
