"""`Run`: a training run's directory, its inputs, metrics, checkpoints, final model and manifest.

The loop calls `Run` to write anything; `Run` knows nothing of losses or batches.
"""

import hashlib
import importlib.util
import json
import os
import resource
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator, PartialState
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, broadcast_object_list, parse_flag_from_env
from transformers.utils import logging as hf_logging

from orpo_pipeline.cache import cache_root
from orpo_pipeline.errors import ConfigError, RunExistsError
from orpo_pipeline.io import write_text
from orpo_pipeline.models import resolve_model
from orpo_pipeline.runs import (
    config_hash,
    describe_inputs,
    load_manifest,
    utc_stamp,
    write_manifest,
)
from orpo_pipeline.train.checkpoints import load_checkpoint, save_checkpoint
from orpo_pipeline.train.config import LoraConfig, TrainConfig
from orpo_pipeline.train.report import write_report

logger = get_logger(__name__)  # logs on the main process only

TRACKER_PACKAGES = {"tensorboard": ("tensorboard",), "mlflow": ("mlflow", "sqlalchemy", "alembic")}
"""Packages (= module names) each tracker needs; mlflow-skinny lacks the sqlite store's two."""
INPUTS = "inputs.json"
"""The run's inputs by content as it began; a resume compares them with the current ones."""


def resolve_mixed_precision(setting: str) -> str:
    """Accelerate's `mixed_precision` for a config value: "auto" is bf16 only on capable CUDA."""
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def peak_memory_bytes() -> int:
    """This process's peak memory: max allocated on CUDA, else the peak RSS (Linux: KiB)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def check_trackers(trackers: list[str]) -> None:
    """Raise ConfigError for a requested tracker whose package is missing (Accelerate drops it)."""
    missing = [
        package
        for name in trackers
        for package in TRACKER_PACKAGES.get(name, ())
        if importlib.util.find_spec(package) is None
    ]
    if missing:
        msg = f"trackers {trackers} need missing packages: pip install {' '.join(missing)}"
        raise ConfigError(msg)


def _open_run_dir(config: TrainConfig, state: PartialState) -> Path:
    """A new run directory holding `config.yaml`, or the one being resumed."""
    if config.resume is not None:
        saved_path = config.resume / "config.yaml"
        if not saved_path.is_file():
            msg = f"resume: {config.resume} is not a training run directory (no config.yaml)"
            raise ConfigError(msg)
        saved = yaml.safe_load(saved_path.read_text(encoding="utf-8"))
        current = config.model_dump(mode="json")
        ignored = {"resume", "force_resume"}
        changed = sorted(k for k in current if k not in ignored and saved.get(k) != current[k])
        if changed:
            msg = f"resume: config differs from {saved_path} in {changed}; resume with that config"
            raise ConfigError(msg)
        return config.resume
    name = [f"{config.name}-{utc_stamp()}-{config_hash(config)[:8]}"]
    broadcast_object_list(name)  # one name on every process
    run_dir = config.output_dir / name[0]
    if state.is_main_process:
        try:
            run_dir.mkdir(parents=True)
        except FileExistsError as error:
            msg = f"run directory {run_dir} already exists; wait a second or change `name`"
            raise RunExistsError(msg) from error
        config_yaml = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
        write_text(config_yaml, run_dir / "config.yaml")
    state.wait_for_everyone()
    return run_dir


def run_inputs(config: TrainConfig, chat_template: str) -> dict[str, Any]:
    """Everything a run reads, by content: pairs, model and tokenizer files, template, data runs.

    The chat template is hashed as the string actually used; a data run is the directory of a pair
    file when it holds a `manifest.json`. A hub model id has no local directory and is recorded by
    name only (`model` in the manifest). A separate reference model counts as an input too.
    """
    pairs = [config.train_pairs] + ([config.eval_pairs] if config.eval_pairs else [])
    models = [config.model] + ([config.reference_model] if config.reference_model else [])
    model_dirs = [Path(resolve_model(name)) for name in models]
    data_runs = {str(p.parent) for p in pairs if (p.parent / "manifest.json").is_file()}
    return {
        "files": describe_inputs(
            pairs + [path for path in model_dirs if path.is_dir()],
            stat_cache=cache_root() / "hashes.json",
        ),
        "chat_template_sha256": hashlib.sha256(chat_template.encode()).hexdigest(),
        "data_runs": [
            {"path": path, "run_id": load_manifest(Path(path))["run_id"]}
            for path in sorted(data_runs)
        ],
    }


def changed_inputs(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Input files added, removed or changed between two `run_inputs`, and the chat template."""
    old = {f["path"]: f["sha256"] for f in before["files"]}
    new = {f["path"]: f["sha256"] for f in now["files"]}
    changed = sorted(path for path in old.keys() | new.keys() if old.get(path) != new.get(path))
    if before["chat_template_sha256"] != now["chat_template_sha256"]:
        changed.append("chat template")
    return changed


