"""Pipeline recipes: a source, a list of stages, and the runner that collects and writes."""

import hashlib
import json
import time
from pathlib import Path
from typing import Literal

import polars as pl
import yaml
from pydantic import BaseModel, ConfigDict, Field

from orpo_pipeline import exprs, formats, records
from orpo_pipeline.cache import StageCache, cache_root, code_version, stage_key
from orpo_pipeline.formats import ConvertOptions, convert_files
from orpo_pipeline.io import write_frame, write_text
from orpo_pipeline.runs import describe_inputs, write_manifest
from orpo_pipeline.stages import STAGES, AnyStageConfig, base
from orpo_pipeline.stages.base import REASON, ROW
from orpo_pipeline.stages.split import SPLIT


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
    """Reuse stage outputs whose input, config and code are unchanged."""


class StageReport(BaseModel):
    """Rows in and out of one stage, rejects by reason, and time taken."""

    stage: str
    key: str
    """Content address of the stage output: sha256 of input key, config and code."""
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


def _public(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort(ROW).select(c for c in frame.columns if not c.startswith("_"))


def _reason_counts(rejects: pl.DataFrame, column: str) -> dict[str, int]:
    counts = rejects.group_by(column).len().sort(column)
    return dict(zip(counts[column].to_list(), counts["len"].to_list(), strict=True))


def _convert(source: SourceConfig) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    converted = convert_files(source.inputs, source)
    return converted.pairs.with_row_index(ROW), converted.rejects, converted.rows_in


def _run_stage(frame: pl.DataFrame, stage: BaseModel) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    result = STAGES[stage.stage](frame.lazy(), stage).collect()
    if REASON not in result.columns:
        return result, pl.DataFrame(schema={"reason": pl.String}), frame.height
    rejected = result.filter(pl.col(REASON).is_not_null()).sort(ROW)
    rejected = rejected.select(
        pl.col(REASON).alias("reason"),
        pl.col("_file").alias("file"),
        pl.col("_line").alias("line"),
        pl.exclude(REASON, "_file", "_line"),
    )
    return result.filter(pl.col(REASON).is_null()).drop(REASON), rejected, frame.height


def run_pipeline(spec: PipelineSpec) -> PipelineReport:
    """Run a recipe; write pair files, `rejects/`, `report.json` and `manifest.json`.

    Each step's output is stored in the stage cache under a key made of its input's key, its
    config and its code; a rerun with the same key loads the stored output instead of computing.
    """
    out_dir = spec.output_dir
    cache = StageCache(cache_root() / "stages")
    inputs = describe_inputs(spec.source.inputs, stat_cache=cache_root() / "hashes.json")
    parent = hashlib.sha256(json.dumps([f["sha256"] for f in inputs]).encode()).hexdigest()
    steps: list[BaseModel] = [spec.source, *spec.stages]
    reports = []
    frame = pl.DataFrame()
    for index, step in enumerate(steps):
        started = time.perf_counter()
        is_source = index == 0
        code = (
            code_version(formats, records)
            if is_source
            else code_version(STAGES[step.stage], base, exprs)
        )
        key = stage_key(parent=parent, config=step, code=code)
        stored = cache.load(key) if spec.cache else None
        if stored is None:
            kept, rejected, rows_in = (
                _convert(spec.source) if is_source else _run_stage(frame, step)
            )
            cache.store(key, kept, rejected, rows_in=rows_in)
        else:
            kept, rejected, rows_in = stored
        name = "convert" if is_source else step.stage
        write_frame(rejected, out_dir / "rejects" / f"{index:02d}_{name}.jsonl")
        reports.append(
            StageReport(
                stage=name,
                key=key,
                cached=stored is not None,
                rows_in=rows_in,
                rows_out=kept.height,
                rejected=_reason_counts(rejected, "reason"),
                seconds=round(time.perf_counter() - started, 3),
            )
        )
        frame, parent = kept, key

    written = {f"{i:02d}_{r.stage}.jsonl" for i, r in enumerate(reports)}
    for stale in (out_dir / "rejects").glob("[0-9][0-9]_*.jsonl"):
        if stale.name not in written:
            stale.unlink()  # left by an earlier run of a longer recipe into the same directory

    if SPLIT in frame.columns:
        parts = {
            f"{name}.{spec.output_format}": frame.filter(pl.col(SPLIT) == name)
            for name in ("train", "eval")
        }
    else:
        parts = {f"pairs.{spec.output_format}": frame}
    for file_name, part in parts.items():
        write_frame(_public(part), out_dir / file_name)
    report = PipelineReport(
        name=spec.name,
        stages=reports,
        outputs={name: part.height for name, part in parts.items()},
        output_dir=out_dir,
    )
    write_text(report.model_dump_json(indent=2) + "\n", out_dir / "report.json")
    write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), out_dir / "spec.yaml")
    write_manifest(
        out_dir,
        kind="data",
        config=spec,
        inputs=inputs,
        outputs=describe_inputs([out_dir / name for name in parts]),
        extra={"stages": [{"stage": r.stage, "key": r.key, "cached": r.cached} for r in reports]},
    )
    return report
