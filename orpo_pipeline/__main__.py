"""`python -m orpo_pipeline` runs the CLI."""

from orpo_pipeline.cli import cli

cli()
