"""Record contracts: pydantic models for every record kind, and the Polars schema of a pair."""

import hashlib
import json
from typing import Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator

Role = Literal["system", "user", "assistant", "tool"]


class Record(BaseModel):
    """Shared settings: unknown fields are errors, records are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Message(Record):
    """One chat message."""

    role: Role
    """Who speaks: system, user, assistant or tool."""
    content: str
    """The message text."""


def _non_blank(messages: list[Message]) -> list[Message]:
    for message in messages:
        if not message.content.strip():
            msg = f"{message.role} message is empty or whitespace"
            raise ValueError(msg)
    return messages


class PreferencePair(Record):
    """A prompt with a preferred and a dispreferred answer (TRL conversational, explicit prompt)."""

    id: str = Field(pattern=r"^[0-9a-f]{16,64}$")
    """Stable content hash of (prompt, chosen, rejected); see `pair_id`."""
    prompt: list[Message] = Field(min_length=1)
    """Every message before the answer: system, earlier turns, and the last user turn."""
    chosen: list[Message] = Field(min_length=1, max_length=1)
    """The preferred answer: one assistant message."""
    rejected: list[Message] = Field(min_length=1, max_length=1)
    """The dispreferred answer: one assistant message."""
    source: str
    """Where the pair came from (file name or dataset id)."""
    score_chosen: float | None = None
    """Score of the chosen answer, where the source gives one."""
    score_rejected: float | None = None
    """Score of the rejected answer, where the source gives one."""

    _check_prompt = field_validator("prompt")(_non_blank)

    @field_validator("chosen", "rejected")
    @classmethod
    def _one_assistant_answer(cls, messages: list[Message]) -> list[Message]:
        if messages[0].role != "assistant":
            msg = f"answer must have role 'assistant', got {messages[0].role!r}"
            raise ValueError(msg)
        return _non_blank(messages)


class SFTRecord(Record):
    """A conversation whose last message is the target assistant answer."""

    messages: list[Message] = Field(min_length=2)
    """The conversation; the last message is the answer to learn."""
    source: str = ""
    """Where the record came from."""


class Completion(Record):
    """One scored or ranked answer to a prompt."""

    content: str
    """The answer text."""
    score: float | None = None
    """A scalar quality score (higher is better), where known."""
    rank: int | None = None
    """Position in a ranking, lower is better (0 or 1 is the best, as the source numbers it)."""
    aspects: dict[str, float | None] = {}
    """Per-aspect ratings (e.g. helpfulness, honesty); None where the source says N/A."""


class RankedRecord(Record):
    """A prompt with several scored or ranked answers (UltraFeedback, Nectar, OASST, SHP)."""

    prompt: list[Message] = Field(min_length=1)
    """The conversation before the answers."""
    completions: list[Completion] = Field(min_length=2)
    """The candidate answers."""
    source: str = ""
    """Where the record came from."""


class PairwiseJudgment(Record):
    """A judge's verdict between two answers (Arena, MT-bench, AlpacaEval)."""

    prompt: list[Message] = Field(min_length=1)
    """The conversation before the answers."""
    response_a: str
    """The first answer shown to the judge."""
    response_b: str
    """The second answer shown to the judge."""
    winner: Literal["a", "b", "tie", "error"]
    """The verdict."""
    source: str = ""
    """Where the judgment came from."""


RECORD_MODELS: dict[str, type[Record]] = {
    "preference_pair": PreferencePair,
    "sft_record": SFTRecord,
    "ranked_record": RankedRecord,
    "pairwise_judgment": PairwiseJudgment,
}

MESSAGES = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
PAIR_SCHEMA = pl.Schema(
    {
        "id": pl.String,
        "prompt": MESSAGES,
        "chosen": MESSAGES,
        "rejected": MESSAGES,
        "source": pl.String,
        "score_chosen": pl.Float64,
        "score_rejected": pl.Float64,
    }
)
"""Column order and types of a canonical pair file."""


def pair_id(prompt: list[dict], chosen: list[dict], rejected: list[dict]) -> str:
    """Sha256 (first 16 bytes, hex) of the pair's messages; stable across versions and machines."""
    payload = json.dumps([prompt, chosen, rejected], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:32]
