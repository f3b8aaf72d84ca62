"""SFT data (ShareGPT, OpenAI messages, Alpaca, prompt/completion) and unpaired KTO data -> pairs.

An SFT row's last assistant message is the chosen answer; the rejected answer comes from
`options.negatives`:

- `model`: a model's own answer to the prompt (batched generation, cached; see `generate.py`);
- `other_prompt`: the answer of another row, picked without regard to row order;
- `truncated`: the chosen answer cut to its first `truncate_fraction` of words.

Pairs whose rejected answer was made this way carry `#rejected=<negatives>` in `source`.
KTO rows pair desirable with undesirable answers to the same prompt; prompts with only desirable
answers go the SFT route.
"""

import json
import sys
from collections.abc import Iterator
from typing import Any, NamedTuple

import click
import polars as pl
import pyarrow as pa

from orpo_pipeline.errors import ConfigError
from orpo_pipeline.formats.conversation import any_messages, messages, prompt_messages
from orpo_pipeline.formats.generate import FirstBatch, GenerationPlan, generate_answers
from orpo_pipeline.formats.options import ConvertOptions
from orpo_pipeline.formats.preference import alpaca_prompt
from orpo_pipeline.formats.rows import (
    MessageDict,
    Pair,
    Pending,
    RowError,
    check_pair,
    check_prompt,
    field,
    list_field,
    text_field,
)
from orpo_pipeline.formats.vectorized import (
    MESSAGE,
    PY_SPACE,
    json_value,
    py_strip,
    sha256_hex,
)
from orpo_pipeline.records import SFTRecord


def parse_sharegpt(row: dict[str, Any], options: ConvertOptions) -> list[SFTRecord]:
    """ShareGPT: `conversations[{from, value}]` (human/gpt/system/...), optional `system`."""
    system = row.get("system") if isinstance(row.get("system"), str) else None
    conversation = prompt_messages(
        list_field(row, "conversations"), where="'conversations'", system=system
    )
    return [_sft(conversation)]


def is_sharegpt(row: dict[str, Any]) -> bool:
    """`conversations` is a list of objects with `from`."""
    conversations = row.get("conversations")
    return (
        isinstance(conversations, list)
        and bool(conversations)
        and isinstance(conversations[0], dict)
        and "from" in conversations[0]
    )


def parse_openai_messages(row: dict[str, Any], options: ConvertOptions) -> list[SFTRecord]:
    """OpenAI chat: `messages[{role, content}]`; content may be text parts or a text object."""
    return [_sft(any_messages(list_field(row, "messages"), where="'messages'"))]


def is_openai_messages(row: dict[str, Any]) -> bool:
    """`messages` is a list of objects with `role`."""
    value = row.get("messages")
    return (
        isinstance(value, list)
        and bool(value)
        and isinstance(value[0], dict)
        and "role" in value[0]
    )


ALPACA_ANSWER_FIELDS = ("output", "response", "answer", "completion")
"""Keys Alpaca-style SFT files hold the answer under, in the order they are looked for."""


def parse_alpaca(row: dict[str, Any], options: ConvertOptions) -> list[SFTRecord]:
    """Alpaca: `instruction` (+ `input`, `system`, `history`) and an answer under `output`,
    `response`, `answer` or `completion`; or self-instruct's `instruction` with
    `instances[{input, output}]`, one record per instance."""
    if isinstance(row.get("instances"), list):
        if not row["instances"]:
            raise RowError(reason="missing_field", detail="field 'instances' is an empty list")
        records = []
        for index, instance in enumerate(row["instances"]):
            if not isinstance(instance, dict):
                raise RowError(
                    reason="wrong_type", detail=f"instances[{index}] should be an object"
                )
            merged = {**row, "input": instance.get("input"), "output": instance.get("output")}
            answer = text_field(merged, "output")
            records.append(_sft([*alpaca_prompt(merged), _assistant(answer)]))
        return records
    answer_field = next(
        (name for name in ALPACA_ANSWER_FIELDS if row.get(name) is not None), "output"
    )
    return [_sft([*alpaca_prompt(row), _assistant(text_field(row, answer_field))])]


