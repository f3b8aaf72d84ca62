"""Messages from the shapes conversations arrive in: role/content, from/value, HH transcripts."""

import itertools
import re
from typing import Any

from orpo_pipeline.formats.rows import MessageDict, RowError, readable

ROLE_NAMES: dict[str, str] = {
    "system": "system",
    "user": "user",
    "human": "user",
    "prompter": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "tool": "tool",
    "observation": "tool",
    "function": "tool",
    "ipython": "tool",
    "function_call": "assistant",
}
"""Role values seen in ShareGPT, OpenAI, OpenAssistant and LLaMA-Factory data, mapped to ours."""

_TEXT_KEYS = ("text", "value", "content", "answer")


def role(value: Any, *, where: str) -> str:
    """Our role name for a source role value ('human' -> 'user', 'gpt' -> 'assistant').

    Raises:
        RowError: `unknown_role`.
    """
    if isinstance(value, str) and value.lower() in ROLE_NAMES:
        return ROLE_NAMES[value.lower()]
    known = sorted(ROLE_NAMES)
    raise RowError(
        reason="unknown_role", detail=f"{where} has role {value!r}; known roles: {known}"
    )


def content_text(value: Any, *, where: str) -> str:
    """Text of a message content: a string, a list of text parts, or an object with one text.

    Text parts are `{"type": "text", "text" | "value": ...}` (OpenAI, LLaMA-Factory v1); an object
    content such as Arena-Hard's `{"answer": ...}` contributes its text field.

    Raises:
        RowError: `wrong_type` for anything else (images, numbers, nested objects).
    """
    value = readable(value, where=where)
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(_part_text(part, where=where) for part in value)
    if isinstance(value, dict):
        return _part_text(value, where=where)
    detail = f"{where} content should be text or a list of text parts, got {value!r:.80}"
    raise RowError(reason="wrong_type", detail=detail)


def _part_text(part: Any, *, where: str) -> str:
    if isinstance(part, str):
        return part
    if isinstance(part, dict) and part.get("type", "text") == "text":
        for key in _TEXT_KEYS:
            if isinstance(part.get(key), str):
                return part[key]
    detail = f"{where} has a content part that is not text: {part!r:.80}"
    raise RowError(reason="wrong_type", detail=detail)


def messages(
    value: Any, *, where: str, role_key: str = "role", content_key: str = "content"
) -> list[MessageDict]:
    """Messages from a list of objects (OpenAI `role`/`content`; ShareGPT `from`/`value`).

    Raises:
        RowError: `wrong_type`, `missing_field` or `unknown_role`.
    """
    value = readable(value, where=where)
    if not isinstance(value, list):
        raise RowError(
            reason="wrong_type", detail=f"{where} should be a list of messages, got {value!r:.80}"
        )
    result = []
    for index, item in enumerate(value):
        here = f"{where}[{index}]"
        if not isinstance(item, dict):
            raise RowError(
                reason="wrong_type", detail=f"{here} should be an object, got {item!r:.80}"
            )
        if item.get(role_key) is None or item.get(content_key) is None:
            detail = f"{here} needs {role_key!r} and {content_key!r}; has {sorted(item)}"
            raise RowError(reason="missing_field", detail=detail)
        result.append(
            {
                "role": role(item[role_key], where=here),
                "content": content_text(item[content_key], where=here),
            }
        )
    return result


def any_messages(value: Any, *, where: str) -> list[MessageDict]:
    """Messages from an OpenAI (`role`/`content`) or ShareGPT (`from`/`value`) list."""
    if isinstance(value, list) and value and isinstance(value[0], dict) and "from" in value[0]:
        return messages(value, where=where, role_key="from", content_key="value")
    return messages(value, where=where)


