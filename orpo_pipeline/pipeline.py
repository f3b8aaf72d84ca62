"""Pipeline recipes: a source, a list of stages, and the runner that collects and writes."""

import json
import time
from pathlib import Path
from typing import Any, Literal

import polars as pl
import yaml
from pydantic import BaseModel, ConfigDict, Field

from orpo_pipeline.formats import ConvertOptions, convert_files
from orpo_pipeline.io import write_frame, write_text
from orpo_pipeline.runs import describe_inputs, describe_file, write_manifest
from orpo_pipeline.stages import STAGES, AnyStageConfig
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


class StageReport(BaseModel):
    """Rows in and out of one stage, rejects by reason, and time taken."""

    stage: str
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


def run_pipeline(spec: PipelineSpec) -> PipelineReport:
    """Run a recipe; write pair files, `rejects/`, `report.json` and `manifest.json`."""
    out_dir = spec.output_dir
    started = time.perf_counter()
    converted = convert_files(spec.source.inputs, spec.source)
    frame = converted.pairs.with_row_index(ROW)
    reports = [
        StageReport(
            stage="convert",
            rows_in=converted.rows_in,
            rows_out=frame.height,
            rejected=_reason_counts(converted.rejects, "reason"),
            seconds=round(time.perf_counter() - started, 3),
        )
    ]
    write_frame(converted.rejects, out_dir / "rejects" / "00_convert.jsonl")
    for index, stage in enumerate(spec.stages, start=1):
        started = time.perf_counter()
        result = STAGES[stage.stage](frame.lazy(), stage).collect()
        rejected: dict[str, int] = {}
        if REASON in result.columns:
            rejects = result.filter(pl.col(REASON).is_not_null())
            result = result.filter(pl.col(REASON).is_null()).drop(REASON)
            rejected = _reason_counts(rejects, REASON)
            rejects_out = rejects.sort(ROW).select(
                pl.col(REASON).alias("reason"), pl.col("_file").alias("file"),
                pl.col("_line").alias("line"), pl.exclude(REASON, "_file", "_line", ROW),
            )
            write_frame(rejects_out, out_dir / "rejects" / f"{index:02d}_{stage.stage}.jsonl")
        reports.append(
            StageReport(
                stage=stage.stage,
                rows_in=frame.height,
                rows_out=result.height,
                rejected=rejected,
                seconds=round(time.perf_counter() - started, 3),
            )
        )
        assert frame.height == result.height + sum(rejected.values()), stage.stage
        frame = result

    if SPLIT in frame.columns:
        parts = {f"{name}.{spec.output_format}": frame.filter(pl.col(SPLIT) == name)
                 for name in ("train", "eval")}
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
    outputs: list[dict[str, Any]] = [describe_file(out_dir / name) for name in parts]
    write_manifest(
        out_dir,
        kind="data",
        config=spec,
        inputs=describe_inputs(spec.source.inputs),
        outputs=outputs,
        extra={"report": json.loads(report.model_dump_json())},
    )
    return report