def is_alpaca(row: dict[str, Any]) -> bool:
    """`instruction` with a string answer (`output`, `response`, `answer`, `completion`) or an
    `instances` list."""
    return isinstance(row.get("instruction"), str) and (
        any(isinstance(row.get(name), str) for name in ALPACA_ANSWER_FIELDS)
        or isinstance(row.get("instances"), list)
    )


def parse_prompt_completion(row: dict[str, Any], options: ConvertOptions) -> list[SFTRecord]:
    """Prompt/completion rows: legacy OpenAI strings or TRL conversational message lists."""
    prompt = prompt_messages(field(row, "prompt"), where="'prompt'")
    completion = field(row, "completion")
    if isinstance(completion, str):
        return [_sft([*prompt, _assistant(completion)])]
    return [_sft([*prompt, *any_messages(completion, where="'completion'")])]


def is_prompt_completion(row: dict[str, Any]) -> bool:
    """`prompt` and `completion` are present."""
    return "prompt" in row and "completion" in row


class Unpaired(NamedTuple):
    """One KTO row: a prompt, an answer and whether the answer is desirable."""

    prompt: list[MessageDict]
    answer: str
    desirable: bool


def parse_kto(row: dict[str, Any], options: ConvertOptions) -> list[Unpaired]:
    """KTO rows: `messages` ending with the answer (LLaMA-Factory) or `prompt` + `completion`
    (TRL unpaired), with a boolean `label`."""
    label = field(row, "label")
    if not isinstance(label, bool):
        raise RowError(
            reason="wrong_type", detail=f"field 'label' should be true or false, got {label!r}"
        )
    if "messages" in row:
        conversation = messages(list_field(row, "messages"), where="'messages'")
        record = _sft(conversation)
    else:
        record = parse_prompt_completion(row, options)[0]
    conversation = [message.model_dump() for message in record.messages]
    return [Unpaired(conversation[:-1], conversation[-1]["content"], label)]


def is_kto(row: dict[str, Any]) -> bool:
    """A boolean `label` with `messages` or `prompt` + `completion`."""
    return isinstance(row.get("label"), bool) and (
        "messages" in row or ("prompt" in row and "completion" in row)
    )


def _assistant(text: str) -> MessageDict:
    return {"role": "assistant", "content": text}


def _sft(conversation: list[MessageDict]) -> SFTRecord:
    if not conversation or conversation[-1]["role"] != "assistant":
        last = conversation[-1]["role"] if conversation else "nothing"
        detail = f"the conversation ends with {last}, not with an assistant answer"
        raise RowError(reason="no_final_answer", detail=detail)
    if len(conversation) < 2:
        detail = "the conversation has an answer but no prompt"
        raise RowError(reason="empty_prompt", detail=detail)
    return SFTRecord(messages=conversation)


class _Target(NamedTuple):
    """One SFT answer to find a rejected answer for, with the row it came from."""

    index: int
    prompt: list[MessageDict]
    answer: str


TARGET_SCHEMA = pl.Schema({"prompt": pl.List(MESSAGE), "answer": pl.String})
"""The targets the negatives work on: prompt messages and the stripped reference answer."""
REJECTED_SCHEMA = pl.Schema({"rejected": pl.String, "reason": pl.String, "detail": pl.String})
"""Per target, the rejected answer or, where there is none, the reason and its detail."""


