"""Pairwise judgments (Chatbot Arena, MT-bench, AlpacaEval): a prompt, two answers, a verdict.

The winner decides the pair. Ties and judge errors are dropped with a reason. Judgments of the
same prompt and the same two answers are grouped, whichever order the answers were shown in;
when they disagree the group is dropped (`disagreement='drop'`) or follows the majority
(`disagreement='majority'`; an even split is dropped).
"""

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

from orpo_pipeline.formats.conversation import any_messages, content_text, split_last_answers
from orpo_pipeline.formats.mapping import verdict_key
from orpo_pipeline.formats.options import ConvertOptions
from orpo_pipeline.formats.rows import Pair, Pending, RowError, check_pair, field, text_field
from orpo_pipeline.records import PairwiseJudgment

ARENA_WINNERS = {"model_a": "a", "model_b": "b", "tie": "tie", "tie (bothbad)": "tie"}
ALPACA_EVAL_PREFERENCES = {"1": "a", "2": "b", "0": "tie", "null": "error"}
VERDICT_REASONS = {"tie": "tie", "error": "judge_error"}


def parse_arena(row: dict[str, Any], options: ConvertOptions) -> list[PairwiseJudgment]:
    """Chatbot Arena / MT-bench human judgments: `conversation_a`, `conversation_b`, `winner`.

    The conversations must share every message but the last answer (Arena rows with `turn > 1`
    differ in every assistant turn and are rejected with `diverges_before_last_turn`).
    """
    verdict = _lookup(row, "winner", ARENA_WINNERS)
    conversation_a = any_messages(field(row, "conversation_a"), where="'conversation_a'")
    conversation_b = any_messages(field(row, "conversation_b"), where="'conversation_b'")
    prompt, answer_a, answer_b = split_last_answers(conversation_a, conversation_b)
    return [
        PairwiseJudgment(prompt=prompt, response_a=answer_a, response_b=answer_b, winner=verdict)
    ]


def is_arena(row: dict[str, Any]) -> bool:
    """`conversation_a`, `conversation_b` and `winner` are present."""
    return all(key in row for key in ("conversation_a", "conversation_b", "winner"))


def parse_arena_kaggle(row: dict[str, Any], options: ConvertOptions) -> list[PairwiseJudgment]:
    """LMSYS Arena 55k (Kaggle): `prompt`, `response_a`, `response_b` as JSON-encoded lists of
    turns, and one-hot `winner_model_a`, `winner_model_b`, `winner_tie`."""
    prompts = _turns(row, "prompt")
    answers_a, answers_b = _turns(row, "response_a"), _turns(row, "response_b")
    if not len(prompts) == len(answers_a) == len(answers_b):
        detail = f"{len(prompts)} prompts but {len(answers_a)} and {len(answers_b)} responses"
        raise RowError(reason="turns_mismatch", detail=detail)
    conversation_a = _interleave(prompts, answers_a)
    conversation_b = _interleave(prompts, answers_b)
    prompt, answer_a, answer_b = split_last_answers(conversation_a, conversation_b)
    flags = {name: row.get(f"winner_{name}") for name in ("model_a", "model_b", "tie")}
    chosen = [name for name, flag in flags.items() if flag in (1, True, "1")]
    if len(chosen) != 1:
        detail = f"exactly one of winner_model_a, winner_model_b, winner_tie should be 1: {flags}"
        raise RowError(reason="unknown_winner", detail=detail)
    verdict = ARENA_WINNERS[chosen[0]]
    return [
        PairwiseJudgment(prompt=prompt, response_a=answer_a, response_b=answer_b, winner=verdict)
    ]


def _turns(row: dict[str, Any], name: str) -> list[str]:
    value = field(row, name)
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            decoded = [value]
        value = decoded if isinstance(decoded, list) else [value]
    if not isinstance(value, list):
        raise RowError(reason="wrong_type", detail=f"field {name!r} should be a list of turns")
    return [content_text(turn, where=f"{name}[{index}]") for index, turn in enumerate(value)]


def _interleave(prompts: list[str], answers: list[str]) -> list[dict[str, str]]:
    conversation = []
    for prompt, answer in zip(prompts, answers, strict=True):
        conversation += [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": answer},
        ]
    return conversation