def _save_final(
    model: Any,
    tokenizer: Any,
    final_dir: Path,
    *,
    lora: LoraConfig | None,
    state_dict: dict[str, torch.Tensor],
) -> None:
    """Save model and tokenizer (with chat template) in HF format, atomically.

    `state_dict` is the policy's full state (gathered from every process under FSDP or ZeRO-3);
    merging LoRA adapters uses the local weights instead, so it needs unsharded training.
    """
    temp = final_dir.with_name(f".tmp-{final_dir.name}")
    shutil.rmtree(temp, ignore_errors=True)
    if lora is not None and lora.merge_on_save:
        model.merge_and_unload().save_pretrained(temp)
    else:  # the policy holds the model as `model`
        model.save_pretrained(
            temp, state_dict={k.removeprefix("model."): v for k, v in state_dict.items()}
        )
    tokenizer.save_pretrained(temp)
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(temp, final_dir)


class Run:
    """One run directory and the Accelerator that trains into it.

    Writes `config.yaml`, `inputs.json`, `data.json`, `metrics.jsonl`, `samples/`,
    `checkpoints/step-NNNNNN/`, `final/`, `manifest.json` and `report.html`.
    """

    def __init__(self, config: TrainConfig) -> None:
        check_trackers(config.trackers)
        self.config = config
        # Set up as the Accelerator will be: `ACCELERATE_USE_CPU` makes a CPU launch distributed.
        self.dir = _open_run_dir(
            config, PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
        )
        self.accelerator = Accelerator(
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            mixed_precision=resolve_mixed_precision(config.mixed_precision),
            log_with=[name for name in config.trackers if name != "jsonl"] or None,
            project_config=ProjectConfiguration(
                project_dir=str(self.dir), logging_dir=str(self.dir / "tensorboard")
            ),
        )
        self.is_main = self.accelerator.is_main_process
        if not self.is_main:  # one set of load and save progress bars, not one per process
            hf_logging.disable_progress_bar()
        self.metrics_path = self.dir / "metrics.jsonl"
        self.checkpoints = self.dir / "checkpoints"
        self.final_dir = self.dir / "final"
        self.inputs: dict[str, Any] = {}
        self.changed: list[str] = []
        self.resumed_from: dict[str, Any] | None = None

    def record_inputs(self, chat_template: str) -> None:
        """Hash the inputs; on resume, refuse changed ones unless `force_resume`."""
        config = self.config
        inputs = [run_inputs(config, chat_template) if self.is_main else None]
        broadcast_object_list(inputs)  # hashed once, checked on every process
        self.inputs = inputs[0]
        path = self.dir / INPUTS
        # A run killed before its inputs were written has no checkpoint either: it starts afresh.
        if config.resume is not None and path.is_file():
            self.changed = changed_inputs(json.loads(path.read_text(encoding="utf-8")), self.inputs)
            if self.changed and not config.force_resume:
                msg = (
                    f"resume: inputs changed since {self.dir} began: {self.changed}; restore "
                    f"them, or set force_resume: true to continue with the new ones"
                )
                raise ConfigError(msg)
            if self.changed:
                logger.warning("resuming %s with changed inputs: %s", self.dir, self.changed)
        elif self.is_main:
            write_text(json.dumps(self.inputs, indent=2) + "\n", path)

    def write_json(self, name: str, value: Any) -> None:
        """Write `value` as `<run>/name` (main process)."""
        if self.is_main:
            write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", self.dir / name)

    def start_trackers(self) -> None:
        """Start TensorBoard / MLflow as configured (after `accelerator.prepare`)."""
        config = self.config
        if "mlflow" in config.trackers and self.is_main:  # else MLflow writes mlflow.db in the cwd
            import mlflow

            mlflow.set_tracking_uri(f"sqlite:///{(self.dir / 'mlflow.db').resolve()}")
        self.accelerator.init_trackers(
            config.name, config={k: str(v) for k, v in config.model_dump(mode="json").items()}
        )

    def log(self, record: dict[str, Any]) -> None:
        """Append `record` (with its `step`) to `metrics.jsonl` and the trackers."""
        if self.is_main:
            with self.metrics_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def write_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        """Write greedy samples as `samples/step-NNNNNN.jsonl` (main process)."""
        text = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
        write_text(text, self.dir / "samples" / f"step-{step:06d}.jsonl")

    def save_checkpoint(self, step: int) -> None:
        """Checkpoint model, optimizer, scheduler and RNG after `step` optimizer steps."""
        save_checkpoint(
            self.accelerator,
            self.checkpoints,
            step,
            {"step": step},
            copies=(self.metrics_path,),
            keep=self.config.save_total_limit,
        )

    def restore(self) -> int:
        """On resume, load the newest complete checkpoint and its metrics; the step to start at."""
        if self.config.resume is None:
            return 0
        restored = load_checkpoint(self.accelerator, self.checkpoints)
        if self.is_main:  # metrics as of the checkpoint; later lines would be duplicated
            self.metrics_path.unlink(missing_ok=True)
            if restored is not None and (restored[0] / self.metrics_path.name).exists():
                shutil.copy2(restored[0] / self.metrics_path.name, self.metrics_path)
        start_step = restored[1]["step"] if restored is not None else 0
        self.resumed_from = {
            "run_id": self.dir.name,
            "path": str(self.dir),
            "checkpoint": restored[0].name if restored is not None else None,
            "step": start_step,
            "inputs_changed": self.changed,
        }
        return start_step

    def save_final(self, policy: Any, tokenizer: Any) -> None:
        """Save `final/` (gathering sharded weights) and release the prepared objects."""
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        state_dict = accelerator.get_state_dict(policy)  # on every process: gathers shards
        if self.is_main:
            _save_final(
                accelerator.unwrap_model(policy).model,
                tokenizer,
                self.final_dir,
                lora=self.config.lora,
                state_dict=state_dict,
            )

    def evals(self) -> list[dict[str, float]]:
        """The evaluation records of `metrics.jsonl`, oldest first."""
        path = self.metrics_path
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        return [record for record in map(json.loads, lines) if "eval_loss" in record]

    def finish(self, extra: dict[str, Any]) -> None:
        """Write `manifest.json` and `report.html` (main process)."""
        if not self.is_main:
            return
        config = self.config
        write_manifest(
            self.dir,
            kind="train",
            config=config,
            inputs=self.inputs["files"],
            outputs=describe_inputs([self.final_dir]),
            extra={
                "model": config.model,
                "model_path": resolve_model(config.model),
                "chat_template_sha256": self.inputs["chat_template_sha256"],
                "data_runs": self.inputs["data_runs"],
                "resumed_from": self.resumed_from,
                **extra,
            },
        )
        write_report(self.dir)
