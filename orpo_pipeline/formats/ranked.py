"""Ranked and scored answers (UltraFeedback, Nectar, SHP, OpenAssistant) and the rule that turns
one prompt with N scored answers into pairs.

The rule has the four knobs of data-reference §1: score source, chosen (always the best; a tie
at the top is broken at random), rejected (`random_lower`, `worst`, `all_lower`, `all_pairs`),
ties (`drop` or `keep`), plus `min_margin` and `seed`. Each prompt draws from its own generator,
seeded with sha256(seed, prompt), so the output depends neither on row order nor on how the rows
are split across processes.
"""

import hashlib
import json
import random
from itertools import permutations
from typing import Any, NamedTuple

from orpo_pipeline.formats.conversation import hh_messages, role
from orpo_pipeline.formats.options import ConvertOptions
from orpo_pipeline.formats.rows import (
    MessageDict,
    Pair,
    RowError,
    field,
    list_field,
    number,
    text_field,
)
from orpo_pipeline.records import Completion, RankedRecord

UF_ASPECTS = ("instruction_following", "honesty", "truthfulness", "helpfulness")


def parse_ultrafeedback(row: dict[str, Any], options: ConvertOptions) -> list[RankedRecord]:
    """UltraFeedback: `instruction` and `completions[{response, annotations, overall_score}]`.

    Aspect ratings are strings ('4') or 'N/A'; 'N/A' and unparsable ratings become None. An
    aspect annotation is an object with `Rating`, or a one-element list of such objects.
    """
    prompt = [{"role": "user", "content": text_field(row, "instruction")}]
    completions = []
    for index, item in enumerate(list_field(row, "completions")):
        if not isinstance(item, dict) or not isinstance(item.get("response"), str):
            detail = f"completions[{index}] should be an object with a string 'response'"
            raise RowError(reason="wrong_type", detail=detail)
        annotations = item.get("annotations") or {}
        if not isinstance(annotations, dict):
            detail = f"completions[{index}].annotations should be an object"
            raise RowError(reason="wrong_type", detail=detail)
        aspects = {
            name: _rating(annotation)
            for name, annotation in annotations.items()
            if isinstance(annotation, dict | list)
        }
        score = number(item.get("overall_score"))
        completions.append(Completion(content=item["response"], score=score, aspects=aspects))
    return [_ranked(prompt, completions)]


def _rating(annotation: dict | list) -> float | None:
    if isinstance(annotation, list):
        annotation = annotation[0] if annotation and isinstance(annotation[0], dict) else {}
    return number(annotation.get("Rating"))


def is_ultrafeedback(row: dict[str, Any]) -> bool:
    """An `instruction` and a `completions` list of objects with `response`."""
    completions = row.get("completions")
    return (
        "instruction" in row
        and isinstance(completions, list)
        and bool(completions)
        and isinstance(completions[0], dict)
        and "response" in completions[0]
    )


def parse_nectar(row: dict[str, Any], options: ConvertOptions) -> list[RankedRecord]:
    """Nectar: an HH-style `prompt` transcript and `answers[{answer, rank}]`, rank 1 = best."""
    prompt = hh_messages(text_field(row, "prompt"), where="'prompt'")
    if prompt and prompt[-1]["role"] == "assistant" and not prompt[-1]["content"]:
        prompt = prompt[:-1]  # the transcript ends with an empty 'Assistant:' cue
    completions = []
    for index, item in enumerate(list_field(row, "answers")):
        if not isinstance(item, dict) or not isinstance(item.get("answer"), str):
            detail = f"answers[{index}] should be an object with a string 'answer'"
            raise RowError(reason="wrong_type", detail=detail)
        rank = number(item.get("rank"), integral=True)
        completions.append(Completion(content=item["answer"], rank=rank))
    return [_ranked(prompt, completions)]


def is_nectar(row: dict[str, Any]) -> bool:
    """A string `prompt` and an `answers` list of objects with `answer` and `rank`."""
    answers = row.get("answers")
    return (
        isinstance(row.get("prompt"), str)
        and isinstance(answers, list)
        and bool(answers)
        and isinstance(answers[0], dict)
        and "answer" in answers[0]
    )


