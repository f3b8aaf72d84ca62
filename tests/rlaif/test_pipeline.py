"""The AI-feedback recipe end to end on tiny models, and kill -9 during sampling."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import yaml

from orpo_pipeline.pipeline import PipelineSpec, run_pipeline
from orpo_pipeline.stages.binarize import REASONS
from tests.rlaif.conftest import write_pairs

REPO = Path(__file__).resolve().parents[2]


def recipe(inputs: Path, out: Path, lm: Path, judge: dict, **sample) -> dict:
    return {
        "name": "rlaif-tiny",
        "source": {"inputs": [str(inputs)], "format": "trl_preference"},
        "stages": [
            {"stage": "dedupe", "scope": "prompt"},
            {
                "stage": "sample",
                "model": str(lm),
                "num_samples": 3,
                "max_new_tokens": 6,
                "temperature": 1.0,
                "top_p": 1.0,
                "batch_size": 4,
                **sample,
            },
            {"stage": "judge", "judge_truncated": True, **judge},
            {"stage": "binarize"},
            {"stage": "filter", "drop_blank": True, "drop_identical": True},
            {"stage": "split", "eval_size": 2},
        ],
        "output_dir": str(out),
    }


def test_recipe_counts_reconcile_and_every_rejected_prompt_has_a_reason(tiny_lm, tiny_rm, tmp_path):
    inputs = write_pairs(tmp_path / "pairs.jsonl", 12)
    judge = {"judge": "reward_model", "model": str(tiny_rm)}
    spec = PipelineSpec.model_validate(recipe(inputs, tmp_path / "out", tiny_lm, judge))
    report = run_pipeline(spec)
    by_stage = {s.stage: s for s in report.stages}
    assert by_stage["sample"].rows_in == by_stage["sample"].rows_out == 12
    assert by_stage["judge"].rows_out == 12
    binarized = by_stage["binarize"]
    assert binarized.rows_in == 12
    assert set(binarized.rejected) <= set(REASONS)
    assert (
        binarized.rows_out + sum(binarized.rejected.values()) == 12
    )  # best_vs_worst: 1 per prompt
    assert sum(report.outputs.values()) == report.stages[-1].rows_out > 0
    train = pl.read_parquet(tmp_path / "out" / "train.parquet")
    assert (train["score_chosen"] > train["score_rejected"]).all()
    judgment = train["judgment"][0]
    assert json.loads(judgment["judge"])["sha256"]
    assert len(judgment["responses"]) == 3
    rejects = (tmp_path / "out" / "rejects" / "04_binarize.jsonl").read_text().splitlines()
    assert len(rejects) == sum(binarized.rejected.values())
    assert all(json.loads(line)["judgment"]["scores"] for line in rejects)
    card = (tmp_path / "out" / "datacard.md").read_text()
    assert "## Judge" in card and "| responses | 36 |" in card and "longer answer chosen" in card


def _spec_file(workdir: Path, tiny_lm: Path, tiny_rm: Path) -> Path:
    workdir.mkdir()
    inputs = write_pairs(workdir / "pairs.jsonl", 30)
    judge = {"judge": "reward_model", "model": str(tiny_rm)}
    spec = recipe(inputs, workdir / "out", tiny_lm, judge, num_samples=2, batch_size=2)
    path = workdir / "recipe.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _run(spec: Path, cache: Path) -> subprocess.Popen:
    # One thread: a tiny model spends its time in thread hand-offs, not arithmetic.
    env = os.environ | {"ORPO_PIPELINE_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "orpo_pipeline", "data", str(spec)]
    return subprocess.Popen(
        command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _outputs(out: Path) -> dict[str, pl.DataFrame]:
    return {name: pl.read_parquet(out / name) for name in ("train.parquet", "eval.parquet")}


def test_kill_9_during_sampling_resumes_from_the_cache_with_identical_pairs(
    tiny_lm, tiny_rm, tmp_path
):
    straight = _spec_file(tmp_path / "straight", tiny_lm, tiny_rm)
    done = _run(straight, tmp_path / "straight-cache")
    assert done.wait(timeout=600) == 0, done.stderr.read().decode()[-3000:]

    killed = _spec_file(tmp_path / "killed", tiny_lm, tiny_rm)
    cache = tmp_path / "killed-cache"
    process = _run(killed, cache)
    deadline = time.monotonic() + 600
    shards: list[Path] = []
    while len(shards) < 3 and process.poll() is None and time.monotonic() < deadline:
        shards = list(cache.glob("samples/*/*.jsonl"))
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    at_kill = {p.name for p in cache.glob("samples/*/*.jsonl")}
    assert 3 <= len(at_kill) < 30, "the kill must land during sampling (60 responses, 2 a shard)"
    for shard in cache.glob("samples/*/*.jsonl"):  # every published shard is whole
        lines = shard.read_text().splitlines()
        assert len(lines) == 2 and all(json.loads(line)["text"] is not None for line in lines)

    rerun = _run(killed, cache)
    assert rerun.wait(timeout=600) == 0, rerun.stderr.read().decode()[-3000:]
    assert {p.name for p in cache.glob("samples/*/*.jsonl")} >= at_kill  # nothing regenerated
    assert len(list(cache.glob("samples/*/*.jsonl"))) == 30
    ours, theirs = _outputs(tmp_path / "killed" / "out"), _outputs(tmp_path / "straight" / "out")
    for name, frame in ours.items():
        assert frame.drop("judgment").equals(theirs[name].drop("judgment")), name
        scores = frame["judgment"].struct.field("scores")
        assert scores.equals(theirs[name]["judgment"].struct.field("scores"))
    assert ours["train.parquet"].height > 0


def test_label_command_samples_judges_and_binarizes(tiny_lm, tiny_rm, tmp_path):
    from click.testing import CliRunner

    from orpo_pipeline.cli import cli

    inputs = write_pairs(tmp_path / "pairs.jsonl", 6)
    args = ["label", str(inputs), "-o", str(tmp_path / "out"), "--model", str(tiny_lm)]
    args += ["--judge", "reward_model", "--judge-model", str(tiny_rm), "--num-samples", "2"]
    args += ["--max-new-tokens", "40", "--keep-given"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["convert", "sample", "judge", "binarize"]
    binarized = report["stages"][-1]
    assert binarized["rows_out"] + sum(binarized["rejected"].values()) == 6
    assert binarized["rows_out"] >= 1  # the given answers always end, so they can be judged
    pairs = pl.read_parquet(tmp_path / "out" / "pairs.parquet")
    assert (
        pairs["judgment"].struct.field("finish_reasons").list.first().to_list()
        == ["given"] * pairs.height
    )
