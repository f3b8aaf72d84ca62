"""FastChat llm_judge folders (MT-bench): questions, model answers and pairwise judgments, joined.

FastChat's layout (`fastchat/llm_judge/data/<bench>/`):

- `question.jsonl`: {question_id, category, turns: [str, ...]};
- `model_answer/<model>.jsonl`: {question_id, model_id, choices: [{index, turns: [str, ...]}]};
- `model_judgment/<judge>_pair.jsonl`: {question_id, model_1, model_2, g1_winner, g2_winner,
  judge, turn, ...}. `g1` is the judge's verdict with model_1's answer shown first, `g2` with the
  order swapped; both are already mapped back to 'model_1', 'model_2', 'tie' or 'error'.

Each judgment line is one input row. The prompt is the question's turns up to the judged one,
with the earlier answers of the winning model as assistant turns (the chosen answer continues
its own conversation); the two answers are the models' answers to the judged turn. The two
judging orders must agree: a disagreement is `judge_orders_disagree`, a tie `tie`.
"""

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from orpo_pipeline.errors import ConfigError, DataError
from orpo_pipeline.formats.options import ConvertOptions
from orpo_pipeline.formats.readers import BadRow, ReadItem, SourceRow, read_rows
from orpo_pipeline.formats.rows import RowError, field, text_field
from orpo_pipeline.records import PairwiseJudgment

QUESTIONS = "question.jsonl"
ANSWERS = "model_answer"
JUDGMENTS = "model_judgment"
PAIR_JUDGMENTS = "*_pair.jsonl"
WINNERS = {"model_1": "a", "model_2": "b", "tie": "tie", "error": "error"}
JOINED = "_llm_judge"
"""Key under which the reader adds the joined question and answers to a judgment row."""

LAYOUT_HELP = (
    "a FastChat llm_judge folder holds question.jsonl, model_answer/<model>.jsonl and "
    "model_judgment/<judge>_pair.jsonl; pass the folder, or question.jsonl, the model_answer "
    "folder (or answer files) and the judgment files"
)


class JudgeFiles(NamedTuple):
    """The files of one llm_judge conversion."""

    questions: Path
    answers: tuple[Path, ...]
    """One JSONL file per model; the file name (without .jsonl) is the model name."""
    judgments: tuple[Path, ...]

    def all(self) -> tuple[Path, ...]:
        return (self.questions, *self.answers, *self.judgments)


def judge_files(paths: list[Path]) -> JudgeFiles | None:
    """The llm_judge layout `paths` describe, or None when they describe something else.

    Either one folder with `question.jsonl`, `model_answer/` and `model_judgment/`, or paths
    naming a `question.jsonl` among answer folders or files and `*_pair.jsonl` judgment files.

    Raises:
        ConfigError: the paths name question.jsonl but no answers or no judgments.
    """
    if len(paths) == 1 and paths[0].is_dir() and (paths[0] / QUESTIONS).is_file():
        folder = paths[0]
        if not (folder / ANSWERS).is_dir() or not (folder / JUDGMENTS).is_dir():
            msg = f"{folder} has {QUESTIONS} but no {ANSWERS}/ or {JUDGMENTS}/: {LAYOUT_HELP}"
            raise ConfigError(msg)
        return _checked(
            folder / QUESTIONS,
            sorted((folder / ANSWERS).glob("*.jsonl")),
            sorted((folder / JUDGMENTS).glob(PAIR_JUDGMENTS)),
        )
    questions = [path for path in paths if path.name == QUESTIONS and path.is_file()]
    if len(paths) < 2 or len(questions) != 1:
        return None
    answers: list[Path] = []
    judgments: list[Path] = []
    for path in paths:
        if path.is_dir():
            answers += sorted(path.glob("*.jsonl"))
        elif path.match(PAIR_JUDGMENTS) or path.parent.name == JUDGMENTS:
            judgments.append(path)
        elif path != questions[0]:
            answers.append(path)
    return _checked(questions[0], answers, judgments)


def _checked(questions: Path, answers: list[Path], judgments: list[Path]) -> JudgeFiles:
    if not answers or not judgments:
        missing = "model answers" if not answers else f"pairwise judgments ({PAIR_JUDGMENTS})"
        msg = f"{questions.parent}: no {missing} found; {LAYOUT_HELP}"
        raise ConfigError(msg)
    return JudgeFiles(questions, tuple(answers), tuple(judgments))


def joined_rows(files: JudgeFiles, options: ConvertOptions) -> Iterator[tuple[Path, ReadItem]]:
    """Every judgment row, with its question's turns and both models' answer turns added
    under `JOINED` (None where missing), as (judgment file, row)."""
    questions = _turns_by_id(files.questions, lambda value: value.get("turns"))
    answers = {
        path.name.removesuffix(".jsonl"): _turns_by_id(path, _answer_turns)
        for path in files.answers
    }
    for path in files.judgments:
        for row in read_rows(path, salvage=options.salvage):
            if isinstance(row, SourceRow):
                value = row.value
                key = value.get("question_id")
                joined = {
                    "question": questions.get(key) if _hashable(key) else None,
                    "answers": {
                        name: turns.get(key) if _hashable(key) else None
                        for name, turns in answers.items()
                    },
                }
                row = row._replace(value={**value, JOINED: joined})
            yield path, row