def parse_shp(row: dict[str, Any], options: ConvertOptions) -> list[RankedRecord]:
    """Stanford SHP: `history` and two comments `human_ref_A/B` scored `score_A/B`.

    The comment scores are the scores; `labels` (1 = A preferred) must agree with them and stands
    in for them (1 vs 0) when they are missing.

    Raises:
        RowError: `labels_disagree_with_scores`.
    """
    prompt = [{"role": "user", "content": text_field(row, "history")}]
    texts = (text_field(row, "human_ref_A"), text_field(row, "human_ref_B"))
    scores = (number(row.get("score_A")), number(row.get("score_B")))
    label = number(row.get("labels"), integral=True)
    if None in scores:
        if label not in (0, 1):
            detail = "needs numeric score_A and score_B, or labels 0/1"
            raise RowError(reason="missing_field", detail=detail)
        scores = (float(label), float(1 - label))
    elif label in (0, 1) and (scores[0] > scores[1]) != (label == 1):
        detail = f"labels={label} but score_A={scores[0]} and score_B={scores[1]}"
        raise RowError(reason="labels_disagree_with_scores", detail=detail)
    completions = [Completion(content=t, score=s) for t, s in zip(texts, scores, strict=True)]
    return [_ranked(prompt, completions)]


def is_shp(row: dict[str, Any]) -> bool:
    """`history`, `human_ref_A` and `human_ref_B` are present."""
    return all(key in row for key in ("history", "human_ref_A", "human_ref_B"))


def parse_oasst(row: dict[str, Any], options: ConvertOptions) -> list[RankedRecord]:
    """OpenAssistant message tree: one ranked record per prompter message with ranked replies.

    The row is a tree export (`{message_tree_id, tree_state, prompt: root}`) or a root message
    with nested `replies`. The prompt is the path from the root; `rank` 0 is the best reply.
    Deleted messages and their subtrees are skipped, and so are messages whose review failed.

    Raises:
        RowError: `tree_not_ready` (tree_state other than ready_for_export) or `no_ranked_replies`.
    """
    state = row.get("tree_state")
    if state is not None and state != "ready_for_export":
        raise RowError(reason="tree_not_ready", detail=f"tree_state is {state!r}")
    root = field(row, "prompt") if "message_tree_id" in row and "prompt" in row else row
    records: list[RankedRecord] = []
    _walk_oasst(root, [], records, where="the root message")
    if not records:
        detail = "no prompter message has two or more ranked assistant replies"
        raise RowError(reason="no_ranked_replies", detail=detail)
    return records


def _walk_oasst(
    node: Any, path: list[MessageDict], records: list[RankedRecord], *, where: str
) -> None:
    if not isinstance(node, dict) or not isinstance(node.get("text"), str):
        raise RowError(reason="wrong_type", detail=f"{where} should be an object with 'text'")
    message = {"role": role(node.get("role"), where=where), "content": node["text"]}
    conversation = [*path, message]
    replies = node.get("replies") or []
    if not isinstance(replies, list):
        raise RowError(reason="wrong_type", detail=f"{where} has 'replies' that is not a list")
    replies = [reply for reply in replies if _usable_reply(reply)]
    ranked_replies = [
        Completion(content=reply["text"], rank=number(reply.get("rank"), integral=True))
        for reply in replies
        if message["role"] == "user"
        and isinstance(reply.get("text"), str)
        and number(reply.get("rank"), integral=True) is not None
    ]
    if len(ranked_replies) >= 2:
        records.append(RankedRecord(prompt=conversation, completions=ranked_replies))
    for index, reply in enumerate(replies):
        _walk_oasst(reply, conversation, records, where=f"{where} > reply {index}")


def _usable_reply(reply: Any) -> bool:
    return (
        isinstance(reply, dict)
        and not reply.get("deleted")
        and reply.get("review_result") is not False
    )


def is_oasst(row: dict[str, Any]) -> bool:
    """An OpenAssistant tree export or a root message with `message_id`, `text` and `replies`."""
    if "message_tree_id" in row and isinstance(row.get("prompt"), dict):
        return True
    return all(key in row for key in ("message_id", "text", "role", "replies"))


def _ranked(prompt: list[MessageDict], completions: list[Completion]) -> RankedRecord:
    if not prompt:
        raise RowError(reason="empty_prompt", detail="the prompt has no messages")
    if len(completions) < 2:
        detail = f"needs at least two answers, got {len(completions)}"
        raise RowError(reason="too_few_completions", detail=detail)
    return RankedRecord(prompt=prompt, completions=completions)


