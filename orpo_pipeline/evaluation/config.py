"""`EvalConfig`: what `orpo-pipeline eval` and a training run's `eval_after` evaluate, and how."""

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from orpo_pipeline.formats.generate import Engine, Sampling
from orpo_pipeline.stages.judge import JudgeConfig

Benchmark = Literal["alpaca_eval", "mt_bench", "arena_hard"]


class EvalConfig(BaseModel):
    """Prompts, sampling, judge and statistics of an evaluation. The defaults are sized for the
    default job on 2 CPU cores: a few dozen short answers, judged by the default model."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    num_heldout_prompts: int = Field(default=16, ge=0)
    """Distinct prompts of the run's held-out pairs (`eval_pairs`), taken in file order."""
    benchmarks: dict[Benchmark, int] = {"alpaca_eval": 8, "mt_bench": 4, "arena_hard": 4}
    """Shipped benchmark prompts per set, spread evenly over it (MT-bench: first turns only)."""
    num_ifeval_prompts: int = Field(default=16, ge=0)
    """IFEval prompts, spread evenly over the 541; 0 skips IFEval."""
    max_new_tokens: int = Field(default=64, gt=0)
    """Longest judged answer in tokens (both models)."""
    ifeval_max_new_tokens: int = Field(default=128, gt=0)
    """Longest IFEval answer in tokens (both models)."""
    temperature: float = Field(default=0.0, ge=0.0)
    """Sampling temperature for both models; 0 decodes greedily."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus sampling threshold for both models."""
    seed: int = 0
    """Seeds sampling (per prompt) and the bootstrap."""
    batch_size: int = Field(default=16, gt=0)
    """Sequences decoded together."""
    engine: Engine = "auto"
    """Generation engine: 'transformers', 'vllm', or 'auto' (vLLM when installed with a GPU)."""
    judge: JudgeConfig = JudgeConfig()
    """The pairwise judge: `llm_judge` (in-process model or `endpoint`, both orders asked) or
    `reward_model` (the higher score wins). Default: the default model, in-process."""
    num_bootstrap: int = Field(default=1000, ge=100)
    """Bootstrap resamples of the prompts for the confidence intervals."""
    confidence: float = Field(default=0.95, gt=0.0, lt=1.0)
    """Confidence level of the intervals."""

    @model_validator(mode="after")
    def _check_judge(self) -> Self:
        if self.judge.judge == "implicit_reward":
            msg = (
                "judge.judge: 'implicit_reward' scores with a contestant; "
                "use llm_judge or reward_model"
            )
            raise ValueError(msg)
        return self

    def sampling(self, *, ifeval: bool = False) -> Sampling:
        """The sampling settings both models answer with (a part of the sample cache key)."""
        return Sampling(
            max_new_tokens=self.ifeval_max_new_tokens if ifeval else self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
        )


def _switch(value: Any) -> Any:
    return {} if value is True else None if value is False else value


EvalAfter = Annotated[EvalConfig | None, BeforeValidator(_switch)]
"""A training config's `eval_after`: `true` (the defaults), `false` or null (no evaluation), or
an `EvalConfig` mapping."""
