"""Field mappings: any other layout, described in YAML instead of code."""

import errno
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from orpo_pipeline.errors import ConfigError
from orpo_pipeline.formats.conversation import content_text, join_input, prompt_messages
from orpo_pipeline.formats.rows import MessageDict, Pair, RowError, field, list_field, number
from orpo_pipeline.records import Completion, PairwiseJudgment, RankedRecord, SFTRecord

if TYPE_CHECKING:
    from orpo_pipeline.formats.options import ConvertOptions

Verdict = Literal["a", "b", "tie", "error"]

MAPPING_EXAMPLE = """\
  orpo-pipeline convert data.jsonl -o pairs.parquet \\
      --mapping '{prompt: question, chosen: good_answer, rejected: bad_answer}'
  or a YAML file (--mapping mapping.yaml), for scored answers:
      prompt: question
      responses: [answer_1, answer_2, answer_3]
      scores: [score_1, score_2, score_3]
  or for a judge's verdicts:
      prompt: question
      responses: [answer_a, answer_b]
      winner: verdict
      winner_values: {A: a, B: b, tie: tie, error: error}"""


class FieldMapping(BaseModel):
    """Which input fields hold the prompt and the answers; names may be dotted ('meta.text').

    The fields given decide the record kind: `chosen` + `rejected` (a pair per row), `response`
    (SFT), `responses` + `scores` or `ranks` (ranked), `responses` + `winner` (a judgment).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    prompt: str
    """Field holding the prompt: a string (one user turn) or a list of messages."""
    input: str | None = None
    """Field holding extra context for the prompt (Alpaca's `input`); when non-empty it is joined
    to the last user turn as prompt + '\\n' + input, as the `alpaca` format does."""
    system: str | None = None
    """Field holding a system message, if any."""
    chosen: str | None = None
    """Field holding the preferred answer (with `rejected`)."""
    rejected: str | None = None
    """Field holding the dispreferred answer (with `chosen`)."""
    response: str | None = None
    """Field holding the one reference answer of SFT data."""
    responses: tuple[str, ...] = ()
    """Fields holding the candidate answers, or one field holding a list of them."""
    response_text: str | None = None
    """Key of the answer text inside each item when `responses` names one list of objects."""
    scores: tuple[str, ...] = ()
    """Fields holding the answers' scores (higher is better), parallel to `responses`; when
    `responses` names one list, the score key inside its objects or a parallel list field."""
    ranks: tuple[str, ...] = ()
    """Like `scores`, but ranks: lower is better."""
    winner: str | None = None
    """Field holding the verdict between the two `responses`."""
    winner_values: dict[str, Verdict] = {}
    """What each verdict value means: 'a' (first response wins), 'b', 'tie' or 'error'. Numbers
    are written as integers ('1'), booleans as 'true'/'false', null as 'null'."""

    @model_validator(mode="after")
    def _check_shape(self) -> Self:
        shapes = {
            "preference": self.chosen is not None or self.rejected is not None,
            "sft": self.response is not None,
            "ranked/pairwise": bool(self.responses),
        }
        given = [name for name, present in shapes.items() if present]
        if len(given) != 1:
            msg = (
                "give exactly one answer layout: chosen + rejected, response, or responses "
                f"(with scores, ranks or winner); got {given or 'none'}"
            )
            raise ValueError(msg)
        if shapes["preference"] and (self.chosen is None or self.rejected is None):
            msg = "`chosen` and `rejected` go together"
            raise ValueError(msg)
        if shapes["ranked/pairwise"]:
            self._check_responses()
        elif self.scores or self.ranks or self.winner or self.response_text:
            msg = "scores, ranks, winner and response_text need `responses`"
            raise ValueError(msg)
        return self

    def _check_responses(self) -> None:
        if sum((bool(self.scores), bool(self.ranks), self.winner is not None)) != 1:
            msg = "`responses` needs exactly one of `scores`, `ranks` or `winner`"
            raise ValueError(msg)
        if self.winner is not None:
            if len(self.responses) != 2 or not self.winner_values:
                msg = "`winner` needs two `responses` fields and `winner_values`"
                raise ValueError(msg)
            return
        values = self.scores or self.ranks
        if len(self.responses) == 1 and len(values) != 1:
            msg = "with one `responses` list, give one score or rank key for its items"
            raise ValueError(msg)
        if len(self.responses) > 1 and len(values) != len(self.responses):
            msg = "give one score or rank field per `responses` field"
            raise ValueError(msg)


def mapping_fields(mapping: FieldMapping) -> set[str]:
    """The top-level input fields a mapping reads ('meta.text' reads 'meta')."""
    names = [
        mapping.prompt,
        mapping.input,
        mapping.system,
        mapping.chosen,
        mapping.rejected,
        mapping.response,
        mapping.winner,
        *mapping.responses,
        *mapping.scores,
        *mapping.ranks,
    ]
    return {name.split(".")[0] for name in names if name is not None}


def mapping_kind(mapping: FieldMapping) -> Literal["preference", "ranked", "pairwise", "sft"]:
    """The record kind a mapping describes."""
    if mapping.chosen is not None:
        return "preference"
    if mapping.response is not None:
        return "sft"
    return "pairwise" if mapping.winner is not None else "ranked"


def load_mapping(value: str) -> FieldMapping:
    """A mapping from a YAML file path or inline YAML ('{prompt: q, chosen: a, rejected: b}').

    Raises:
        ConfigError: the YAML does not parse or does not describe a valid mapping.
    """
    text = _mapping_text(value)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        msg = f"field mapping is not valid YAML: {error}"
        raise ConfigError(msg) from error
    if not isinstance(data, dict):
        msg = f"field mapping should map names to fields, got {value!r}\n{MAPPING_EXAMPLE}"
        raise ConfigError(msg)
    try:
        return FieldMapping.model_validate(data)
    except ValidationError as error:
        lines = "\n".join(
            f"  {'.'.join(map(str, item['loc'])) or 'mapping'}: {item['msg']}"
            for item in error.errors()
        )
        msg = f"invalid field mapping:\n{lines}\n{MAPPING_EXAMPLE}"
        raise ConfigError(msg) from error


def _mapping_text(value: str) -> str:
    """The YAML of a mapping: the file `value` names, else `value` itself.

    Raises:
        ConfigError: the file cannot be read or is not UTF-8.
    """
    path = Path(value)
    try:
        return path.read_text(encoding="utf-8") if path.is_file() else value
    except OSError as error:
        if error.errno == errno.ENAMETOOLONG:  # inline YAML longer than a file name can be
            return value
        msg = f"cannot read field mapping {path}: {error.strerror}"
        raise ConfigError(msg) from error
    except UnicodeDecodeError as error:
        msg = f"field mapping file {path} is not UTF-8 text (byte {error.start})"
        raise ConfigError(msg) from error


def parse_mapping(row: dict[str, Any], options: "ConvertOptions") -> list[Any]:
    """Parse one row with `options.mapping` into a pair, SFT, ranked or judgment record."""
    mapping = options.mapping
    if mapping is None:
        msg = "format 'mapping' needs a field mapping"
        raise ConfigError(msg)
    system = None
    if mapping.system is not None and row.get(mapping.system) is not None:
        system = content_text(field(row, mapping.system), where=repr(mapping.system))
    prompt = prompt_messages(field(row, mapping.prompt), where=repr(mapping.prompt), system=system)
    if mapping.input is not None and row.get(mapping.input) is not None:
        extra = content_text(field(row, mapping.input), where=repr(mapping.input))
        prompt = _with_input(prompt, extra)
    kind = mapping_kind(mapping)
    if kind == "preference":
        chosen = _text(row, mapping.chosen)
        return [Pair(prompt, chosen, _text(row, mapping.rejected))]
    if kind == "sft":
        answer = {"role": "assistant", "content": _text(row, mapping.response)}
        return [SFTRecord(messages=[*prompt, answer])]
    texts, values = _responses(row, mapping)
    if kind == "pairwise":
        verdict = _verdict(field(row, mapping.winner), mapping)
        return [
            PairwiseJudgment(
                prompt=prompt, response_a=texts[0], response_b=texts[1], winner=verdict
            )
        ]
    completions = [
        Completion(content=text, score=value)
        if mapping.scores
        else Completion(content=text, rank=value)
        for text, value in zip(texts, values, strict=True)
        if value is not None
    ]
    if len(completions) < 2:
        raise RowError(
            reason="too_few_completions", detail="fewer than two answers have a score or rank"
        )
    return [RankedRecord(prompt=prompt, completions=completions)]


def _with_input(prompt: list[MessageDict], extra: str) -> list[MessageDict]:
    """The prompt with `extra` joined to its last user turn (Alpaca's instruction + input)."""
    if not extra.strip() or prompt[-1]["role"] != "user":
        return prompt
    last = {**prompt[-1], "content": join_input(prompt[-1]["content"], extra)}
    return [*prompt[:-1], last]


def _text(row: dict[str, Any], name: str | None) -> str:
    assert name is not None
    return content_text(field(row, name), where=repr(name))


def _responses(row: dict[str, Any], mapping: FieldMapping) -> tuple[list[str], list[Any]]:
    """Answer texts and their score/rank values (None where missing)."""
    value_keys = mapping.scores or mapping.ranks
    if len(mapping.responses) > 1:
        texts = [_text(row, name) for name in mapping.responses]
        raw = [row.get(name) for name in value_keys] if value_keys else [None] * len(texts)
    else:
        items = list_field(row, mapping.responses[0])
        if items and all(isinstance(item, dict) for item in items):
            text_key = mapping.response_text or "text"
            texts = [
                content_text(field(item, text_key), where=f"{mapping.responses[0]}[{index}]")
                for index, item in enumerate(items)
            ]
            raw = [item.get(value_keys[0]) for item in items]
        else:
            texts = [
                content_text(item, where=f"{mapping.responses[0]}[{index}]")
                for index, item in enumerate(items)
            ]
            raw = list_field(row, value_keys[0])
            if len(raw) != len(texts):
                detail = f"{len(texts)} answers but {len(raw)} values in {value_keys[0]!r}"
                raise RowError(reason="wrong_type", detail=detail)
    return texts, [number(value, integral=bool(mapping.ranks)) for value in raw]


def _verdict(value: Any, mapping: FieldMapping) -> Verdict:
    key = verdict_key(value)
    if key not in mapping.winner_values:
        detail = (
            f"winner value {key!r} in {mapping.winner!r} is not in winner_values "
            f"{sorted(mapping.winner_values)}"
        )
        raise RowError(reason="unknown_winner", detail=detail)
    return mapping.winner_values[key]


def verdict_key(value: Any) -> str:
    """The lookup string of a verdict: 1 and 1.0 -> '1', True -> 'true', None -> 'null'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
