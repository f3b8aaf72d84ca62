"""Pipeline recipes: a source, a list of stages, and the runner that collects and writes.

The runner works shard by shard: the source is converted one input file at a time (when its
format pairs rows one by one), per-row stages run on `shard_rows` rows at a time, and global
stages (`GlobalStage`: dedupe, near_dedupe, mix, split) first gather small per-row keys of all
rows, decide on those, then tag each shard. Each shard is a task (`convert_task`, `keys_task`,
`stage_task`) that an executor runs, here or on Ray (`executors.py`), and that writes its kept and
rejected rows to the stage cache as Parquet, in `_row` order, so results do not depend on the shard
size, the executor or the engine.
"""

import hashlib
import io
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import polars as pl
import yaml
from pydantic import BaseModel, ConfigDict, Field

from orpo_pipeline import formats, records
from orpo_pipeline.cache import (
    Shard,
    StageCache,
    StageOutput,
    cache_root,
    code_version,
    finished_shard,
    stage_key,
    write_shard,
)
from orpo_pipeline.datacard import write_data_card
from orpo_pipeline.errors import ConfigError, DataError
from orpo_pipeline.executors import Executor, executor
from orpo_pipeline.formats import ConvertOptions, convert_files
from orpo_pipeline.formats.convert import FORMATS, ROW_PAIRERS, detect_format
from orpo_pipeline.formats.mapping import mapping_kind
from orpo_pipeline.io import scan_frame, write_parts, write_text
from orpo_pipeline.runs import describe_inputs, load_manifest, write_manifest
from orpo_pipeline.stages import STAGES, AnyStageConfig
from orpo_pipeline.stages.base import REASON, ROW, GlobalStage
from orpo_pipeline.stages.filter import FilterConfig
from orpo_pipeline.stages.split import SPLIT
from orpo_pipeline.tokens import counting_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class SourceConfig(ConvertOptions):
    """Input files and how to convert them to canonical pairs."""

    inputs: list[Path] = Field(min_length=1)
    """Files or `save_to_disk` directories, read in this order."""


class PipelineSpec(BaseModel):
    """A data recipe: read and convert the source, run the stages, write pairs and rejects."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    name: str
    """Recipe name, used in reports."""
    source: SourceConfig
    """What to read."""
    stages: list[AnyStageConfig] = []
    """Stages run in order; filter-like stages pass only kept rows on."""
    output_dir: Path
    """Where pairs, rejects, `report.json` and `manifest.json` go."""
    output_format: Literal["parquet", "jsonl"] = "parquet"
    """File format of the pair files."""
    cache: bool = True
    """Reuse stage outputs whose input, config, code and read files are unchanged."""
    shard_rows: int = Field(default=200_000, ge=1)
    """Rows a stage task holds in memory at once; outputs do not depend on the executor."""
    executor: Literal["local", "ray"] = "local"
    """Run the shard tasks in this process, or on a Ray cluster (`pip install
    'orpo-pipeline[ray]'`); both write the same files and share the stage cache."""
    address: str | None = None
    """Ray cluster to connect to (`auto`, `ray://head:10001`); none starts a local cluster."""


class StageReport(BaseModel):
    """Rows in and out of one stage, rejects by reason, and time taken."""

    stage: str
    key: str
    """Content address of the stage output: sha256 of input key, config, code and read files."""
    cached: bool
    """True when the output came from the stage cache."""
    rows_in: int
    rows_out: int
    rejected: dict[str, int]
    seconds: float


class PipelineReport(BaseModel):
    """What a pipeline run did."""

    name: str
    stages: list[StageReport]
    outputs: dict[str, int]
    """Output file name -> rows."""
    output_dir: Path


def _scan_parts(paths: list[Path]) -> pl.LazyFrame:
    """The shard files of a stage output as one frame, in shard order."""
    return pl.concat([pl.scan_parquet(path) for path in paths], how="diagonal_relaxed")


class Slice(NamedTuple):
    """Rows `start` to `start + rows` of a stage output: the (file, first row, rows) pieces of the
    shard files that hold them, and the whole output's columns and types."""

    start: int
    rows: int
    pieces: tuple[tuple[Path, int, int], ...]
    schema: pl.Schema


