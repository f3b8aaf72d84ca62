"""Every training objective, by the name `objective:` takes in a training config."""

from typing import TYPE_CHECKING

from orpo_pipeline.train.objectives.cpo import Cpo, Simpo
from orpo_pipeline.train.objectives.dpo import Dpo
from orpo_pipeline.train.objectives.kto import Kto
from orpo_pipeline.train.objectives.orpo import Orpo
from orpo_pipeline.train.objectives.sft import Sft

if TYPE_CHECKING:
    from orpo_pipeline.train.config import TrainConfig
    from orpo_pipeline.train.objective import Objective

OBJECTIVES = {"orpo": Orpo, "sft": Sft, "dpo": Dpo, "simpo": Simpo, "cpo": Cpo, "kto": Kto}


def build_objective(config: "TrainConfig") -> "Objective":
    """The objective `config` names, with its settings."""
    return OBJECTIVES[config.objective].from_config(config)
