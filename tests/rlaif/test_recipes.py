"""The shipped RLAIF recipes on the real default model and data, shortened by overrides."""

import json
import math

import polars as pl
import pytest

from orpo_pipeline.config_files import load_config
from orpo_pipeline.pipeline import PipelineSpec, run_pipeline
from tests.rlaif.test_serve import REPO, running_server

SHORT = ["stages.3.size=2", "stages.4.num_samples=2", "stages.4.max_new_tokens=24"]
"""Two prompts, two answers each, 24 tokens: the whole recipe in seconds."""


def run_short(name: str, tmp_path, monkeypatch, *extra: str):
    monkeypatch.chdir(REPO)
    overrides = [*SHORT, "stages.5.judge_truncated=true", f"output_dir={tmp_path}", *extra]
    spec = load_config(REPO / "pipelines" / name, PipelineSpec, overrides)
    return run_pipeline(spec)


def check(report) -> dict:
    stages = {s.stage: s for s in report.stages}
    assert [s.stage for s in report.stages][5:8] == ["sample", "judge", "binarize"]
    assert stages["sample"].rows_in == stages["sample"].rows_out == 2
    for before, stage in zip(report.stages, report.stages[1:], strict=False):
        assert stage.rows_in == before.rows_out == stage.rows_out + sum(stage.rejected.values())
    return stages


@pytest.mark.integration
def test_rlaif_recipe_runs_offline_on_the_default_model(tmp_path, monkeypatch):
    report = run_short("rlaif.yaml", tmp_path, monkeypatch)
    check(report)
    card = (tmp_path / "datacard.md").read_text()
    assert "## Judge" in card and "order agreement" in card
    judgments = []
    for name in report.outputs:
        judgments += pl.read_parquet(tmp_path / name)["judgment"].to_list()
    for line in (tmp_path / "rejects" / "07_binarize.jsonl").read_text().splitlines():
        judgments.append(json.loads(line)["judgment"])
    assert len(judgments) == 2
    for judgment in judgments:
        identity = json.loads(judgment["judge"])
        assert identity["judge"] == "llm_judge" and len(identity["sha256"]) == 64
        assert math.isfinite(identity["position_prior"])  # calibrated by default
        assert len(judgment["comparisons"]) <= 1 and len(judgment["responses"]) == 2


@pytest.mark.integration
def test_rlaif_serve_recipe_judges_through_the_endpoint(tmp_path, monkeypatch):
    with running_server("default") as url:
        report = run_short("rlaif_serve.yaml", tmp_path, monkeypatch, f"stages.5.endpoint={url}")
    stages = check(report)
    assert stages["judge"].rows_out == 2
    card = (tmp_path / "datacard.md").read_text()
    assert url in card  # the endpoint is the judge's identity
