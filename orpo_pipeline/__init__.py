"""orpo-pipeline: from preference or SFT data to an ORPO-trained model."""

__version__ = "0.1.0"

from orpo_pipeline.requirements import check_installed

check_installed()