def prompt_messages(value: Any, *, where: str, system: str | None = None) -> list[MessageDict]:
    """Prompt messages from a string (one user turn) or a message list, after an optional system.

    Raises:
        RowError: `wrong_type` when the prompt is neither.
    """
    head = [{"role": "system", "content": system}] if system else []
    value = readable(value, where=where)
    if isinstance(value, str):
        return [*head, {"role": "user", "content": value}]
    if isinstance(value, list):
        return [*head, *any_messages(value, where=where)]
    raise RowError(reason="wrong_type", detail=f"{where} should be a string or a list of messages")


def join_input(instruction: str, extra: str | None) -> str:
    """Alpaca's prompt text: instruction + '\\n' + input when the input is not blank."""
    return f"{instruction}\n{extra}" if extra and extra.strip() else instruction


_HH_TAG = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def hh_messages(transcript: str, *, where: str) -> list[MessageDict]:
    """Messages of an HH-RLHF transcript ('\\n\\nHuman: ... \\n\\nAssistant: ...'), stripped.

    Raises:
        RowError: `malformed_transcript` when text precedes the first tag or there is no tag.
    """
    parts = _HH_TAG.split(transcript)
    # parts = [before, tag1, text1, tag2, text2, ...]
    if parts[0].strip() or len(parts) == 1:
        detail = f"{where} does not start with '\\n\\nHuman:' or '\\n\\nAssistant:'"
        raise RowError(reason="malformed_transcript", detail=detail)
    return [
        {"role": _HH_ROLES[tag], "content": text.strip()}
        for tag, text in zip(parts[1::2], parts[2::2], strict=True)
    ]


def check_alternation(conversation: list[MessageDict], *, where: str) -> list[MessageDict]:
    """Return `conversation` if user and assistant turns alternate after any system message.

    Raises:
        RowError: `roles_not_alternating`, naming the first repeated role.
    """
    turns = (
        conversation[1:] if conversation and conversation[0]["role"] == "system" else conversation
    )
    for index, (before, after) in enumerate(itertools.pairwise(turns), start=1):
        if before["role"] == after["role"]:
            detail = f"{where} has two {after['role']} turns in a row (turn {index + 1})"
            raise RowError(reason="roles_not_alternating", detail=detail)
    return conversation


def split_last_answers(
    chosen: list[MessageDict], rejected: list[MessageDict]
) -> tuple[list[MessageDict], str, str]:
    """Split two conversations at their turn-level common prefix into (prompt, chosen, rejected).

    The conversations must share every message but one final assistant answer on each side.

    Raises:
        RowError: `empty_prompt` (nothing shared), `identical_responses` (nothing differs),
            `response_missing` (one conversation is a prefix of the other), or
            `diverges_before_last_turn`.
    """
    shared = 0
    for left, right in zip(chosen, rejected, strict=False):
        if left != right:
            break
        shared += 1
    chosen_rest, rejected_rest = chosen[shared:], rejected[shared:]
    if shared == 0 and chosen_rest and rejected_rest:
        detail = "the two conversations differ from their first message; they share no prompt"
        raise RowError(reason="empty_prompt", detail=detail)
    if not chosen_rest and not rejected_rest:
        raise RowError(
            reason="identical_responses", detail="chosen and rejected conversations are identical"
        )
    if not chosen_rest or not rejected_rest:
        side = "chosen" if not chosen_rest else "rejected"
        detail = f"the {side} conversation is a prefix of the other; it has no answer of its own"
        raise RowError(reason="response_missing", detail=detail)
    if (
        len(chosen_rest) > 1
        or len(rejected_rest) > 1
        or chosen_rest[0]["role"] != "assistant"
        or rejected_rest[0]["role"] != "assistant"
    ):
        detail = (
            f"the conversations differ from message {shared} on "
            f"({len(chosen_rest)} vs {len(rejected_rest)} messages left), not only in the last "
            "assistant answer"
        )
        raise RowError(reason="diverges_before_last_turn", detail=detail)
    return chosen[:shared], chosen_rest[0]["content"], rejected_rest[0]["content"]