def _slices_of(paths: list[Path], shard_rows: int) -> list[Slice]:
    """Each run of `shard_rows` rows of a stage output (at least one), planned once from the
    Parquet footers, so a task reads only the files holding its rows (a slice of the whole
    concatenation would read every file before it)."""
    counts = [pl.scan_parquet(path).select(pl.len()).collect().item() for path in paths]
    schema = _scan_parts(paths).collect_schema()
    slices = []
    for start in range(0, max(sum(counts), 1), shard_rows):
        pieces, offset = [], 0
        for path, count in zip(paths, counts, strict=True):
            first, last = max(start - offset, 0), min(start + shard_rows - offset, count)
            if first < last:
                pieces.append((path, first, last - first))
            offset += count
        slices.append(Slice(start, shard_rows, tuple(pieces), schema))
    return slices


def _read_slices(paths: list[Path], shard_rows: int) -> list[pl.LazyFrame]:
    """Each run of `shard_rows` rows of a stage output, lazily."""
    return [_read_slice(window) for window in _slices_of(paths, shard_rows)]


def _read_slice(window: Slice) -> pl.LazyFrame:
    """The rows of a slice, with the whole output's columns and types in every piece."""
    parts = []
    for path, first, rows in window.pieces:
        part = pl.scan_parquet(path).slice(first, rows)
        present = part.collect_schema()
        parts.append(
            part.select(
                pl.col(name).cast(dtype) if name in present else pl.lit(None, dtype).alias(name)
                for name, dtype in window.schema.items()
            )
        )
    return pl.concat(parts) if parts else pl.LazyFrame(schema=window.schema)


def _split_tagged(tagged: pl.DataFrame) -> Shard:
    """Kept and rejected rows (with reason, file and line first), both in `_row` order."""
    if not tagged[ROW].is_sorted():  # stages keep their input's order: no copy then
        tagged = tagged.sort(ROW)
    no_reject = REASON not in tagged.columns or tagged[REASON].null_count() == tagged.height
    if no_reject:  # the whole shard kept as it is (a shard is ~2 KB a row: copies count)
        rejected = pl.DataFrame(schema={"reason": pl.String})
        return tagged.drop(REASON, strict=False), rejected, tagged.height
    rejected = tagged.filter(pl.col(REASON).is_not_null()).select(
        pl.col(REASON).alias("reason"),
        pl.col("_file").alias("file"),
        pl.col("_line").alias("line"),
        pl.exclude(REASON, "_file", "_line"),
    )
    return tagged.filter(pl.col(REASON).is_null()).drop(REASON), rejected, tagged.height


# The units of work: each runs where the executor puts it (this process, a Ray worker), reads
# its input from the stage cache and writes one shard with its completion marker. A shard that
# is already complete (a retried task) is not redone.


def convert_task(
    directory: Path, index: int, source: SourceConfig, paths: list[Path], scratch: bool
) -> dict:
    """Convert `paths` into shard `index` of the source's entry; the pairs get `_row` when read."""
    if done := finished_shard(directory, index):
        return done
    result = convert_files(paths, source)
    shard = (result.pairs, result.rejects, result.rows_in)
    return write_shard(
        directory,
        index,
        shard,
        scratch=scratch,
        format=result.format,
        first=str(paths[0]),
    )


def _input_slice(window: Slice) -> pl.LazyFrame:
    """A slice of a stage's input, with `_row` (the source's position)."""
    lf = _read_slice(window)
    return lf if ROW in window.schema else lf.with_row_index(ROW, offset=window.start)


def keys_task(window: Slice, stage: BaseModel) -> pl.DataFrame:
    """A global stage's keys of one slice of its input."""
    return STAGES[stage.stage].keys(_input_slice(window), stage).collect()


