"""The Ray executor on a real local Ray cluster (2 CPUs, one per test module): the same files as
the local executor, a shared stage cache, and a worker killed mid-shard retried without a trace.
"""

import gzip
import json
import os
from pathlib import Path

import polars as pl
import pytest
import ray
import yaml
from click.testing import CliRunner

from orpo_pipeline.cli import cli
from orpo_pipeline.pipeline import PipelineSpec, run_pipeline
from tests.conftest import REPO

HH = REPO / "data" / "hh-rlhf-harmless-base" / "test.jsonl.gz"
TIMINGS = {"seconds", "cached"}


def _kill_hook(request_file: str):
    """A Ray worker setup hook: the worker that runs the filter while `request_file` exists
    deletes it and SIGKILLs itself in the middle of computing its shard (so once per request)."""

    def setup() -> None:
        import signal

        import polars as pl

        from orpo_pipeline import stages

        original = stages.STAGES["filter"]

        def kill_once(rows: pl.Series) -> pl.Series:
            try:
                os.remove(request_file)
            except FileNotFoundError:
                return rows
            os.kill(os.getpid(), signal.SIGKILL)
            return rows  # not reached

        def filter_that_may_die(lf, config):
            return original(lf, config).with_columns(pl.col("_row").map_batches(kill_once))

        stages.STAGES["filter"] = filter_that_may_die

    return setup


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster with 2 CPUs for the module; yields the kill-request file's path."""
    request_file = tmp_path_factory.mktemp("ray") / "kill-request"
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level="WARNING",
        runtime_env={
            "worker_process_setup_hook": _kill_hook(str(request_file)),
            "env_vars": {
                "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
            },
        },
    )
    yield request_file
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[Path]:
    """The vendored HH-RLHF test split cut into three files, so conversion has three shards."""
    with gzip.open(HH, "rt", encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    directory = tmp_path_factory.mktemp("inputs")
    paths = []
    for index, begin in enumerate(range(0, len(lines), 800)):
        paths.append(directory / f"hh-{index}.jsonl")
        paths[-1].write_text("\n".join(lines[begin : begin + 800]) + "\n", encoding="utf-8")
    return paths


def _spec(recipe: dict, inputs: list[Path], out: Path, **fields) -> PipelineSpec:
    source = {**recipe["source"], "inputs": [str(p) for p in inputs]}
    return PipelineSpec.model_validate(
        {**recipe, "source": source, "output_dir": str(out), "shard_rows": 500, **fields}
    )


DEFAULT = yaml.safe_load((REPO / "pipelines" / "default.yaml").read_text())
EVERY_GLOBAL_STAGE = {
    "name": "every-global-stage",
    "source": {"inputs": [], "format": "hh_rlhf"},
    "stages": [
        {"stage": "validate"},
        {"stage": "dedupe", "scope": "prompt"},
        {"stage": "near_dedupe", "ngram_size": 3},
        {"stage": "filter", "drop_blank": True},
        {"stage": "decontaminate"},
        {"stage": "mix", "fractions": {"hh-0.jsonl": 0.9, "hh-1.jsonl": 0.5, "hh-2.jsonl": 1.0}},
        {"stage": "split", "eval_fraction": 0.1},
    ],
    "output_dir": "unused",
}


def _outputs(out: Path) -> dict[str, object]:
    """Pair files and rejects sorted by id (the report without timings): what must be equal."""
    files: dict[str, object] = {}
    for path in sorted([*out.glob("*.parquet"), *(out / "rejects").glob("*.jsonl")]):
        if path.suffix == ".parquet":
            frame = pl.read_parquet(path)
        else:  # polars cannot read an empty JSONL file (a stage that rejected nothing)
            frame = pl.read_ndjson(path) if path.stat().st_size else pl.DataFrame()
        if "id" in frame.columns:
            frame = frame.sort("id", "reason" if "reason" in frame.columns else "id")
        files[str(path.relative_to(out))] = frame
    report = json.loads((out / "report.json").read_text())
    files["report"] = [
        {k: v for k, v in stage.items() if k not in TIMINGS} for stage in report["stages"]
    ]
    return files


def _assert_same(local: Path, distributed: Path) -> None:
    expected, actual = _outputs(local), _outputs(distributed)
    assert expected.keys() == actual.keys()
    for name, frame in expected.items():
        if isinstance(frame, pl.DataFrame):
            assert frame.equals(actual[name]), name
            # Byte for byte: the same rows write the same file.
            assert frame.write_ipc(None).getvalue() == actual[name].write_ipc(None).getvalue()
        else:
            assert frame == actual[name], name


@pytest.mark.parametrize("recipe", [DEFAULT, EVERY_GLOBAL_STAGE], ids=["default", "global"])
def test_ray_outputs_equal_local(cluster, inputs, tmp_path, recipe):
    local = run_pipeline(_spec(recipe, inputs, tmp_path / "local", cache=False))
    distributed = run_pipeline(_spec(recipe, inputs, tmp_path / "ray", cache=False, executor="ray"))
    assert [s.rows_out for s in distributed.stages] == [s.rows_out for s in local.stages]
    if recipe is EVERY_GLOBAL_STAGE:
        rejected = {s.stage: sum(s.rejected.values()) for s in local.stages}
        assert rejected["near_dedupe"] and rejected["mix"] and rejected["dedupe"], rejected
    _assert_same(local.output_dir, distributed.output_dir)
    for name in ("train.parquet", "eval.parquet"):  # same shards, same writer: same bytes
        assert (local.output_dir / name).read_bytes() == (
            distributed.output_dir / name
        ).read_bytes()


def test_ray_and_local_share_the_stage_cache(cluster, inputs, tmp_path):
    first = run_pipeline(_spec(DEFAULT, inputs, tmp_path / "ray", executor="ray"))
    assert not any(s.cached for s in first.stages)
    again = run_pipeline(_spec(DEFAULT, inputs, tmp_path / "local"))
    assert all(s.cached for s in again.stages)
    assert [s.key for s in again.stages] == [s.key for s in first.stages]


def test_a_worker_killed_mid_shard_is_retried_and_the_result_is_unchanged(
    cluster, inputs, tmp_path
):
    local = run_pipeline(_spec(DEFAULT, inputs, tmp_path / "local", cache=False))
    cluster.write_text("kill the next filter shard")
    distributed = run_pipeline(_spec(DEFAULT, inputs, tmp_path / "ray", executor="ray"))
    assert not cluster.exists(), "no worker was killed"
    _assert_same(local.output_dir, distributed.output_dir)
    cache = Path(os.environ["ORPO_PIPELINE_CACHE"]) / "stages"
    assert not list(cache.glob(".*")), "a temporary entry or shard file was left behind"
    for entry in cache.iterdir():
        markers = sorted(p.name for p in (entry / "completions").iterdir())
        assert (
            len(markers)
            == len(list(entry.glob("kept-*.parquet")))
            == len(list(entry.glob("rejected-*.parquet")))
        )


def test_cli_flags_choose_the_executor(cluster, inputs, tmp_path):
    recipe = {**DEFAULT, "source": {**DEFAULT["source"], "inputs": [str(inputs[0])]}}
    recipe["output_dir"] = str(tmp_path / "out")
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    address = ray.get_runtime_context().gcs_address
    args = ["data", str(tmp_path / "recipe.yaml"), "--executor", "ray", "--address", address]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    spec = yaml.safe_load((tmp_path / "out" / "spec.yaml").read_text())
    assert (spec["executor"], spec["address"]) == ("ray", address)
    assert pl.read_parquet(tmp_path / "out" / "train.parquet").height > 0