class Scored(NamedTuple):
    """A candidate answer with the score the pairing rule uses."""

    text: str
    score: float


def completion_score(completion: Completion, options: ConvertOptions, source: str) -> float | None:
    """The score of a completion under `source`; None when the source has no value for it."""
    if source == "overall":
        return completion.score
    if source == "rank":
        return None if completion.rank is None else 0.0 - completion.rank
    if source == "aspect":
        return completion.aspects.get(options.aspect or "")
    ratings = [value for value in completion.aspects.values() if value is not None]
    return sum(ratings) / len(ratings) if ratings else None


def ranked_pairs(record: RankedRecord, options: ConvertOptions) -> list[Pair]:
    """Pairs from one prompt's scored answers under the options' knobs.

    Answers that are blank, unscored or repeat an earlier answer's text are left out first.
    The chosen answer is the best (a tie at the top is broken by the prompt's generator); with
    `ties='drop'` every rejected answer scores strictly lower, so score_chosen > score_rejected.

    Raises:
        RowError: `missing_score` (fewer than two answers scored), `too_few_completions`,
            `tie` (no strictly lower answer) or `margin_below_min`.
    """
    default_source = "rank" if all(c.score is None for c in record.completions) else "overall"
    source = options.score_source or default_source
    candidates: list[Scored] = []
    seen: set[str] = set()
    for completion in record.completions:
        score = completion_score(completion, options, source)
        text = completion.content.strip()
        if score is not None and text and text not in seen:
            seen.add(text)
            candidates.append(Scored(text, score))
    if len(candidates) < 2:
        if sum(completion_score(c, options, source) is not None for c in record.completions) < 2:
            detail = f"fewer than two answers have a {source!r} score"
            raise RowError(reason="missing_score", detail=detail)
        detail = "fewer than two distinct non-empty answers"
        raise RowError(reason="too_few_completions", detail=detail)
    prompt = [message.model_dump() for message in record.prompt]
    scores = [candidate.score for candidate in candidates]
    pairs = [
        Pair(prompt, candidates[i].text, candidates[j].text, scores[i], scores[j])
        for i, j in choose_pairs(prompt, scores, options)
    ]
    if not pairs:
        if len(set(scores)) == 1:
            detail = f"all {len(candidates)} answers score {candidates[0].score:g}"
            raise RowError(reason="tie", detail=detail)
        detail = f"no answer scores at least {options.min_margin:g} below the best"
        raise RowError(reason="margin_below_min", detail=detail)
    return pairs


def choose_pairs(
    prompt: list[MessageDict], scores: list[float], options: ConvertOptions
) -> list[tuple[int, int]]:
    """(chosen, rejected) positions in `scores`, the scores of one prompt's distinct candidate
    answers, in source order. Random choices draw from the prompt's generator (`prompt_rng`).

    Both converters call this: the per-row one from `ranked_pairs`, the vectorised one with
    the candidates it extracted with Polars.
    """

    def beats(better: int, worse: int) -> bool:
        gap = scores[better] - scores[worse]
        if options.ties == "keep":
            return gap >= options.min_margin
        return gap > 0 and gap >= options.min_margin

    if options.rejected == "all_pairs":
        # A tied couple kept under ties='keep' is emitted once, in source order.
        return [
            (first, second)
            for first, second in permutations(range(len(scores)), 2)
            if beats(first, second) and (scores[first] > scores[second] or first < second)
        ]
    rng = prompt_rng(prompt, options.seed)
    best = max(scores)
    chosen = rng.choice([index for index, score in enumerate(scores) if score == best])
    lower = [index for index in range(len(scores)) if index != chosen and beats(chosen, index)]
    if not lower:
        return []
    if options.rejected == "all_lower":
        return [(chosen, rejected) for rejected in lower]
    if options.rejected == "worst":
        worst = min(scores[index] for index in lower)
        lower = [index for index in lower if scores[index] == worst]
    return [(chosen, rng.choice(lower))]


def prompt_rng(prompt: list[MessageDict], seed: int) -> random.Random:
    """The prompt's own random generator: seeded with sha256(seed, prompt messages)."""
    payload = json.dumps([seed, prompt], ensure_ascii=False, separators=(",", ":"))
    return random.Random(int.from_bytes(hashlib.sha256(payload.encode()).digest()[:8], "big"))
