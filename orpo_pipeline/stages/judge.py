"""Score sampled responses with a reward model, a pairwise LLM judge or an implicit reward."""

import json
import time
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import polars as pl
from pydantic import Field, model_validator

from orpo_pipeline import judges
from orpo_pipeline.stages.base import StageConfig
from orpo_pipeline.stages.sample import RESPONSES, usable

SHIPPED_JUDGE_PROMPT = Path(__file__).parent.parent / "resources" / "judge_prompt.txt"
"""The default pairwise judge prompt: which of two answers is more helpful, honest and harmless."""
COMPARISON = pl.Struct(
    {
        "first": pl.Int64,
        "second": pl.Int64,
        "verdict_ab": pl.String,
        "verdict_ba": pl.String,
        "p_first_ab": pl.Float64,
        "p_first_ba": pl.Float64,
        "winner": pl.Int64,
        "reason": pl.String,
    }
)
JUDGE_COLUMNS = {
    "scores": pl.List(pl.Float64),
    "comparisons": pl.List(COMPARISON),
    "judge": pl.String,
    "judge_seconds": pl.Float64,
}
"""Columns the stage adds: a score per response (null: not judged, being empty or truncated),
the pairwise comparisons (empty for scoring judges), the judge's identity as JSON, and the
row's share of the judging wall time."""


class JudgeConfig(StageConfig):
    """Score every usable response (or every two of them) of each row.

    - `reward_model`: `model` is an `AutoModelForSequenceClassification`; score = its logit.
    - `llm_judge`: `model` (or `endpoint`) is a chat model asked about every two responses in
      both orders with the prompt in `prompt_file`; score = share of comparisons won, a tie
      (the orders disagree) counting half.
    - `implicit_reward`: `model` is a trained policy and `reference` its starting point;
      score = beta * (log pi(y|x) - log pi_ref(y|x)).
    """

    parallel_shards: ClassVar[bool] = False

    stage: Literal["judge"] = "judge"
    judge: Literal["reward_model", "llm_judge", "implicit_reward"] = "llm_judge"
    """Which kind of judge."""
    model: str = "default"
    """Reward model, judge chat model, or trained policy: 'default', a local path or a hub id."""
    reference: str | None = None
    """implicit_reward: the reference model the policy was trained from."""
    beta: float = Field(default=0.1, gt=0.0)
    """implicit_reward: the scale of the log-ratio."""
    prompt_file: Path | None = None
    """llm_judge: the judge prompt, with {conversation}, {response_a} and {response_b};
    null: the shipped one (`orpo_pipeline/resources/judge_prompt.txt`, which the repository's
    `pipelines/judge_prompt.txt` links to)."""
    endpoint: str | None = None
    """llm_judge: base URL of an OpenAI-compatible API (e.g. http://127.0.0.1:8000/v1);
    None runs `model` in-process."""
    endpoint_model: str | None = None
    """llm_judge with `endpoint`: the model name the endpoint serves (default: `model`)."""
    api_key_env: str = "OPENAI_API_KEY"
    """llm_judge with `endpoint`: environment variable holding the API key, if any."""
    judge_truncated: bool = False
    """Also judge responses cut at the sampling limit (by default they get no score and so
    never enter a pair)."""
    batch_size: int = Field(default=8, gt=0)
    """Sequences scored together (in-process), or requests in flight (endpoint)."""
    calibrate: bool = True
    """llm_judge: take the judge's position prior out of its verdicts. The log-odds of 'A' over
    'B' it gives when the conversation and both answers are content-free ('N/A', '', '[MASK]';
    Zhao et al. 2021) is subtracted from every answer's log-odds, and is kept in the judge's
    identity as `position_prior`. Both orders are still asked, and a disagreement is still a
    tie. False reads the raw log-probabilities (a judge that always says 'A' then ties on
    everything)."""

    @model_validator(mode="after")
    def _check_judge(self) -> Self:
        if (self.judge == "implicit_reward") != (self.reference is not None):
            msg = "`reference` is required by, and only used by, judge 'implicit_reward'"
            raise ValueError(msg)
        if self.endpoint is not None and self.judge != "llm_judge":
            msg = "`endpoint` is only used by judge 'llm_judge'"
            raise ValueError(msg)
        return self

    @property
    def prompt_path(self) -> Path:
        """The judge prompt file in use: `prompt_file`, or the shipped one."""
        return self.prompt_file or SHIPPED_JUDGE_PROMPT

    def template(self) -> str:
        """The text of the judge prompt in use."""
        return self.prompt_path.read_text(encoding="utf-8")

    def reads(self) -> list[Path]:
        """The judge prompt (llm_judge) and the files of local models."""
        from orpo_pipeline.models import resolve_model

        files = [self.prompt_path] if self.judge == "llm_judge" else []
        if self.endpoint is None:
            names = [self.model, *([self.reference] if self.reference else [])]
            files += [p for p in (Path(resolve_model(n)) for n in names) if p.is_dir()]
        return files


