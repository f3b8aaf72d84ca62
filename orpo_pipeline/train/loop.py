"""`train(config)`: the ORPO training loop on Accelerate, read top to bottom."""

import dataclasses
import functools
import hashlib
import importlib.util
import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator, PartialState
from accelerate.logging import get_logger
from accelerate.utils import (
    ProjectConfiguration,
    broadcast_object_list,
    parse_flag_from_env,
    set_seed,
)
from tqdm import tqdm
from transformers import get_scheduler
from transformers.utils import logging as hf_logging

from orpo_pipeline.cache import cache_root
from orpo_pipeline.errors import ConfigError, DataError, RunExistsError
from orpo_pipeline.io import write_text
from orpo_pipeline.models import load_model, load_tokenizer, resolve_model
from orpo_pipeline.runs import (
    config_hash,
    describe_inputs,
    load_manifest,
    utc_stamp,
    write_manifest,
)
from orpo_pipeline.train.checkpoints import load_checkpoint, save_checkpoint
from orpo_pipeline.train.config import LoraConfig, TrainConfig
from orpo_pipeline.train.data import TokenizedPairs, read_pairs, tokenize_pairs
from orpo_pipeline.train.evaluate import evaluate, generate_samples
from orpo_pipeline.train.loss import SUMS, metric_sums, metrics_from_sums, orpo_loss
from orpo_pipeline.train.memory import return_freed_memory
from orpo_pipeline.train.policy import build_policy
from orpo_pipeline.train.report import SUMMARY_METRICS, write_report

logger = get_logger(__name__)  # logs on the main process only

TRACKER_PACKAGES = {"tensorboard": ("tensorboard",), "mlflow": ("mlflow", "sqlalchemy", "alembic")}
"""Packages (= module names) each tracker needs; mlflow-skinny lacks the sqlite store's two."""
INPUTS = "inputs.json"
"""The run's inputs by content as it began; a resume compares them with the current ones."""
TIMING_METRICS = frozenset({"step_seconds", "tokens_per_second"})
"""Wall-clock metrics in `metrics.jsonl`: the only ones that differ between identical runs."""


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Where a run went and how evaluation moved."""

    run_dir: Path
    final_dir: Path
    steps: int
    eval_before: dict[str, float]
    """Eval metrics at step 0 (TRL names, `eval_` prefix); empty without eval pairs."""
    eval_after: dict[str, float]
    """Eval metrics after the last step."""
    rejects: dict[str, dict[str, int]]
    """Pairs rejected at tokenization, per split and reason."""
    seconds: float

    def summary(self) -> str:
        """A few lines for the terminal."""
        lines = [f"run: {self.run_dir}", f"model: {self.final_dir} ({self.steps} steps)"]
        for split, reasons in self.rejects.items():
            if reasons:
                counts = ", ".join(f"{reason} {n}" for reason, n in reasons.items())
                lines.append(f"rejected {split} pairs: {counts}")
        if self.eval_before:
            lines.append(f"{'eval':<22}{'before':>10}{'after':>10}")
            for name in SUMMARY_METRICS:
                before, after = self.eval_before[f"eval_{name}"], self.eval_after[f"eval_{name}"]
                lines.append(f"{name:<22}{before:>10.4f}{after:>10.4f}")
        lines.append(f"took {self.seconds:.0f} s")
        return "\n".join(lines)


def resolve_mixed_precision(setting: str) -> str:
    """Accelerate's `mixed_precision` for a config value: "auto" is bf16 only on capable CUDA."""
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


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


@functools.cache
def _epoch_order(num_pairs: int, seed: int, epoch: int) -> tuple[int, ...]:
    order = list(range(num_pairs))
    random.Random(f"orpo-data:{seed}:{epoch}").shuffle(order)
    return tuple(order)


