"""`make data train` twice gives the same run; one changed value or row shows up as just that.

The data recipe is the default one on the vendored HH-RLHF file; training uses the default
training config on a tiny Llama built here, so the whole test takes seconds.
"""

import json
import time
from pathlib import Path

import polars as pl
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from orpo_pipeline.cli import cli
from orpo_pipeline.runs import diff_manifests, find_runs, load_manifest, verify_run
from tests.conftest import REPO
from tests.train.conftest import build_model, build_tokenizer
from tests.train.test_loop import read_metrics


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-model")
    tokenizer = build_tokenizer()
    build_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def make_data(out: Path) -> dict:
    invoke("data", str(REPO / "pipelines" / "default.yaml"), "--set", f"output_dir={out}")
    return json.loads((out / "report.json").read_text())


def make_train(model: Path, data: Path, runs: Path, *overrides: str) -> Path:
    """One training run of the default config on the tiny model; its run directory."""
    before = set(runs.iterdir()) if runs.exists() else set()
    time.sleep(1.1)  # run ids carry the second they start
    settings = [
        f"model={model}",
        f"train_pairs={data / 'train.parquet'}",
        f"eval_pairs={data / 'eval.parquet'}",
        f"output_dir={runs}",
        "max_steps=3",
        "num_eval_pairs=8",
        "num_sample_generations=0",
        "eval_after=false",  # the default job's judged evaluation is tested in tests/evaluation
        *overrides,
    ]
    invoke(
        "train",
        str(REPO / "pipelines" / "train" / "default.yaml"),
        *[arg for setting in settings for arg in ("--set", setting)],
    )
    [run_dir] = set(runs.iterdir()) - before
    return run_dir


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "final" / "model.safetensors")


def test_data_and_train_twice_give_the_same_run(tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    data = tmp_path / "data"
    first_data, second_data = make_data(data), make_data(data)
    assert not any(stage["cached"] for stage in first_data["stages"])
    assert all(stage["cached"] for stage in second_data["stages"])
    assert {k: v for k, v in first_data.items() if k not in ("stages", "seconds")} == {
        k: v for k, v in second_data.items() if k not in ("stages", "seconds")
    }

    runs = tmp_path / "runs"
    first, second = (make_train(tiny_model, data, runs) for _ in range(2))
    assert read_metrics(first) == read_metrics(second)
    a, b = weights(first), weights(second)
    assert [name for name in a if not torch.equal(a[name], b[name])] == []
    same = diff_manifests(load_manifest(first), load_manifest(second))
    assert same == {
        "inputs": {},
        "outputs": {},
        "config": {},
        "code": {},
        "packages": {},
        "evaluation": {},
    }
    assert not [p for p in verify_run(load_manifest(second)) if p.startswith("input")]

    changed_value = make_train(tiny_model, data, runs, "learning_rate=1e-3")
    changes = diff_manifests(load_manifest(first), load_manifest(changed_value))
    assert changes["config"] == {"learning_rate": [5e-5, 1e-3]}
    assert changes["inputs"] == {}
    assert changes["outputs"]  # other weights

    pairs = pl.read_parquet(data / "train.parquet")
    edited = pairs.with_columns(
        pl.when(pl.int_range(pl.len()) == 0)
        .then(pl.lit("an edited source"))
        .otherwise(pl.col("source"))
        .alias("source")
    )
    edited.write_parquet(data / "train.parquet")
    changed_row = make_train(tiny_model, data, runs)
    changes = diff_manifests(load_manifest(first), load_manifest(changed_row))
    assert set(changes["inputs"]) == {str(data / "train.parquet")}
    assert changes["config"] == {}
    assert any("input changed" in problem for problem in verify_run(load_manifest(first)))
    assert sorted(find_runs(runs)) == sorted([first, second, changed_value, changed_row])