def is_arena_kaggle(row: dict[str, Any]) -> bool:
    """`prompt`, `response_a`, `response_b` and `winner_model_a` are present."""
    return all(key in row for key in ("prompt", "response_a", "response_b", "winner_model_a"))


def parse_alpaca_eval(row: dict[str, Any], options: ConvertOptions) -> list[PairwiseJudgment]:
    """AlpacaEval annotations: `instruction`, `output_1`, `output_2`, `preference` (1 or 2 names
    the better output; 0 is a tie; null an error). Floats such as 2.0 are read as 2. A row
    without the `preference` key is `missing_field`."""
    prompt = [{"role": "user", "content": text_field(row, "instruction")}]
    if "preference" not in row:
        detail = "field 'preference' (the judge's verdict) is missing"
        raise RowError(reason="missing_field", detail=detail)
    verdict = _lookup(row, "preference", ALPACA_EVAL_PREFERENCES, missing_ok=True)
    return [
        PairwiseJudgment(
            prompt=prompt,
            response_a=text_field(row, "output_1"),
            response_b=text_field(row, "output_2"),
            winner=verdict,
        )
    ]


def is_alpaca_eval(row: dict[str, Any]) -> bool:
    """`instruction`, `output_1`, `output_2` and the verdict `preference` are present."""
    return all(key in row for key in ("instruction", "output_1", "output_2", "preference"))


def _lookup(
    row: dict[str, Any], name: str, meanings: dict[str, str], *, missing_ok: bool = False
) -> Any:
    if not missing_ok:
        field(row, name)
    key = verdict_key(row.get(name))
    if key not in meanings:
        detail = f"{name}={row.get(name)!r}; expected one of {sorted(meanings)}"
        raise RowError(reason="unknown_winner", detail=detail)
    return meanings[key]


def judgment_pairs(
    pending: list[Pending], options: ConvertOptions
) -> Iterator[tuple[Pending, list[Pair] | RowError]]:
    """Pairs from judgments, in input order: each row gets its pairs or the reason it has none.

    A group of agreeing judgments gives one pair, attributed to its first row; the other rows of
    the group count as converted with no pair of their own.
    """
    outcomes: dict[int, list[Pair] | RowError] = {}
    groups: dict[tuple[str, str, str], list[tuple[int, Pair]]] = {}
    for index, item in enumerate(pending):
        judgment: PairwiseJudgment = item.records[0]
        if judgment.winner in VERDICT_REASONS:
            detail = f"the judge's verdict is {judgment.winner!r}"
            outcomes[index] = RowError(reason=VERDICT_REASONS[judgment.winner], detail=detail)
            continue
        prompt = [message.model_dump() for message in judgment.prompt]
        chosen, rejected = (
            (judgment.response_a, judgment.response_b)
            if judgment.winner == "a"
            else (judgment.response_b, judgment.response_a)
        )
        try:
            pair = check_pair(Pair(prompt, chosen, rejected))
        except RowError as error:
            outcomes[index] = error
            continue
        prompt_key = json.dumps(prompt, ensure_ascii=False, sort_keys=True)
        key = (prompt_key, *sorted((pair.chosen, pair.rejected)))
        groups.setdefault(key, []).append((index, pair))
    for votes in groups.values():
        outcomes.update(_decide(votes, options))
    for index, item in enumerate(pending):
        yield item, outcomes[index]


def _decide(
    votes: list[tuple[int, Pair]], options: ConvertOptions
) -> dict[int, list[Pair] | RowError]:
    tally = Counter(pair.chosen for _, pair in votes)
    ranking = tally.most_common()
    if len(ranking) > 1 and (options.disagreement == "drop" or ranking[0][1] == ranking[1][1]):
        split = f"{ranking[0][1]} vs {ranking[1][1]}"
        detail = f"{len(votes)} judgments of the same two answers disagree ({split})"
        return {index: RowError(reason="judgments_disagree", detail=detail) for index, _ in votes}
    winner = ranking[0][0]
    outcomes: dict[int, list[Pair] | RowError] = {}
    first = True
    for index, pair in votes:
        if pair.chosen != winner:
            detail = f"outvoted {ranking[0][1]} to {tally[pair.chosen]} by other judgments"
            outcomes[index] = RowError(reason="outvoted", detail=detail)
        else:
            outcomes[index] = [pair] if first else []
            first = False
    return outcomes