def sft_pairs(
    pending: list[Pending], options: ConvertOptions
) -> Iterator[tuple[Pending, list[Pair] | RowError]]:
    """Pairs from SFT rows, in input order: each row gets its pairs or the reason it has none."""
    targets, errors = sft_targets(pending)
    pairs: dict[int, list[Pair]] = {}
    for target, (rejected, reason, detail) in zip(
        targets, rejected_answers(targets_frame(targets), options).iter_rows(), strict=True
    ):
        if rejected is None:
            errors.setdefault(target.index, RowError(reason=reason, detail=detail))
        else:
            pairs.setdefault(target.index, []).append(Pair(target.prompt, target.answer, rejected))
    label = f"#rejected={options.negatives}"
    for index, item in enumerate(pending):
        if index in pairs:
            yield item._replace(source=item.source + label), pairs[index]
        else:
            yield item, errors[index]


def sft_targets(pending: list[Pending]) -> tuple[list[_Target], dict[int, RowError]]:
    """The targets of the rows' records, in order, and per row the first record that has none
    (a prompt that `check_prompt` refuses, or an empty answer)."""
    targets = []
    errors: dict[int, RowError] = {}
    for index, item in enumerate(pending):
        for record in item.records:
            conversation = [message.model_dump() for message in record.messages]
            answer = conversation[-1]["content"].strip()
            try:
                check_prompt(conversation[:-1])  # before any generation is spent on the row
            except RowError as error:
                errors.setdefault(index, error)
                continue
            if not answer:
                detail = "the chosen answer is empty"
                errors.setdefault(index, RowError(reason="empty_response", detail=detail))
                continue
            targets.append(_Target(index, conversation[:-1], answer))
    return targets, errors


def targets_frame(targets: list[_Target]) -> pl.DataFrame:
    """`TARGET_SCHEMA` columns of `targets` (built through Arrow, several times faster than
    Polars from nested Python objects)."""
    columns = {"prompt": [t.prompt for t in targets], "answer": [t.answer for t in targets]}
    return pl.DataFrame(pl.from_arrow(pa.Table.from_pydict(columns, schema=_TARGET_ARROW)))


_TARGET_ARROW = pl.DataFrame(schema=TARGET_SCHEMA).to_arrow().schema


def rejected_answers(targets: pl.DataFrame, options: ConvertOptions) -> pl.DataFrame:
    """Per target (`TARGET_SCHEMA` columns), the rejected answer from `options.negatives`,
    stripped, or (`REJECTED_SCHEMA`) the reason there is none: the negatives' own, or the
    `check_pair` reason of an empty or identical rejected answer."""
    found = NEGATIVES[options.negatives](targets, options)
    rejected = py_strip(pl.col("rejected"))
    empty = pl.col("reason").is_null() & (rejected == "")
    same = pl.col("reason").is_null() & (rejected == targets["answer"])
    return found.select(
        pl.when(~empty & ~same).then(rejected).alias("rejected"),
        pl.when(empty)
        .then(pl.lit("empty_response"))
        .when(same)
        .then(pl.lit("identical_responses"))
        .otherwise("reason")
        .alias("reason"),
        pl.when(empty)
        .then(pl.lit("the rejected answer is empty"))
        .when(same)
        .then(pl.lit("chosen and rejected answers are identical"))
        .otherwise("detail")
        .alias("detail"),
    )


def _found(frame: pl.DataFrame, reason: str, detail: pl.Expr | str) -> pl.DataFrame:
    """`REJECTED_SCHEMA` columns from `frame`'s `rejected`: `reason`/`detail` where it is
    null (`detail` may use `frame`'s other columns)."""
    missing = pl.col("rejected").is_null()
    return frame.select(
        "rejected",
        pl.when(missing).then(pl.lit(reason)).alias("reason"),
        pl.when(missing)
        .then(pl.lit(detail) if isinstance(detail, str) else detail)
        .alias("detail"),
    )


_WORD = r"[^\s\x1c-\x1f]+"
"""A word as Python's `re` finds it with `\\S+`."""