def step_pairs(step: int, *, num_pairs: int, pairs_per_step: int, seed: int) -> list[int]:
    """Indices of the pairs optimizer step `step` (0-based) trains on.

    The data is one stream of seeded per-epoch shuffles cut into equal steps, so the data
    position is the step number: resuming needs nothing else, and every step is full.
    """
    start = step * pairs_per_step
    return [
        _epoch_order(num_pairs, seed, j // num_pairs)[j % num_pairs]
        for j in range(start, start + pairs_per_step)
    ]


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
    name only (`model` in the manifest).
    """
    pairs = [config.train_pairs] + ([config.eval_pairs] if config.eval_pairs else [])
    model_dir = Path(resolve_model(config.model))
    data_runs = {str(p.parent) for p in pairs if (p.parent / "manifest.json").is_file()}
    return {
        "files": describe_inputs(
            pairs + ([model_dir] if model_dir.is_dir() else []),
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


def _add_lora(model: Any, lora: LoraConfig) -> Any:
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    settings = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, settings)


def _tokenize(path: Path, tokenizer: Any, config: TrainConfig, *, limit: int | None = None):
    rows = read_pairs(path, limit=limit)
    tokenized = tokenize_pairs(
        rows, tokenizer, max_length=config.max_length, max_prompt_length=config.max_prompt_length
    )
    if not tokenized.pairs:
        msg = f"{path}: none of {len(rows)} pairs can train (rejected: {tokenized.rejects})"
        raise DataError(msg)
    return rows, tokenized


def _data_report(tokenized: TokenizedPairs, rows: int) -> dict[str, Any]:
    return {
        "rows": rows,
        "pairs": len(tokenized.pairs),
        "rejects": tokenized.rejects,
        "prompts_truncated": tokenized.prompts_truncated,
        "responses_truncated": tokenized.responses_truncated,
    }


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


def _read_evals(metrics_path: Path) -> list[dict[str, float]]:
    lines = metrics_path.read_text(encoding="utf-8").splitlines() if metrics_path.exists() else []
    return [record for record in map(json.loads, lines) if "eval_loss" in record]


def train(config: TrainConfig) -> TrainResult:
    """Train with ORPO as `config` says; evaluate before, every `eval_every_steps` and after.

    Writes `<run>/config.yaml`, `inputs.json` (inputs by sha256), `data.json` (kept, rejected
    and truncated pairs), `metrics.jsonl`, `samples/step-NNNNNN.jsonl`,
    `checkpoints/step-NNNNNN/`, `final/` (model and tokenizer, loadable with
    `AutoModelForCausalLM`), `manifest.json`, `report.html`, and `tensorboard/` or `mlflow.db`
    when those trackers are asked for.
    """
    started = time.monotonic()
    check_trackers(config.trackers)
    if config.return_freed_memory:
        return_freed_memory()
    # Set up as the Accelerator below will be: `ACCELERATE_USE_CPU` makes a CPU launch distributed.
    run_dir = _open_run_dir(config, PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")))
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=resolve_mixed_precision(config.mixed_precision),
        log_with=[name for name in config.trackers if name != "jsonl"] or None,
        project_config=ProjectConfiguration(
            project_dir=str(run_dir), logging_dir=str(run_dir / "tensorboard")
        ),
    )
    is_main = accelerator.is_main_process
    if not is_main:  # one set of load and save progress bars, not one per process
        hf_logging.disable_progress_bar()
    set_seed(config.seed)

    tokenizer = load_tokenizer(config.model, chat_template=config.chat_template)
    inputs = [run_inputs(config, tokenizer.chat_template) if is_main else None]
    broadcast_object_list(inputs)  # hashed once, checked on every process
    inputs_path = run_dir / INPUTS
    changed = []
    # A run killed before its inputs were written has no checkpoint either: it starts afresh.
    if config.resume is not None and inputs_path.is_file():
        changed = changed_inputs(json.loads(inputs_path.read_text(encoding="utf-8")), inputs[0])
        if changed and not config.force_resume:
            msg = (
                f"resume: inputs changed since {run_dir} began: {changed}; restore them, "
                f"or set force_resume: true to continue with the new ones"
            )
            raise ConfigError(msg)
        if changed:
            logger.warning("resuming %s with changed inputs: %s", run_dir, changed)
    elif is_main:
        write_text(json.dumps(inputs[0], indent=2) + "\n", inputs_path)

    model = load_model(config.model, dtype=torch.float32)
    if config.lora is not None:
        model = _add_lora(model, config.lora)
    model.train()
    policy, collate = build_policy(
        model,
        share_prompt=config.share_prompt,
        pad_token_id=tokenizer.pad_token_id,
        gradient_checkpointing=config.gradient_checkpointing,
    )

    with accelerator.main_process_first():
        train_rows, train_set = _tokenize(config.train_pairs, tokenizer, config)
        eval_rows, eval_set = (
            _tokenize(config.eval_pairs, tokenizer, config, limit=config.num_eval_pairs)
            if config.eval_pairs is not None
            else ([], TokenizedPairs([], [], {}, 0, 0))
        )
    data_report = {"train": _data_report(train_set, len(train_rows))}
    if config.eval_pairs is not None:
        data_report["eval"] = _data_report(eval_set, len(eval_rows))
    if is_main:
        write_text(json.dumps(data_report, indent=2) + "\n", run_dir / "data.json")

    micro_batch = config.per_device_batch_size
    micro_steps = config.gradient_accumulation_steps
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    pairs_per_step = micro_batch * micro_steps * world
    num_pairs = len(train_set.pairs)
    seed, nll_on_prompt, max_grad_norm = config.seed, config.nll_on_prompt, config.max_grad_norm
    total_steps = config.max_steps or math.ceil(config.num_epochs * num_pairs / pairs_per_step)

    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(  # fused: one kernel per step, as TRL's default optimizer
        [group for group in groups if group["params"]], lr=config.learning_rate, fused=True
    )
    # Stepped by hand once per optimizer step, so its length is the step count on any world size.
    scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer,
        num_warmup_steps=config.warmup_steps,
        num_training_steps=total_steps,
    )
    if accelerator.state.deepspeed_plugin is not None:  # it reads this from a dataloader we lack
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = (
            micro_batch
        )
    policy, optimizer = accelerator.prepare(policy, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    if "mlflow" in config.trackers and is_main:  # else MLflow writes mlflow.db in the cwd
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{(run_dir / 'mlflow.db').resolve()}")
    accelerator.init_trackers(
        config.name, config={k: str(v) for k, v in config.model_dump(mode="json").items()}
    )

    checkpoints = run_dir / "checkpoints"
    metrics_path = run_dir / "metrics.jsonl"
    start_step = 0
    resumed_from = None
    if config.resume is not None:
        restored = load_checkpoint(accelerator, checkpoints)
        if is_main:  # metrics as of the checkpoint; later lines would be duplicated
            metrics_path.unlink(missing_ok=True)
            if restored is not None and (restored[0] / metrics_path.name).exists():
                shutil.copy2(restored[0] / metrics_path.name, metrics_path)
        start_step = restored[1]["step"] if restored is not None else 0
        resumed_from = {
            "run_id": run_dir.name,
            "path": str(run_dir),
            "checkpoint": restored[0].name if restored is not None else None,
            "step": start_step,
            "inputs_changed": changed,
        }

    def log(record: dict[str, Any]) -> None:
        if is_main:
            with metrics_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def run_eval(step: int) -> None:
        if not eval_set.pairs:
            return
        metrics = evaluate(
            policy,
            eval_set.pairs,
            collate=collate,
            accelerator=accelerator,
            beta=config.beta,
            nll_on_prompt=config.nll_on_prompt,
            batch_size=config.per_device_eval_batch_size,
        )
        log({"step": step, **metrics})
        logger.info("step %d: %s", step, metrics)
        count = config.num_sample_generations
        if is_main and count:
            samples = generate_samples(
                accelerator.unwrap_model(policy).model,
                tokenizer,
                eval_set.pairs[:count],
                [eval_rows[i] for i in eval_set.rows[:count]],
                max_new_tokens=config.max_new_tokens,
            )
            text = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
            write_text(text, run_dir / "samples" / f"step-{step:06d}.jsonl")

    if start_step == 0:
        run_eval(0)
    sums = torch.zeros(len(SUMS), device=device)  # on device; synced when logged
    interval = {"steps": 0, "seconds": 0.0, "tokens": 0}  # throughput since the last log
    grad_norm = None
    progress = tqdm(
        total=total_steps, initial=start_step, disable=not is_main, desc="train", unit="step"
    )
    for step in range(start_step, total_steps):
        step_started = time.perf_counter()
        order = step_pairs(step, num_pairs=num_pairs, pairs_per_step=pairs_per_step, seed=seed)
        starts = [(micro * world + rank) * micro_batch for micro in range(micro_steps)]
        mine = [i for start in starts for i in order[start : start + micro_batch]]
        window = [  # this process's micro-batches of the step
            collate([train_set.pairs[i] for i in order[start : start + micro_batch]]).to(device)
            for start in starts
        ]
        # NLL tokens in the whole window on all processes: the NLL is one token mean (§6).
        local_tokens = sum(train_set.pairs[i].nll_tokens(nll_on_prompt=nll_on_prompt) for i in mine)
        interval["tokens"] += sum(train_set.pairs[i].num_tokens for i in mine)
        window_tokens = accelerator.reduce(torch.tensor(float(local_tokens), device=device))
        learning_rate = scheduler.get_last_lr()[0]
        for batch in window:
            with accelerator.accumulate(policy):
                logps = policy(batch, nll_on_prompt=nll_on_prompt)
                out = orpo_loss(
                    logps.chosen,
                    logps.rejected,
                    logps.nll_sum,
                    beta=config.beta,
                    nll_tokens=window_tokens / (micro_steps * world),
                    num_pairs=micro_batch,
                )
                accelerator.backward(out.loss)  # divides by micro_steps itself: not again here
                if accelerator.sync_gradients and max_grad_norm is not None:
                    grad_norm = accelerator.clip_grad_norm_(policy.parameters(), max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            sums += metric_sums(logps, out)
        scheduler.step()
        interval["steps"] += 1
        interval["seconds"] += time.perf_counter() - step_started
        done = step + 1
        progress.update()
        if done % config.log_every_steps == 0 or done == total_steps:
            record = {
                "step": done,
                "epoch": done * pairs_per_step / num_pairs,
                "learning_rate": learning_rate,
                **metrics_from_sums(accelerator.reduce(sums).tolist(), beta=config.beta),
            }
            if grad_norm is not None:
                record["grad_norm"] = float(grad_norm)
            tokens = accelerator.reduce(torch.tensor(float(interval["tokens"]), device=device))
            record["step_seconds"] = interval["seconds"] / interval["steps"]
            record["tokens_per_second"] = float(tokens) / interval["seconds"]
            log(record)
            progress.set_postfix(
                loss=f"{record['loss']:.4f}", tokens_s=f"{record['tokens_per_second']:.0f}"
            )
            sums.zero_()
            interval = {"steps": 0, "seconds": 0.0, "tokens": 0}
        if done == total_steps or (config.eval_every_steps and done % config.eval_every_steps == 0):
            run_eval(done)
        if done < total_steps and config.save_every_steps and done % config.save_every_steps == 0:
            save_checkpoint(
                accelerator,
                checkpoints,
                done,
                {"step": done},
                copies=(metrics_path,),
                keep=config.save_total_limit,
            )
    progress.close()

    final_dir = run_dir / "final"
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(policy)  # on every process: gathers sharded weights
    if is_main:
        _save_final(
            accelerator.unwrap_model(policy).model,
            tokenizer,
            final_dir,
            lora=config.lora,
            state_dict=state_dict,
        )
    # Drop the DDP wrapper while the process group lives: freed after `end_training`, its reducer
    # destroys the gloo group holding the GIL, which can deadlock torch's worker threads at exit.
    policy, optimizer = accelerator.free_memory(policy, optimizer)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    evals = _read_evals(metrics_path)
    result = TrainResult(
        run_dir=run_dir,
        final_dir=final_dir,
        steps=total_steps,
        eval_before=evals[0] if evals else {},
        eval_after=evals[-1] if evals else {},
        rejects={split: report["rejects"] for split, report in data_report.items()},
        seconds=time.monotonic() - started,
    )
    if is_main:
        write_manifest(
            run_dir,
            kind="train",
            config=config,
            inputs=inputs[0]["files"],
            outputs=describe_inputs([final_dir]),
            extra={
                "model": config.model,
                "model_path": resolve_model(config.model),
                "chat_template_sha256": inputs[0]["chat_template_sha256"],
                "data_runs": inputs[0]["data_runs"],
                "resumed_from": resumed_from,
                "data": data_report,
                "steps": total_steps,
                "eval_before": result.eval_before,
                "eval_after": result.eval_after,
            },
        )
        write_report(run_dir)
    return result