def stage_task(
    directory: Path,
    index: int,
    window: Slice,
    stage: BaseModel,
    decided: pl.DataFrame | None,
    scratch: bool,
) -> dict:
    """Run a stage on one slice of its input into shard `index`; a global stage applies the
    decisions made on all keys (`decided`: `_row` and what the stage adds, for this slice)."""
    if done := finished_shard(directory, index):
        return done
    shard = _input_slice(window)
    if decided is None:
        tagged = STAGES[stage.stage](shard, stage).collect()
    else:
        frame = shard.collect()
        assert decided[ROW].equals(frame[ROW])  # both in `_row` order, one row per row
        added = decided.drop(ROW)  # replaces what an earlier stage of the kind added
        tagged = frame.drop(added.columns, strict=False).hstack(added.get_columns())  # no copy
    return write_shard(directory, index, _split_tagged(tagged), scratch=scratch)


def _pairs_row_by_row(source: SourceConfig) -> bool:
    """Whether the source's format pairs each row on its own (then each file is a shard)."""
    if source.mapping is not None:
        return mapping_kind(source.mapping) in ROW_PAIRERS
    name = source.format or detect_format(source.inputs[0])
    return name in FORMATS and FORMATS[name].kind in ROW_PAIRERS


def _compute_source(
    source: SourceConfig, executor: Executor, directory: Path, scratch: bool
) -> int:
    """Convert the inputs: one shard per file when rows pair on their own, else one for all."""
    groups = [[p] for p in source.inputs] if _pairs_row_by_row(source) else [source.inputs]
    calls = [(directory, i, source, g, scratch) for i, g in enumerate(groups)]
    done = executor.map(convert_task, calls)
    first = done[0]
    for other in done[1:]:
        if other["format"] != first["format"]:
            msg = (
                f"inputs of different formats: {first['first']} is {first['format']}, "
                f"{other['first']} is {other['format']}; convert them in separate recipes"
            )
            raise ConfigError(msg)
    return len(groups)


def _compute_stage(
    parent: StageOutput,
    stage: BaseModel,
    shard_rows: int,
    executor: Executor,
    directory: Path,
    scratch: bool,
) -> int:
    """Run a stage slice by slice; a global stage first decides on the keys of all rows."""
    function = STAGES[stage.stage]
    windows = _slices_of(parent.kept, shard_rows)
    decided: list[pl.DataFrame | None] = [None] * len(windows)
    if isinstance(function, GlobalStage):
        keys_calls = [(w, stage) for w in windows]
        keys = pl.concat(executor.map(keys_task, keys_calls, parallel=stage.parallel_shards))
        all_decided = function.decide(keys.lazy(), stage).collect().sort(ROW)
        del keys
        decided = [all_decided.slice(w.start, w.rows) for w in windows]
    calls = [
        (directory, i, w, stage, d, scratch)
        for i, (w, d) in enumerate(zip(windows, decided, strict=True))
    ]
    executor.map(stage_task, calls, parallel=stage.parallel_shards)
    return len(windows)


def read_reject_labels(path: Path, labels: Iterable[str] = ()) -> pl.DataFrame:
    """The columns of a rejects JSONL file that the data card counts (`reason`, `source` and the
    given label columns, where present), read 64 MiB at a time so memory stays bounded. The
    columns are read as text with a fixed schema: a label that is null in a chunk's first rows
    and set later must not trip Polars' schema inference.

    An empty file (a stage that rejected nothing) gives an empty frame: Polars itself cannot read
    an empty JSONL file.
    """
    wanted = ("reason", "source", *labels)
    frames = []
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 26):
            chunk += handle.readline()  # up to the end of the line cut in two
            present = [c for c in wanted if json.dumps(c).encode() + b":" in chunk]
            schema = dict.fromkeys(present, pl.String)
            frames.append(pl.read_ndjson(io.BytesIO(chunk), schema=schema))
    if not frames:
        return pl.DataFrame(schema={"reason": pl.String})
    return pl.concat(frames, how="diagonal")


