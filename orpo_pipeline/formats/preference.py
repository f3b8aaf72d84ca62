"""Formats that already hold one preference pair per row: HH-RLHF, TRL, LLaMA-Factory, Alpaca."""

from typing import Any

from orpo_pipeline.formats.conversation import (
    any_messages,
    check_alternation,
    content_text,
    hh_messages,
    join_input,
    messages,
    prompt_messages,
    split_last_answers,
)
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

SCORE_FIELDS = {
    "chosen": ("score_chosen", "chosen_score", "rating_chosen", "chosen_rating", "chosen-rating"),
    "rejected": (
        "score_rejected",
        "rejected_score",
        "rating_rejected",
        "rejected_rating",
        "rejected-rating",
    ),
}
"""Score fields of each side, in the order they are looked for (per row and vectorised)."""


def parse_hh_rlhf(row: dict[str, Any], options: ConvertOptions) -> list[Pair]:
    """Anthropic HH-RLHF: two full transcripts; the prompt is their turn-level common prefix.

    Splitting whole turns (not characters, not the right-most 'Assistant:') keeps words intact and
    rejects rows whose transcripts diverge before the last answer (data-reference §2.4).
    """
    chosen = check_alternation(
        hh_messages(text_field(row, "chosen"), where="'chosen'"), where="'chosen'"
    )
    rejected = check_alternation(
        hh_messages(text_field(row, "rejected"), where="'rejected'"), where="'rejected'"
    )
    prompt, chosen_answer, rejected_answer = split_last_answers(chosen, rejected)
    return [Pair(prompt, chosen_answer, rejected_answer)]


def is_hh_rlhf(row: dict[str, Any]) -> bool:
    """Both `chosen` and `rejected` are transcripts starting with a Human or Assistant tag."""
    return "prompt" not in row and all(
        isinstance(row.get(key), str) and row[key].startswith(("\n\nHuman:", "\n\nAssistant:"))
        for key in ("chosen", "rejected")
    )


def parse_trl_preference(row: dict[str, Any], options: ConvertOptions) -> list[Pair]:
    """TRL preference rows: standard (strings) or conversational (messages), prompt explicit or not.

    Implicit prompts are recovered as the common prefix: whole messages for conversations; for
    strings, the common characters backed off to the last whitespace so no word is split.
    Full conversations in `chosen`/`rejected` (as in UltraFeedback-binarized) take their prompt
    from the conversations, like TRL's `maybe_extract_prompt`.
    """
    chosen, rejected = field(row, "chosen"), field(row, "rejected")
    system = _optional_text(row, "system")
    scores = (_score(row, "chosen"), _score(row, "rejected"))
    if isinstance(chosen, list) and isinstance(rejected, list):
        chosen_messages = any_messages(chosen, where="'chosen'")
        rejected_messages = any_messages(rejected, where="'rejected'")
        if row.get("prompt") is not None and _is_answer_only(chosen_messages, rejected_messages):
            prompt = prompt_messages(row["prompt"], where="'prompt'", system=system)
            return [
                Pair(
                    prompt, chosen_messages[0]["content"], rejected_messages[0]["content"], *scores
                )
            ]
        prompt, chosen_text, rejected_text = split_last_answers(chosen_messages, rejected_messages)
        if isinstance(row.get("prompt"), list):
            given = prompt_messages(row["prompt"], where="'prompt'")
            # Conversations that already start with the given prompt must not repeat it.
            prompt = prompt if prompt[: len(given)] == given else [*given, *prompt]
        return [Pair(_with_system(prompt, system), chosen_text, rejected_text, *scores)]
    if isinstance(chosen, str) and isinstance(rejected, str):
        if row.get("prompt") is not None:
            prompt = prompt_messages(row["prompt"], where="'prompt'", system=system)
            return [Pair(prompt, chosen, rejected, *scores)]
        prompt_text, chosen_text, rejected_text = split_common_text(chosen, rejected)
        prompt = prompt_messages(prompt_text, where="the common prefix", system=system)
        return [Pair(prompt, chosen_text, rejected_text, *scores)]
    detail = "'chosen' and 'rejected' should both be strings or both be lists of messages"
    raise RowError(reason="wrong_type", detail=detail)


def is_trl_preference(row: dict[str, Any]) -> bool:
    """`chosen` and `rejected` are both strings or both message lists."""
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if isinstance(chosen, str) and isinstance(rejected, str):
        return True
    return _is_message_list(chosen) and _is_message_list(rejected)


def _is_message_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and isinstance(value[0], dict)
        and ("role" in value[0] or "from" in value[0])
    )


def _is_answer_only(chosen: list[MessageDict], rejected: list[MessageDict]) -> bool:
    return (
        len(chosen) == len(rejected) == 1
        and chosen[0]["role"] == rejected[0]["role"] == "assistant"
    )