def _hashable(key: Any) -> bool:
    return isinstance(key, int | str)


def _answer_turns(value: dict[str, Any]) -> Any:
    choices = value.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0].get("turns")
    return None


def _turns_by_id(path: Path, turns_of: Callable[[dict[str, Any]], Any]) -> dict[Any, list[str]]:
    """question_id -> turns of a question or answer file (a later line wins, as in FastChat).

    Raises:
        DataError: a line is unreadable or has no question_id and list of string turns.
    """
    found: dict[Any, list[str]] = {}
    for row in read_rows(path):
        if isinstance(row, BadRow):
            msg = f"{path}: line {row.line}: {row.reason}: {row.detail}"
            raise DataError(msg)
        if not isinstance(row, SourceRow):
            continue
        turns = turns_of(row.value)
        key = row.value.get("question_id")
        if not _hashable(key) or not (
            isinstance(turns, list) and turns and all(isinstance(t, str) for t in turns)
        ):
            msg = (
                f"{path}: line {row.line} should have a question_id and a list of string turns "
                f"(FastChat's layout), got {json.dumps(row.value)[:200]}"
            )
            raise DataError(msg)
        found[key] = turns
    return found


def parse_llm_judge(row: dict[str, Any], options: ConvertOptions) -> list[PairwiseJudgment]:
    """One FastChat pairwise judgment joined with its question and the two models' answers."""
    question_id = field(row, "question_id")
    turn = field(row, "turn")
    if isinstance(turn, bool) or not isinstance(turn, int) or turn < 1:
        raise RowError(
            reason="wrong_type", detail=f"field 'turn' should be 1, 2, ..., got {turn!r}"
        )
    verdicts = [_verdict(row, name) for name in ("g1_winner", "g2_winner")]
    joined = field(row, JOINED)
    question = joined["question"]
    if question is None:
        detail = f"question_id {question_id!r} is not in {QUESTIONS}"
        raise RowError(reason="unknown_question", detail=detail)
    models = [text_field(row, "model_1"), text_field(row, "model_2")]
    answers = []
    for model in models:
        if model not in joined["answers"]:
            detail = f"no answer file {ANSWERS}/{model}.jsonl for model {model!r}"
            raise RowError(reason="missing_answer", detail=detail)
        turns = joined["answers"][model]
        if turns is None or len(turns) < turn:
            have = "no answer" if turns is None else f"{len(turns)} answer turn(s)"
            detail = f"{ANSWERS}/{model}.jsonl has {have} for question {question_id!r} turn {turn}"
            raise RowError(reason="missing_answer", detail=detail)
        answers.append(turns)
    if len(question) < turn:
        detail = f"turn {turn} judged, but question {question_id!r} has {len(question)} turn(s)"
        raise RowError(reason="turns_mismatch", detail=detail)
    g1, g2 = row["g1_winner"], row["g2_winner"]
    if "error" in verdicts:
        detail = f"g1_winner={g1!r}, g2_winner={g2!r}: the judge gave no verdict in one order"
        raise RowError(reason="judge_error", detail=detail)
    if verdicts[0] != verdicts[1]:
        detail = (
            f"g1_winner={g1!r} but g2_winner={g2!r}: the judge changed its verdict when the "
            "answers swapped places"
        )
        raise RowError(reason="judge_orders_disagree", detail=detail)
    if verdicts[0] == "tie":
        raise RowError(reason="tie", detail="g1_winner and g2_winner are both 'tie'")
    winner = verdicts[0]
    context = answers[1] if winner == "b" else answers[0]
    prompt = []
    for earlier in range(turn - 1):
        prompt += [
            {"role": "user", "content": question[earlier]},
            {"role": "assistant", "content": context[earlier]},
        ]
    prompt.append({"role": "user", "content": question[turn - 1]})
    return [
        PairwiseJudgment(
            prompt=prompt,
            response_a=answers[0][turn - 1],
            response_b=answers[1][turn - 1],
            winner=winner,
        )
    ]


def _verdict(row: dict[str, Any], name: str) -> str:
    value = text_field(row, name)
    if value not in WINNERS:
        detail = f"{name}={value!r}; expected one of {sorted(WINNERS)}"
        raise RowError(reason="unknown_winner", detail=detail)
    return WINNERS[value]


def is_llm_judge(row: dict[str, Any]) -> bool:
    """A judgment row joined by `joined_rows`."""
    return JOINED in row


def check_paths(paths: list[Path]) -> JudgeFiles:
    """The llm_judge files of `paths`, for `format='llm_judge'` given explicitly.

    Raises:
        ConfigError: the paths are not an llm_judge layout.
    """
    files = judge_files(paths)
    if files is None:
        msg = f"format 'llm_judge' needs FastChat's layout: {LAYOUT_HELP}"
        raise ConfigError(msg)
    return files