def _reason_counts(rejected: pl.LazyFrame) -> dict[str, int]:
    counts = rejected.group_by("reason").len().sort("reason").collect()
    return dict(zip(counts["reason"].to_list(), counts["len"].to_list(), strict=True))


def _card_tokenizer(spec: PipelineSpec) -> "PreTrainedTokenizerBase | None":
    """The tokenizer of the recipe's first filter stage that names one, if any."""
    names = [s.tokenizer for s in spec.stages if isinstance(s, FilterConfig) and s.tokenizer]
    return counting_tokenizer(names[0]) if names else None


def run_pipeline(spec: PipelineSpec) -> PipelineReport:
    """Run a recipe; write pair files, `rejects/`, `report.json`, the data card and `manifest.json`.

    Each step's output is stored in the stage cache under a key made of its input's key, its
    config, its code and every other file it reads; a rerun with the same key loads the stored
    output instead of computing. With `cache: false` the outputs go to a scratch directory
    instead, where only the step running and the one before it are kept.
    """
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".scratch.", dir=root) as scratch:
        cache = (
            StageCache(root / "stages") if spec.cache else StageCache(Path(scratch), scratch=True)
        )
        with cache:  # scratch entries are dropped in the background while the card is written
            with executor(spec.executor, spec.address) as runner:
                report, inputs = _run_steps(spec, cache, runner, stat_cache=root / "hashes.json")
            _write_report_files(spec, report, inputs)
    return report


def _write_report_files(spec: PipelineSpec, report: PipelineReport, inputs: list[dict]) -> None:
    """`report.json`, `spec.yaml`, the data card and `manifest.json` of a finished run."""
    write_text(report.model_dump_json(indent=2) + "\n", spec.output_dir / "report.json")
    write_text(
        yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), spec.output_dir / "spec.yaml"
    )
    write_run_data_card(spec.output_dir)
    write_manifest(
        spec.output_dir,
        kind="data",
        config=spec,
        inputs=inputs,
        outputs=describe_inputs([spec.output_dir / name for name in report.outputs]),
        extra={
            "stages": [{"stage": r.stage, "key": r.key, "cached": r.cached} for r in report.stages]
        },
    )