def _pairwise(frame: pl.DataFrame, config: JudgeConfig, ask: judges.LabelLogprobs) -> list[Any]:
    template = config.template()
    items = [
        (
            prompt,
            [r["text"] if usable(r, truncated=config.judge_truncated) else None for r in responses],
        )
        for prompt, responses in zip(frame["prompt"], frame[RESPONSES], strict=True)
    ]
    return judges.compare(template, [(p.to_list(), r) for p, r in items], ask)


def _scored(frame: pl.DataFrame, config: JudgeConfig, score: judges.Scorer) -> list[Any]:
    def judged(response: dict[str, Any]) -> bool:
        return usable(response, truncated=config.judge_truncated)

    wanted = [
        (prompt.to_list(), r["text"])
        for prompt, responses in zip(frame["prompt"], frame[RESPONSES], strict=True)
        for r in responses
        if judged(r)
    ]
    values = iter(score(wanted))
    return [([], [next(values) if judged(r) else None for r in rs]) for rs in frame[RESPONSES]]


def build_judge(config: JudgeConfig) -> tuple[Any, dict[str, Any]]:
    """The judge callable and its identity (kind, model or endpoint, file hashes)."""
    identity: dict[str, Any] = {"judge": config.judge}
    if config.judge == "reward_model":
        judge = judges.RewardModel(config.model, batch_size=config.batch_size)
    elif config.judge == "implicit_reward":
        assert config.reference is not None
        judge = judges.ImplicitReward(
            config.model, config.reference, beta=config.beta, batch_size=config.batch_size
        )
    elif config.endpoint is not None:
        judge = judges.EndpointLabels(
            config.endpoint,
            config.endpoint_model or config.model,
            api_key=judges.endpoint_api_key(config.api_key_env),
            concurrency=config.batch_size,
        )
    else:
        judge = judges.LocalLabels(config.model, batch_size=config.batch_size)
    identity |= judge.identity()
    if config.judge == "llm_judge":
        identity |= judges.prompt_identity(config.prompt_path)
        if config.calibrate:
            template = config.template()
            identity["position_prior"] = judges.position_prior(template, judge)
            judge = judges.calibrated(judge, identity["position_prior"])
    return judge, identity


def judge_frame(
    frame: pl.DataFrame, config: JudgeConfig, judge: Any, identity: str
) -> pl.DataFrame:
    """Add the judge columns to a frame of sampled rows, using a built judge."""
    started = time.perf_counter()
    if config.judge == "llm_judge":
        results = _pairwise(frame, config, judge)
    else:
        results = _scored(frame, config, judge)
    seconds = time.perf_counter() - started
    share = seconds / max(frame.height, 1)
    return frame.with_columns(
        pl.Series("scores", [s for _, s in results], dtype=JUDGE_COLUMNS["scores"]),
        pl.Series(
            "comparisons",
            [[c._asdict() for c in cs] for cs, _ in results],
            dtype=JUDGE_COLUMNS["comparisons"],
        ),
        pl.lit(identity, dtype=pl.String).alias("judge"),
        pl.lit(share, dtype=pl.Float64).alias("judge_seconds"),
    )


def _judge_batch(frame: pl.DataFrame, config: JudgeConfig) -> pl.DataFrame:
    judge, identity = build_judge(config)
    return judge_frame(frame, config, judge, json.dumps(identity, sort_keys=True))


def judge(lf: pl.LazyFrame, config: JudgeConfig) -> pl.LazyFrame:
    """Rows with `scores`, `comparisons`, `judge` and `judge_seconds` added."""
    schema = dict(lf.collect_schema()) | JUDGE_COLUMNS
    return lf.map_batches(partial(_judge_batch, config=config), schema=schema)
