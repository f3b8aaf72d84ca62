"""TensorBoard and MLflow receive the same numbers as `metrics.jsonl`, inside the run directory."""

import json
import sqlite3

import pytest

from orpo_pipeline.train.loop import TIMING_METRICS, train

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")


def test_tensorboard_and_mlflow_get_every_metric_in_the_run_dir(make_config, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    config = make_config(trackers=["jsonl", "tensorboard", "mlflow"], num_sample_generations=0)
    run = train(config).run_dir
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    expected = {
        (name, line["step"]): value
        for line in lines
        for name, value in line.items()
        if name != "step"
    }

    board = EventAccumulator(str(run / "tensorboard" / config.name))  # hparams sit one level down
    board.Reload()
    logged = {
        (tag, event.step): event.value
        for tag in board.Tags()["scalars"]
        for event in board.Scalars(tag)
    }
    assert logged.keys() == expected.keys()
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, rel=1e-6), key

    with sqlite3.connect(run / "mlflow.db") as db:
        rows = db.execute("SELECT key, step, value FROM metrics").fetchall()
        params = dict(db.execute("SELECT key, value FROM params").fetchall())
    stored = {(key, step): value for key, step, value in rows}
    assert stored.keys() == expected.keys()
    for key, value in expected.items():
        assert stored[key] == pytest.approx(value, rel=1e-12), key
    assert params["beta"] == str(config.beta) and params["max_steps"] == "2"
    assert {name for name, _ in expected} >= TIMING_METRICS
