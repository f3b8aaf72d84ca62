"""Row-level building blocks: the row error, the pair draft and the checks every pair passes."""

from typing import Any, NamedTuple

from orpo_pipeline.errors import DataError
from orpo_pipeline.formats.readers import MAX_NESTING, TooDeep

MessageDict = dict[str, str]
"""One message as a plain dict: {'role': ..., 'content': ...}."""


class RowError(DataError):
    """A row that cannot become a pair: `reason` is a snake_case fact, `detail` names the field."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Pair(NamedTuple):
    """A pair before it gets its id and source: prompt messages, two answer texts, scores."""

    prompt: list[MessageDict]
    chosen: str
    rejected: str
    score_chosen: float | None = None
    score_rejected: float | None = None


class Pending(NamedTuple):
    """A parsed row whose pairs depend on other rows (pairwise, SFT and unpaired kinds)."""

    file: str
    line: int
    raw: str
    source: str
    records: list[Any]


def field(row: dict[str, Any], name: str) -> Any:
    """Value of `name` in `row`; dotted names reach into nested objects ('meta.question').

    Raises:
        RowError: `missing_field` when the field (or a parent) is absent or null;
            `too_deeply_nested` when it nests deeper than the readers keep.
    """
    value: Any = row
    for part in name.split("."):
        if not isinstance(value, dict) or value.get(part) is None:
            raise RowError(reason="missing_field", detail=f"field {name!r} is missing or null")
        value = readable(value[part], where=f"field {name!r}")
    return value


def readable(value: Any, *, where: str) -> Any:
    """`value`, unless the reader replaced it for nesting too deeply.

    Raises:
        RowError: `too_deeply_nested`.
    """
    if isinstance(value, TooDeep):
        detail = f"{where} nests deeper than {MAX_NESTING} levels"
        raise RowError(reason="too_deeply_nested", detail=detail)
    return value


def text_field(row: dict[str, Any], name: str) -> str:
    """String value of `name` in `row`.

    Raises:
        RowError: `missing_field` or `wrong_type` (the field holds no string).
    """
    value = field(row, name)
    if not isinstance(value, str):
        raise RowError(
            reason="wrong_type", detail=f"field {name!r} should be a string, got {_type(value)}"
        )
    return value


def list_field(row: dict[str, Any], name: str) -> list[Any]:
    """List value of `name` in `row`.

    Raises:
        RowError: `missing_field` or `wrong_type` (the field holds no list).
    """
    value = field(row, name)
    if not isinstance(value, list):
        raise RowError(
            reason="wrong_type", detail=f"field {name!r} should be a list, got {_type(value)}"
        )
    return value


def number(value: Any, *, integral: bool = False) -> float | int | None:
    """A score or rank from a number or numeric string; None for missing, NaN, 'N/A', an integer
    beyond the float range or, when `integral`, a fractional or infinite value."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return None
    try:
        as_float = float(value)
    except OverflowError:  # an int such as 10**400
        return None
    if integral:
        return int(value) if as_float.is_integer() else None
    return as_float


def _type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def check_prompt(prompt: list[MessageDict]) -> None:
    """Raise unless the prompt has messages, none blank, and ends with a user (or tool) turn.

    Raises:
        RowError: `empty_prompt`, `empty_message` or `prompt_not_ending_with_user`.
    """
    if not prompt:
        raise RowError(reason="empty_prompt", detail="the prompt has no messages")
    for index, message in enumerate(prompt):
        if not message["content"].strip():
            detail = f"prompt message {index} ({message['role']}) is empty"
            raise RowError(reason="empty_message", detail=detail)
    if prompt[-1]["role"] not in ("user", "tool"):
        detail = f"the prompt ends with a {prompt[-1]['role']} message, not a user message"
        raise RowError(reason="prompt_not_ending_with_user", detail=detail)


def check_pair(pair: Pair) -> Pair:
    """Return the pair with stripped answers if it is trainable.

    Raises:
        RowError: those of `check_prompt`, `empty_response` or `identical_responses`.
    """
    check_prompt(pair.prompt)
    chosen = pair.chosen.strip()
    rejected = pair.rejected.strip()
    if not chosen or not rejected:
        side = "chosen" if not chosen else "rejected"
        raise RowError(reason="empty_response", detail=f"the {side} answer is empty")
    if chosen == rejected:
        raise RowError(
            reason="identical_responses", detail="chosen and rejected answers are identical"
        )
    return pair._replace(chosen=chosen, rejected=rejected)