def split_common_text(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split two texts at their common prefix, backed off to a word boundary.

    Raises:
        RowError: `identical_responses`, `response_missing` (one text is a prefix of the other),
            or `no_common_prompt` (the texts share no whole word).
    """
    if chosen == rejected:
        raise RowError(
            reason="identical_responses", detail="chosen and rejected texts are identical"
        )
    shared = 0
    for left, right in zip(chosen, rejected, strict=False):
        if left != right:
            break
        shared += 1
    if shared in (len(chosen), len(rejected)):
        side = "chosen" if shared == len(chosen) else "rejected"
        detail = f"the {side} text is a prefix of the other; it has no answer of its own"
        raise RowError(reason="response_missing", detail=detail)
    while shared > 0 and not chosen[shared - 1].isspace():
        shared -= 1
    if not chosen[:shared].strip():
        detail = "chosen and rejected share no leading words, so no prompt can be extracted"
        raise RowError(reason="no_common_prompt", detail=detail)
    return chosen[:shared], chosen[shared:], rejected[shared:]


def parse_sharegpt_preference(row: dict[str, Any], options: ConvertOptions) -> list[Pair]:
    """LLaMA-Factory ShareGPT ranking rows: `conversations` up to the last human turn, then
    `chosen` and `rejected` as one {from, value} message each (or plain strings)."""
    system = _optional_text(row, "system")
    prompt = prompt_messages(
        list_field(row, "conversations"), where="'conversations'", system=system
    )
    return [Pair(prompt, _answer(row, "chosen"), _answer(row, "rejected"))]


def is_sharegpt_preference(row: dict[str, Any]) -> bool:
    """`conversations` is a list and `chosen`/`rejected` are single messages or strings."""
    return isinstance(row.get("conversations"), list) and all(
        isinstance(row.get(key), dict | str) for key in ("chosen", "rejected")
    )


def _answer(row: dict[str, Any], name: str) -> str:
    value = field(row, name)
    if isinstance(value, dict):
        found = any_messages([value], where=f"'{name}'")
        if found[0]["role"] != "assistant":
            detail = f"'{name}' should be an assistant message, got role {found[0]['role']!r}"
            raise RowError(reason="wrong_role", detail=detail)
        return found[0]["content"]
    return content_text(value, where=f"'{name}'")


def parse_llamafactory_v1(row: dict[str, Any], options: ConvertOptions) -> list[Pair]:
    """LLaMA-Factory v1 rows: `chosen_messages` and `rejected_messages`, full conversations whose
    contents are lists of text parts; they must differ only in the last assistant answer."""
    chosen = messages(list_field(row, "chosen_messages"), where="'chosen_messages'")
    rejected = messages(list_field(row, "rejected_messages"), where="'rejected_messages'")
    prompt, chosen_text, rejected_text = split_last_answers(chosen, rejected)
    return [Pair(prompt, chosen_text, rejected_text)]


def is_llamafactory_v1(row: dict[str, Any]) -> bool:
    """Both `chosen_messages` and `rejected_messages` are lists."""
    return isinstance(row.get("chosen_messages"), list) and isinstance(
        row.get("rejected_messages"), list
    )


ALPACA_PROMPT_FIELDS = ("instruction", "question")
ALPACA_ANSWER_FIELDS = {
    "chosen": ("chosen", "chosen_response"),
    "rejected": ("rejected", "rejected_response"),
}


def parse_alpaca_preference(row: dict[str, Any], options: ConvertOptions) -> list[Pair]:
    """Alpaca-style preference rows: `instruction` (+ `input`, `system`, `history`) or `question`
    (Intel orca pairs), with `chosen`/`rejected` or `chosen_response`/`rejected_response`."""
    prompt = alpaca_prompt(row)
    chosen = text_field(row, _first_present(row, ALPACA_ANSWER_FIELDS["chosen"]))
    rejected = text_field(row, _first_present(row, ALPACA_ANSWER_FIELDS["rejected"]))
    return [Pair(prompt, chosen, rejected, _score(row, "chosen"), _score(row, "rejected"))]


def is_alpaca_preference(row: dict[str, Any]) -> bool:
    """An instruction or question field and string chosen/rejected answers."""
    return any(isinstance(row.get(key), str) for key in ALPACA_PROMPT_FIELDS) and all(
        any(isinstance(row.get(key), str) for key in keys) for keys in ALPACA_ANSWER_FIELDS.values()
    )


def alpaca_prompt(row: dict[str, Any]) -> list[MessageDict]:
    """Prompt messages of an Alpaca row: system, history turns, then instruction + '\\n' + input.

    Raises:
        RowError: `missing_field`, `wrong_type`.
    """
    instruction = text_field(row, _first_present(row, ALPACA_PROMPT_FIELDS))
    extra = row.get("input")
    if extra is not None and not isinstance(extra, str):
        raise RowError(reason="wrong_type", detail="field 'input' should be a string")
    text = join_input(instruction, extra)
    system = _optional_text(row, "system")
    prompt = [{"role": "system", "content": system}] if system else []
    history = row.get("history") or []
    if not isinstance(history, list):
        raise RowError(reason="wrong_type", detail="field 'history' should be a list of pairs")
    for index, turn in enumerate(history):
        if not (
            isinstance(turn, list) and len(turn) == 2 and all(isinstance(t, str) for t in turn)
        ):
            detail = f"history[{index}] should be a [question, answer] pair of strings"
            raise RowError(reason="wrong_type", detail=detail)
        prompt += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    return [*prompt, {"role": "user", "content": text}]


def _first_present(row: dict[str, Any], names: tuple[str, ...]) -> str:
    for name in names:
        if row.get(name) is not None:
            return name
    return names[0]


def _optional_text(row: dict[str, Any], name: str) -> str | None:
    value = row.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise RowError(reason="wrong_type", detail=f"field {name!r} should be a string")
    return value


def _with_system(prompt: list[MessageDict], system: str | None) -> list[MessageDict]:
    if system is None or (prompt and prompt[0]["role"] == "system"):
        return prompt
    return [{"role": "system", "content": system}, *prompt]


def _score(row: dict[str, Any], side: str) -> float | None:
    for name in SCORE_FIELDS[side]:
        value = row.get(name)
        if isinstance(value, int | float) and (score := number(value)) is not None:
            return score
    return None
