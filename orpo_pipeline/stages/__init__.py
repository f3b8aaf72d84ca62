"""Data stages: pure `LazyFrame -> LazyFrame` functions, each with a frozen config."""

from typing import Annotated

from pydantic import Field

from orpo_pipeline.stages.dedupe import DedupeConfig, dedupe
from orpo_pipeline.stages.filter import FilterConfig, filter_rows
from orpo_pipeline.stages.split import SplitConfig, split
from orpo_pipeline.stages.validate import ValidateConfig, validate

AnyStageConfig = Annotated[
    ValidateConfig | FilterConfig | DedupeConfig | SplitConfig,
    Field(discriminator="stage"),
]
STAGES = {
    "validate": validate,
    "filter": filter_rows,
    "dedupe": dedupe,
    "split": split,
}
