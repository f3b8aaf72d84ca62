"""Training manifests name every input by hash; resuming refuses inputs that changed."""

import hashlib
import json
import shutil

import pytest

from orpo_pipeline.errors import ConfigError
from orpo_pipeline.train.loop import train
from tests.train.conftest import CHAT_TEMPLATE, make_pairs, write_pairs


@pytest.fixture
def data_run(pairs_files, tmp_path):
    """The tiny pairs inside a data run directory, as `orpo-pipeline data` leaves them."""
    run = tmp_path / "data-run"
    run.mkdir()
    for path in pairs_files:
        shutil.copy(path, run / path.name)
    (run / "manifest.json").write_text(json.dumps({"kind": "data", "run_id": "tiny-data-7"}))
    return run


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_lists_pairs_model_tokenizer_chat_template_and_data_run(
    make_config, tiny_dir, data_run
):
    template = CHAT_TEMPLATE.replace("<|im_start|>", "<|im_start|> ")
    config = make_config(
        train_pairs=data_run / "train.parquet",
        eval_pairs=data_run / "eval.parquet",
        chat_template=template,
        max_steps=1,
        num_sample_generations=0,
    )
    run = train(config).run_dir
    manifest = json.loads((run / "manifest.json").read_text())
    inputs = {entry["path"]: entry["sha256"] for entry in manifest["inputs"]}
    for path in (
        data_run / "train.parquet",
        data_run / "eval.parquet",
        tiny_dir / "model.safetensors",
        tiny_dir / "config.json",
        tiny_dir / "tokenizer.json",
        tiny_dir / "tokenizer_config.json",
        tiny_dir / "chat_template.jinja",
    ):
        assert inputs[str(path)] == sha256(path), path
    # The template actually used (the config's), not the tokenizer's file.
    assert manifest["chat_template_sha256"] == hashlib.sha256(template.encode()).hexdigest()
    assert manifest["data_runs"] == [{"path": str(data_run), "run_id": "tiny-data-7"}]
    assert manifest["resumed_from"] is None
    assert json.loads((run / "inputs.json").read_text())["files"] == manifest["inputs"]


def test_resume_refuses_changed_inputs_unless_forced(make_config, data_run, tmp_path):
    train_pairs = data_run / "train.parquet"
    config = make_config(
        train_pairs=train_pairs,
        eval_pairs=None,
        max_steps=2,
        save_every_steps=1,
    )
    first = train(config)  # resuming it continues from its step-1 checkpoint
    write_pairs(make_pairs(17)[1:], tmp_path / "edited.parquet")
    shutil.move(tmp_path / "edited.parquet", train_pairs)

    resume = config.model_copy(update={"resume": first.run_dir})
    with pytest.raises(ConfigError, match=rf"inputs changed .*\['{train_pairs}'\].*force_resume"):
        train(resume)

    resumed = train(resume.model_copy(update={"force_resume": True}))
    manifest = json.loads((resumed.run_dir / "manifest.json").read_text())
    assert manifest["resumed_from"] == {
        "run_id": first.run_dir.name,
        "path": str(first.run_dir),
        "checkpoint": "step-000001",
        "step": 1,
        "inputs_changed": [str(train_pairs)],
    }
    current = {entry["path"]: entry["sha256"] for entry in manifest["inputs"]}
    assert current[str(train_pairs)] == sha256(train_pairs)
