import gzip
import json
import shutil

import polars as pl
import pytest
import yaml

from orpo_pipeline.config_files import load_config
from orpo_pipeline.pipeline import PipelineSpec, run_pipeline
from orpo_pipeline.runs import diff_manifests, load_manifest, verify_run
from tests.conftest import REPO


def hh_row(human: str, chosen: str, rejected: str) -> dict:
    prefix = f"\n\nHuman: {human}\n\nAssistant:"
    return {"chosen": f"{prefix} {chosen}", "rejected": f"{prefix} {rejected}"}


def write_hh(path, rows):
    with gzip.open(path, "wt") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")


@pytest.fixture
def recipe(tmp_path):
    rows = [hh_row(f"question {i}", f"good answer {i}", f"bad answer {i}") for i in range(40)]
    rows += [rows[3], hh_row("same", "an  answer", "an answer"), "{not json", hh_row("q", "", "x")]
    write_hh(tmp_path / "hh.jsonl.gz", rows)
    spec = {
        "name": "tiny",
        "source": {"inputs": [str(tmp_path / "hh.jsonl.gz")], "format": "hh_rlhf"},
        "stages": [
            {"stage": "validate"},
            {"stage": "dedupe"},
            {"stage": "filter"},
            {"stage": "split", "eval_size": 8},
        ],
        "output_dir": str(tmp_path / "out"),
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path / "recipe.yaml"


def test_counts_reconcile_and_every_removed_row_has_a_reason(recipe):
    report = run_pipeline(load_config(recipe, PipelineSpec))
    convert, *stages = report.stages
    assert convert.rows_in == 44
    assert convert.rows_in == convert.rows_out + sum(convert.rejected.values())
    for before, stage in zip(report.stages, stages, strict=False):
        assert stage.rows_in == before.rows_out
        assert stage.rows_in == stage.rows_out + sum(stage.rejected.values())
    rejected = {reason for s in report.stages for reason in s.rejected}
    assert {"duplicate", "chosen_equals_rejected"} <= rejected
    assert report.outputs["train.parquet"] + report.outputs["eval.parquet"] == stages[-1].rows_out
    out = report.output_dir
    train, evaluation = (
        pl.read_parquet(out / "train.parquet"),
        pl.read_parquet(out / "eval.parquet"),
    )
    assert not set(train["id"]) & set(evaluation["id"])
    assert train.columns == [
        "id",
        "prompt",
        "chosen",
        "rejected",
        "source",
        "score_chosen",
        "score_rejected",
    ]
    rejects = pl.concat(
        [
            pl.read_ndjson(p).select("reason")
            for p in sorted((out / "rejects").glob("*.jsonl"))
            if p.stat().st_size
        ],
    )
    total_rejected = sum(sum(s.rejected.values()) for s in report.stages)
    assert rejects.height == total_rejected
    dup = pl.read_ndjson(out / "rejects" / "02_dedupe.jsonl")
    assert dup["reason"].to_list() == ["duplicate"]
    assert dup["line"].to_list() == [41]


def test_rerun_skips_every_stage_and_writes_identical_files(recipe):
    spec = load_config(recipe, PipelineSpec)
    first = run_pipeline(spec)
    files = {p.name: p.read_bytes() for p in first.output_dir.glob("*.parquet")}
    second = run_pipeline(spec)
    assert all(stage.cached for stage in second.stages)
    assert not any(stage.cached for stage in first.stages)
    assert {p.name: p.read_bytes() for p in second.output_dir.glob("*.parquet")} == files
    assert [s.rejected for s in first.stages] == [s.rejected for s in second.stages]


def test_a_changed_config_value_changes_only_later_stage_keys(recipe):
    first = run_pipeline(load_config(recipe, PipelineSpec))
    changed = run_pipeline(load_config(recipe, PipelineSpec, ["stages.3.eval_size=12"]))
    assert [s.cached for s in changed.stages] == [True, True, True, True, False]
    assert [a.key == b.key for a, b in zip(first.stages, changed.stages, strict=True)] == [
        True,
        True,
        True,
        True,
        False,
    ]


def test_a_changed_input_row_changes_every_key_and_the_input_hash(recipe, tmp_path):
    spec = load_config(recipe, PipelineSpec)
    first = run_pipeline(spec)
    before = load_manifest(first.output_dir)
    shutil.copytree(first.output_dir, tmp_path / "run_a")
    rows = [hh_row(f"question {i}", f"good answer {i}", f"bad answer {i}") for i in range(40)]
    rows[5] = hh_row("question 5", "a better answer", "bad answer 5")
    write_hh(spec.source.inputs[0], rows)
    second = run_pipeline(spec)
    assert not any(a.key == b.key for a, b in zip(first.stages, second.stages, strict=True))
    changes = diff_manifests(before, load_manifest(second.output_dir))
    assert list(changes["inputs"]) == [str(spec.source.inputs[0])]
    assert changes["config"] == {}
    assert set(changes["outputs"]) <= {str(first.output_dir / n) for n in first.outputs}
    assert changes["outputs"]
    assert any("input changed" in p for p in verify_run(before))


EXPECTED_ROWS_IN = {
    "default.yaml": 2312,
    "oasst_trees.yaml": 100,
    "alpaca_eval_judgments.yaml": 1610,
    "sft_alpaca_to_pairs.yaml": 999,
}


def test_every_shipped_recipe_is_tested():
    assert {p.name for p in (REPO / "pipelines").glob("*.yaml")} == set(EXPECTED_ROWS_IN)


@pytest.mark.parametrize("name", sorted(EXPECTED_ROWS_IN))
def test_shipped_recipe_runs_on_the_real_data(name, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    spec = load_config(REPO / "pipelines" / name, PipelineSpec, [f"output_dir={tmp_path}"])
    report = run_pipeline(spec)
    convert, *stages = report.stages
    assert convert.rows_in == EXPECTED_ROWS_IN[name]
    assert convert.rows_in >= sum(convert.rejected.values())
    for before, stage in zip(report.stages, stages, strict=False):
        assert stage.rows_in == before.rows_out == stage.rows_out + sum(stage.rejected.values())
    assert sum(report.outputs.values()) == stages[-1].rows_out > 0
    train, held_out = (pl.read_parquet(tmp_path / f) for f in ("train.parquet", "eval.parquet"))
    prompts = [
        set(f["prompt"].list.eval(pl.element().struct.field("content")).list.join("\n"))
        for f in (train, held_out)
    ]
    assert not prompts[0] & prompts[1]


def test_default_recipe_counts(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    spec = load_config(
        REPO / "pipelines" / "default.yaml", PipelineSpec, [f"output_dir={tmp_path}"]
    )
    report = run_pipeline(spec)
    assert report.stages[0].rejected == {"empty_response": 4, "roles_not_alternating": 9}
    assert report.outputs == {"train.parquet": 2199, "eval.parquet": 100}
