"""Data stages: pure `LazyFrame -> LazyFrame` functions, each with a frozen config."""

from typing import Annotated

from pydantic import Field

from orpo_pipeline.stages.binarize import BinarizeConfig, binarize
from orpo_pipeline.stages.cross_dedupe import CrossDedupeConfig, cross_dedupe
from orpo_pipeline.stages.decontaminate import DecontaminateConfig, decontaminate
from orpo_pipeline.stages.dedupe import DedupeConfig, dedupe
from orpo_pipeline.stages.filter import FilterConfig, filter_rows
from orpo_pipeline.stages.judge import JudgeConfig, judge
from orpo_pipeline.stages.mix import MixConfig, mix
from orpo_pipeline.stages.near_dedupe import NearDedupeConfig, near_dedupe
from orpo_pipeline.stages.sample import SampleConfig, sample
from orpo_pipeline.stages.split import SplitConfig, split
from orpo_pipeline.stages.validate import ValidateConfig, validate

AnyStageConfig = Annotated[
    ValidateConfig
    | FilterConfig
    | DedupeConfig
    | NearDedupeConfig
    | CrossDedupeConfig
    | DecontaminateConfig
    | MixConfig
    | SplitConfig
    | SampleConfig
    | JudgeConfig
    | BinarizeConfig,
    Field(discriminator="stage"),
]
STAGES = {
    "validate": validate,
    "filter": filter_rows,
    "dedupe": dedupe,
    "near_dedupe": near_dedupe,
    "cross_dedupe": cross_dedupe,
    "decontaminate": decontaminate,
    "mix": mix,
    "split": split,
    "sample": sample,
    "judge": judge,
    "binarize": binarize,
}
