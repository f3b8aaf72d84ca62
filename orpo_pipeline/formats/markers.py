"""HH-style role markers left inside text fields: split transcripts into turns, strip labels.

Real files outside HH-RLHF carry its markers in single fields: a CSV prompt holding a whole
'\\n\\nHuman: ... \\n\\nAssistant:' transcript, or answers starting with 'Assistant: '. Only text
that *starts* with a marker is touched, so a prompt that quotes a dialogue further in is kept.
A prompt message is split only when its first marker names its own role.
"""

import re
from collections import Counter
from typing import Any

from orpo_pipeline.formats.conversation import hh_messages
from orpo_pipeline.formats.rows import MessageDict, Pair
from orpo_pipeline.formats.sft import Unpaired
from orpo_pipeline.records import Message, PairwiseJudgment, RankedRecord, SFTRecord

_LEADING_MARKER = re.compile(r"\s*(Human|Assistant):[ \t]?")
_MARKER_ROLES = {"Human": "user", "Assistant": "assistant"}

TRANSCRIPT_SPLIT = "transcripts_split"
LABEL_STRIPPED = "labels_stripped"


def strip_markers(record: Any, changes: Counter[str]) -> Any:
    """`record` with role markers split or stripped from its prompt and answers; each changed
    text is counted in `changes` (`transcripts_split` or `labels_stripped`)."""
    if isinstance(record, Pair):
        return record._replace(
            prompt=prompt_turns(record.prompt, changes),
            chosen=answer_text(record.chosen, changes),
            rejected=answer_text(record.rejected, changes),
        )
    if isinstance(record, SFTRecord):
        conversation = [message.model_dump() for message in record.messages]
        answer = {**conversation[-1], "content": answer_text(conversation[-1]["content"], changes)}
        return record.model_copy(
            update={"messages": _messages([*prompt_turns(conversation[:-1], changes), answer])}
        )
    if isinstance(record, RankedRecord):
        completions = [
            c.model_copy(update={"content": answer_text(c.content, changes)})
            for c in record.completions
        ]
        return record.model_copy(
            update={
                "prompt": _messages(_prompt(record.prompt, changes)),
                "completions": completions,
            }
        )
    if isinstance(record, PairwiseJudgment):
        return record.model_copy(
            update={
                "prompt": _messages(_prompt(record.prompt, changes)),
                "response_a": answer_text(record.response_a, changes),
                "response_b": answer_text(record.response_b, changes),
            }
        )
    if isinstance(record, Unpaired):
        return record._replace(
            prompt=prompt_turns(record.prompt, changes), answer=answer_text(record.answer, changes)
        )
    return record


def prompt_turns(prompt: list[MessageDict], changes: Counter[str]) -> list[MessageDict]:
    """Prompt messages with every transcript split into its turns and leading labels removed.

    A transcript's last turn, when it is an empty 'Assistant:' (the cue for the answer), is
    dropped.
    """
    result: list[MessageDict] = []
    for message in prompt:
        marker = _LEADING_MARKER.match(message["content"])
        if marker is None or _MARKER_ROLES[marker[1]] != message["role"]:
            result.append(message)
            continue
        turns = hh_messages("\n\n" + message["content"].lstrip(), where="prompt")
        changes[TRANSCRIPT_SPLIT if len(turns) > 1 else LABEL_STRIPPED] += 1
        if len(turns) > 1 and turns[-1]["role"] == "assistant" and not turns[-1]["content"]:
            turns = turns[:-1]
        result += turns
    return result


def answer_text(text: str, changes: Counter[str]) -> str:
    """An answer without a leading 'Assistant: ' or 'Human: ' label."""
    marker = _LEADING_MARKER.match(text)
    if marker is None:
        return text
    changes[LABEL_STRIPPED] += 1
    return text[marker.end() :]


def _prompt(messages: list[Message], changes: Counter[str]) -> list[MessageDict]:
    return prompt_turns([message.model_dump() for message in messages], changes)


def _messages(messages: list[MessageDict]) -> list[Message]:
    return [Message.model_validate(message) for message in messages]