def truncated_answers(targets: pl.DataFrame, options: ConvertOptions) -> pl.DataFrame:
    """Each answer cut after its first `truncate_fraction` of words (at least one word kept)."""
    answer, words, keep = pl.col("answer"), pl.col("_words"), pl.col("_keep")
    counted = targets.lazy().with_columns(_words=answer.str.count_matches(_WORD))
    counted = counted.with_columns(
        _keep=pl.max_horizontal(
            pl.lit(1, dtype=pl.Int64),
            (words.cast(pl.Float64) * options.truncate_fraction).floor().cast(pl.Int64),
        )
    )
    # A stripped answer alternates words and spaces, starting and ending with a word.
    pieces = answer.str.extract_all(f"{PY_SPACE}+|{_WORD}")
    cut = pl.when(keep < words).then(pieces.list.head(2 * keep - 1).list.join(""))
    detail = pl.format("the answer has {} word(s); too short to truncate", words)
    return _found(counted.with_columns(rejected=cut).collect(), "answer_too_short", detail)


def other_prompt_answers(targets: pl.DataFrame, options: ConvertOptions) -> pl.DataFrame:
    """Each answer paired with the answer of another prompt.

    The targets are put in the order of sha256(json.dumps([seed, prompt, answer])); each takes
    the answer of the next target in that cycle whose prompt and answer differ from its own.
    The choice therefore depends on the set of rows and the seed, never on the rows' order.
    """
    element = pl.element().struct.field
    message = pl.concat_str(
        pl.lit('{"role": '),
        json_value(element("role")),
        pl.lit(', "content": '),
        json_value(element("content")),
        pl.lit("}"),
    )
    prompt = pl.col("prompt").list.eval(message).list.join(", ")
    # json.dumps' default separators: ", " and ": ".
    payload = pl.concat_str(
        pl.lit(f"[{json.dumps(options.seed)}, ["),
        prompt,
        pl.lit("], "),
        json_value(pl.col("answer")),
        pl.lit("]"),
    )
    cycle = targets.select(
        pl.int_range(pl.len()).alias("position"),
        prompt.alias("prompt"),
        "answer",
        sha256_hex(payload).alias("digest"),
    ).sort("digest", maintain_order=True)
    following = [
        pl.col(name).shift(-1).fill_null(pl.col(name).first()) for name in ("prompt", "answer")
    ]
    differs = (pl.col("prompt") != following[0]) & (pl.col("answer") != following[1])
    cycle = cycle.with_columns(pl.when(differs).then(following[1]).alias("rejected"))
    if not cycle["rejected"].is_null().any():
        found = cycle["rejected"].to_list()
    else:  # look further along the cycle, where the next target has the same prompt or answer
        prompts, answers = cycle["prompt"].to_list(), cycle["answer"].to_list()
        found = cycle["rejected"].to_list()
        for place, rejected in enumerate(found):
            if rejected is not None:
                continue
            for step in range(2, len(found)):
                other = (place + step) % len(found)
                if prompts[other] != prompts[place] and answers[other] != answers[place]:
                    found[place] = answers[other]
                    break
    placed = cycle.select("position", pl.Series("rejected", found, dtype=pl.String)).sort(
        "position"
    )
    return _found(placed, "no_other_answer", "no other prompt has a different answer")


CONFIRM_OVER_S = 300.0
"""Generation estimated to take longer than this asks before it goes on (on a terminal)."""


