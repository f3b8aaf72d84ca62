"""Draw N responses per prompt from a policy model (the first step of AI feedback)."""

from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal

import polars as pl
from pydantic import Field

from orpo_pipeline.formats.generate import Engine, Sampling, sample_responses
from orpo_pipeline.stages.base import StageConfig

RESPONSE = pl.Struct({"text": pl.String, "finish_reason": pl.String, "num_tokens": pl.Int64})
RESPONSES = "responses"
"""Column of the sampled responses: a list of `RESPONSE` structs per prompt."""
GIVEN = "given"
"""Finish reason of an answer taken from the input pair rather than generated."""
DROPPED = ("chosen", "rejected", "score_chosen", "score_rejected")


def usable(response: dict[str, Any], *, truncated: bool = False) -> bool:
    """A response worth judging: not blank, and (unless `truncated`) not cut at the limit."""
    return (truncated or response["finish_reason"] != "length") and bool(response["text"].strip())


class SampleConfig(StageConfig):
    """Replace each row's answers with `num_samples` responses drawn from `model`.

    Responses are cached by (model sha256, prompt, sampling settings); a rerun or a rerun after
    a crash generates only what is missing, and gives the same responses.
    """

    parallel_shards: ClassVar[bool] = False

    stage: Literal["sample"] = "sample"
    model: str = "default"
    """Policy model: 'default' (the embedded model), a local checkpoint or a hub id."""
    num_samples: int = Field(default=4, ge=1, le=16)
    """Responses drawn per prompt."""
    max_new_tokens: int = Field(default=128, gt=0)
    """Longest response in tokens; longer ones are kept but marked truncated."""
    temperature: float = Field(default=0.8, ge=0.0)
    """Sampling temperature; 0 decodes greedily (every sample is then the same)."""
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    """Nucleus sampling threshold."""
    seed: int = 0
    """Seed; each (prompt, sample index) draws from its own generator."""
    system_prompt: str | None = None
    """System message put before the prompt while sampling (e.g. 'Answer in two sentences.');
    it is not part of the pairs."""
    keep_given: bool = False
    """Also keep the row's own chosen and rejected answers as candidates, so existing pairs are
    judged again alongside the new responses."""
    batch_size: int = Field(default=16, gt=0)
    """Sequences decoded together."""
    engine: Engine = "auto"
    """'transformers', 'vllm', or 'auto': vLLM when it is installed and a GPU is present."""

    def sampling(self) -> Sampling:
        """The settings that, with the model, key the response cache."""
        return Sampling(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
        )

    def reads(self) -> list[Path]:
        """The model's files, when it is a local checkpoint."""
        from orpo_pipeline.models import resolve_model

        path = Path(resolve_model(self.model))
        return [path] if path.is_dir() else []


def _sample_frame(frame: pl.DataFrame, config: SampleConfig) -> pl.DataFrame:
    system = [{"role": "system", "content": config.system_prompt}] if config.system_prompt else []
    prompts = [system + prompt for prompt in frame["prompt"].to_list()]
    drawn = sample_responses(
        prompts,
        config.model,
        config.sampling(),
        num_samples=config.num_samples,
        batch_size=config.batch_size,
        engine=config.engine,
    )
    responses = [[s._asdict() for s in samples] for samples in drawn]
    if config.keep_given:
        given = zip(frame["chosen"].to_list(), frame["rejected"].to_list(), strict=True)
        responses = [
            [_given(chosen), _given(rejected), *sampled]
            for (chosen, rejected), sampled in zip(given, responses, strict=True)
        ]
    column = pl.Series(RESPONSES, responses, dtype=pl.List(RESPONSE))
    return frame.drop(DROPPED, strict=False).with_columns(column)


def _given(answer: list[dict[str, str]]) -> dict[str, Any]:
    return {"text": answer[0]["content"], "finish_reason": GIVEN, "num_tokens": None}


def sample(lf: pl.LazyFrame, config: SampleConfig) -> pl.LazyFrame:
    """Rows with `responses` (text, finish reason, tokens) instead of chosen and rejected."""
    schema = lf.collect_schema()
    out = {name: dtype for name, dtype in schema.items() if name not in DROPPED}
    out[RESPONSES] = pl.List(RESPONSE)
    return lf.map_batches(partial(_sample_frame, config=config), schema=out)