def _run_steps(
    spec: PipelineSpec, cache: StageCache, executor: Executor, *, stat_cache: Path
) -> tuple[PipelineReport, list[dict[str, Any]]]:
    """Run or load every step, write the rejects and pair files; return the report and inputs."""
    out_dir = spec.output_dir
    inputs = describe_inputs(spec.source.inputs, stat_cache=stat_cache)
    parent = hashlib.sha256(json.dumps([f["sha256"] for f in inputs]).encode()).hexdigest()
    reports: list[StageReport] = []
    previous: StageOutput | None = None
    for index, step in enumerate([spec.source, *spec.stages]):
        started = time.perf_counter()
        is_source = previous is None
        reads = [] if is_source else describe_inputs(step.reads(), stat_cache=stat_cache)
        inputs += [f for f in reads if f not in inputs]
        module = formats if is_source else sys.modules[type(step).__module__]
        code = code_version(module, records)
        key = stage_key(parent=parent, config=step, code=code, reads=[f["sha256"] for f in reads])
        stored = cache.load(key) if spec.cache else None
        if stored is None:
            directory = cache.begin(key)
            try:
                num_shards = (
                    _compute_source(spec.source, executor, directory, cache.scratch)
                    if previous is None
                    else _compute_stage(
                        previous, step, spec.shard_rows, executor, directory, cache.scratch
                    )
                )
            except BaseException:
                shutil.rmtree(directory, ignore_errors=True)
                raise
            output = cache.commit(key, directory, num_shards)
            if cache.scratch and previous is not None:
                cache.drop(previous)  # scratch: the next step reads only this
        else:
            output = stored
        name = "convert" if is_source else step.stage
        rejects_file = out_dir / "rejects" / f"{index:02d}_{name}.jsonl"
        write_parts(_read_slices(output.rejected, spec.shard_rows), rejects_file)
        reports.append(
            StageReport(
                stage=name,
                key=key,
                cached=stored is not None,
                rows_in=output.rows_in,
                rows_out=_scan_parts(output.kept).select(pl.len()).collect().item(),
                rejected=_reason_counts(_scan_parts(output.rejected)),
                seconds=round(time.perf_counter() - started, 3),
            )
        )
        previous, parent = output, key

    written = {f"{i:02d}_{r.stage}.jsonl" for i, r in enumerate(reports)}
    for stale in (out_dir / "rejects").glob("[0-9][0-9]_*.jsonl"):
        if stale.name not in written:
            stale.unlink()  # left by an earlier run of a longer recipe into the same directory

    columns = _scan_parts(previous.kept).collect_schema()
    public = [c for c in columns if not c.startswith("_")]
    names = ("train", "eval") if SPLIT in columns else ("pairs",)
    outputs = {}
    for name in names:
        slices = _read_slices(previous.kept, spec.shard_rows)
        parts = [s.filter(pl.col(SPLIT) == name) if SPLIT in columns else s for s in slices]
        file_name = f"{name}.{spec.output_format}"
        outputs[file_name] = write_parts([p.select(public) for p in parts], out_dir / file_name)
    if cache.scratch:
        cache.drop(previous)
    report = PipelineReport(name=spec.name, stages=reports, outputs=outputs, output_dir=out_dir)
    return report, inputs


def write_run_data_card(run_dir: Path) -> tuple[Path, Path]:
    """Regenerate `datacard.html` and `datacard.md` of a data run from the files it wrote."""
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    spec = PipelineSpec.model_validate(yaml.safe_load((run_dir / "spec.yaml").read_text()))
    labels = {f"{i:02d}_{s.stage}": s.reject_labels for i, s in enumerate(spec.stages, start=1)}
    rejects = {
        p.stem: read_reject_labels(p, labels.get(p.stem, {}).values())
        for p in sorted((run_dir / "rejects").glob("*.jsonl"))
    }
    pairs = pl.concat([scan_frame(run_dir / name) for name in report["outputs"]])
    return write_data_card(
        run_dir,
        report,
        pairs,
        rejects,
        labels=labels,
        tokenizer=_card_tokenizer(spec),
        judgments=read_judgments(run_dir, report),
    )


def read_judgments(run_dir: Path, report: dict[str, Any]) -> list[dict[str, Any]]:
    """The `judgment` of every output pair and of every row rejected from `binarize` on."""
    names = [s["stage"] for s in report["stages"]]
    if "binarize" not in names:
        return []
    first = names.index("binarize")
    judgments = []
    for name in report["outputs"]:
        judgments += scan_frame(run_dir / name).select("judgment").collect()["judgment"].to_list()
    for index in range(first, len(names)):
        path = run_dir / "rejects" / f"{index:02d}_{names[index]}.jsonl"
        with path.open(encoding="utf-8") as lines:
            judgments += [json.loads(line)["judgment"] for line in lines]
    return judgments


def write_report(run_dir: Path) -> list[Path]:
    """Render a run's report: the data card of a data run, `report.html` of a training run.

    Raises:
        DataError: `run_dir` is not a run directory, or a file the report reads is missing.
    """
    from orpo_pipeline.train.report import write_report as write_training_report

    kind = load_manifest(run_dir)["kind"]
    try:
        if kind == "train":
            return [write_training_report(run_dir)]
        return list(write_run_data_card(run_dir))
    except OSError as error:
        msg = f"{run_dir}: cannot render the {kind} report: {error.strerror or error}"
        if error.filename:
            msg += f" ({error.filename})"
        raise DataError(msg) from error