def model_answers(targets: pl.DataFrame, options: ConvertOptions) -> pl.DataFrame:
    """Each prompt answered by `options.model` (cached by model, prompt and settings).

    Says what will run before the model loads, then the time the first batch took and the
    estimate for the rest; on a terminal, asks before going on when that exceeds
    `CONFIRM_OVER_S` (unless `options.yes`).
    """

    def on_plan(plan: GenerationPlan) -> None:
        if plan.to_generate:
            _say(
                f"negatives=model: generating rejected answers with {plan.model} for "
                f"{plan.to_generate} prompts ({plan.cached} cached), "
                f"{options.generation_batch_size} per batch, up to {options.max_new_tokens} new "
                "tokens each; timing the first batch (--negatives other_prompt or truncated "
                "needs no model)"
            )

    def on_first_batch(batch: FirstBatch) -> None:
        batches_left = -(-batch.remaining // options.generation_batch_size)
        estimate = batch.seconds * batches_left
        _say(
            f"first batch: {batch.prompts} prompts in {batch.seconds:.1f} s; about "
            f"{_duration(estimate)} for the other {batch.remaining} (the first batch holds the "
            "longest prompts, so this errs long)"
        )
        ask = estimate > CONFIRM_OVER_S and not options.yes and _interactive()
        if ask and not click.confirm("continue generating?", default=False, err=True):
            msg = (
                "generation stopped at your request; the answers generated so far are "
                "cached and a rerun goes on from there. --negatives other_prompt or "
                "truncated needs no model; --yes skips this question"
            )
            raise ConfigError(msg)

    prompts = targets["prompt"].to_list()
    answers = generate_answers(prompts, options, on_plan=on_plan, on_first_batch=on_first_batch)
    return pl.DataFrame(
        {"rejected": answers, "reason": None, "detail": None}, schema=REJECTED_SCHEMA
    )


def _say(message: str) -> None:
    click.echo(message, err=True)


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stderr.isatty()


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 2:
        return f"{seconds:.0f} s"
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


NEGATIVES = {
    "model": model_answers,
    "other_prompt": other_prompt_answers,
    "truncated": truncated_answers,
}
"""Negatives option -> function giving, per target (`TARGET_SCHEMA`), one rejected answer or
the reason there is none (`REJECTED_SCHEMA`)."""


def unpaired_pairs(
    pending: list[Pending], options: ConvertOptions
) -> Iterator[tuple[Pending, list[Pair] | RowError]]:
    """Pairs from KTO rows: every desirable x undesirable answer to the same prompt.

    A pair is attributed to its undesirable row. Prompts with only desirable answers go the SFT
    route (`options.negatives`); prompts with only undesirable answers are rejected.
    """
    by_prompt: dict[str, list[int]] = {}
    for index, item in enumerate(pending):
        unpaired: Unpaired = item.records[0]
        by_prompt.setdefault(json.dumps(unpaired.prompt, sort_keys=True), []).append(index)
    outcomes: dict[int, tuple[Pending, list[Pair] | RowError]] = {}
    sft_route: list[int] = []
    for indices in by_prompt.values():
        desirable = [i for i in indices if pending[i].records[0].desirable]
        undesirable = [i for i in indices if not pending[i].records[0].desirable]
        paired = False
        for i in undesirable:
            outcome = _kto_pairs([pending[d].records[0] for d in desirable], pending[i].records[0])
            outcomes[i] = (pending[i], outcome)
            paired = paired or isinstance(outcome, list)
        if paired:
            outcomes.update({i: (pending[i], []) for i in desirable})
        else:
            sft_route += desirable
    sft_route.sort()
    sft_items = [pending[i]._replace(records=[_as_sft(pending[i].records[0])]) for i in sft_route]
    for index, outcome in zip(sft_route, sft_pairs(sft_items, options), strict=True):
        outcomes[index] = outcome
    for index in range(len(pending)):
        yield outcomes[index]


def _as_sft(unpaired: Unpaired) -> SFTRecord:
    return SFTRecord(messages=[*unpaired.prompt, _assistant(unpaired.answer)])


def _kto_pairs(desirable: list[Unpaired], undesirable: Unpaired) -> list[Pair] | RowError:
    if not desirable:
        detail = "no desirable answer to this prompt to pair the undesirable one with"
        return RowError(reason="no_desirable_answer", detail=detail)
    pairs, errors = [], []
    for good in desirable:
        try:
            pairs.append(check_pair(Pair(good.prompt, good.answer, undesirable.answer)))
        except RowError as error:
            errors.append(error)
    return pairs or errors[0]
