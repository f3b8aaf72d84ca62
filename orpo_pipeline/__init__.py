"""orpo-pipeline: from preference or SFT data to an ORPO-trained model."""

__version__ = "0.1.0"
