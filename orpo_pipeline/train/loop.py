"""`train(config)`: any objective on Accelerate; `fit` holds the loop, read top to bottom."""

import dataclasses
import functools
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from tqdm import tqdm
from transformers import get_scheduler

from orpo_pipeline.cache import cache_root
from orpo_pipeline.errors import DataError
from orpo_pipeline.models import load_model, load_tokenizer, resolve_model
from orpo_pipeline.runs import describe_inputs
from orpo_pipeline.train.config import LoraConfig, TrainConfig
from orpo_pipeline.train.data import TokenizedPair, TokenizedPairs, read_pairs, tokenize_pairs
from orpo_pipeline.train.evaluate import evaluate, generate_samples
from orpo_pipeline.train.memory import return_freed_memory
from orpo_pipeline.train.objective import LossBatch, Objective
from orpo_pipeline.train.objectives import build_objective
from orpo_pipeline.train.policy import Collate, build_policy
from orpo_pipeline.train.reference import (
    AdapterOffReference,
    FrozenReference,
    PrecomputedReference,
    Reference,
    cached_table,
    compute_table,
    table_key,
)
from orpo_pipeline.train.report import SUMMARY_METRICS
from orpo_pipeline.train.run import (  # noqa: F401 (TRACKER_PACKAGES: patched by tests)
    TRACKER_PACKAGES,
    Run,
    peak_memory_bytes,
    resolve_mixed_precision,
)

logger = get_logger(__name__)  # logs on the main process only

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
                key = f"eval_{name}"
                if key in self.eval_before:
                    before, after = self.eval_before[key], self.eval_after[key]
                    lines.append(f"{name:<22}{before:>10.4f}{after:>10.4f}")
        lines.append(f"took {self.seconds:.0f} s")
        return "\n".join(lines)


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


@dataclasses.dataclass(frozen=True)
class Split:
    """One split's rows as read, what tokenization kept, and the tokenization report."""

    rows: list[dict[str, Any]]
    tokenized: TokenizedPairs

    @property
    def pairs(self) -> list[TokenizedPair]:
        """The kept pairs."""
        return self.tokenized.pairs

    def report(self) -> dict[str, Any]:
        """Rows, kept pairs, rejects and truncations, for `data.json` and the manifest."""
        return {
            "rows": len(self.rows),
            "pairs": len(self.tokenized.pairs),
            "rejects": self.tokenized.rejects,
            "prompts_truncated": self.tokenized.prompts_truncated,
            "responses_truncated": self.tokenized.responses_truncated,
        }


def load_split(path: Path, tokenizer: Any, config: TrainConfig, *, limit: int | None = None):
    """Read and tokenize a pair file; a file where no pair can train is a `DataError`."""
    rows = read_pairs(path, limit=limit)
    tokenized = tokenize_pairs(
        rows, tokenizer, max_length=config.max_length, max_prompt_length=config.max_prompt_length
    )
    if not tokenized.pairs:
        msg = f"{path}: none of {len(rows)} pairs can train (rejected: {tokenized.rejects})"
        raise DataError(msg)
    return Split(rows, tokenized)


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


def build_optimizer(model: torch.nn.Module, config: TrainConfig, total_steps: int):
    """AdamW (weight decay on matrices only) and its learning-rate schedule over `total_steps`."""
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
    return optimizer, scheduler


def precompute_reference(
    run: Run, splits: dict[str, tuple[list[TokenizedPair], list[int]]], pad_token_id: int
) -> PrecomputedReference:
    """Reference log-probs of the pairs each split will use, cached by content hash.

    `splits` maps a split to its pairs and the indices of those the run visits (a run of a few
    steps over a large file needs only those). The reference model is loaded only when a table
    is not cached, and freed before training loads the policy, so training holds one model.
    The main process computes and writes the cache; the others then read it.
    """
    config, accelerator = run.config, run.accelerator
    name = config.reference_model or config.model
    path = Path(resolve_model(name))
    stat_cache = cache_root() / "hashes.json"
    files = describe_inputs([path], stat_cache=stat_cache) if path.is_dir() else name
    layout = "shared" if config.share_prompt else "padded"
    loaded: list[Any] = []

    def compute(pairs: list[TokenizedPair]) -> Callable[[], torch.Tensor]:
        def run_reference() -> torch.Tensor:
            if not loaded:
                model = load_model(name, dtype=torch.float32).to(accelerator.device).eval()
                loaded.append(
                    build_policy(model, share_prompt=config.share_prompt, pad_token_id=pad_token_id)
                )
            policy, collate = loaded[0]
            with accelerator.autocast():
                return compute_table(
                    policy,
                    pairs,
                    collate=collate,
                    device=accelerator.device,
                    batch_size=config.per_device_eval_batch_size,
                )

        return run_reference

    tables, cached = {}, {}
    with accelerator.main_process_first():
        for split, (pairs, visited) in splits.items():
            used = [pairs[i] for i in visited]
            key = table_key(files, used, layout)
            table, cached[split] = cached_table(
                cache_root() / "reference_logps" / f"{key}.safetensors", compute(used)
            )
            tables[split] = torch.full((len(pairs), table.shape[1]), torch.nan, dtype=table.dtype)
            tables[split][visited] = table
    loaded.clear()
    run.write_json("reference.json", {"model": name, "layout": layout, "cached": cached})
    return PrecomputedReference(tables)


def build_reference(run: Run, policy: Any, tokenizer: Any) -> Reference:
    """A live reference (after `prepare`): a frozen second model, or the policy without LoRA."""
    config, accelerator = run.config, run.accelerator
    if config.reference == "lora_disabled":
        return AdapterOffReference(accelerator.unwrap_model(policy))
    model = load_model(config.reference_model or config.model, dtype=torch.float32)
    model.requires_grad_(False)
    frozen, _ = build_policy(
        model, share_prompt=config.share_prompt, pad_token_id=tokenizer.pad_token_id
    )
    return FrozenReference(accelerator.prepare_model(frozen, evaluation_mode=True))


def load_splits(run: Run, tokenizer: Any) -> tuple[Split, Split, dict[str, Any]]:
    """Tokenized train and eval splits, and their report (written as `data.json`)."""
    config = run.config
    with run.accelerator.main_process_first():
        train_split = load_split(config.train_pairs, tokenizer, config)
        eval_split = (
            load_split(config.eval_pairs, tokenizer, config, limit=config.num_eval_pairs)
            if config.eval_pairs is not None
            else Split([], TokenizedPairs([], [], {}, 0, 0))
        )
    report = {"train": train_split.report()}
    if config.eval_pairs is not None:
        report["eval"] = eval_split.report()
    run.write_json("data.json", report)
    return train_split, eval_split, report


def build_model(config: TrainConfig, tokenizer: Any) -> tuple[torch.nn.Module, Collate, int]:
    """The policy (with LoRA adapters if asked), its collate function and the model's size N."""
    model = load_model(config.model, dtype=torch.float32)
    num_parameters = sum(p.numel() for p in model.parameters())
    if config.lora is not None:
        model = _add_lora(model, config.lora)
    model.train()
    policy, collate = build_policy(
        model,
        share_prompt=config.share_prompt,
        pad_token_id=tokenizer.pad_token_id,
        gradient_checkpointing=config.gradient_checkpointing,
    )
    return policy, collate, num_parameters


def evaluator(
    run: Run,
    policy: torch.nn.Module,
    collate: Collate,
    *,
    objective: Objective,
    reference: Reference | None,
    eval_split: Split,
    tokenizer: Any,
) -> Callable[[int, float], None]:
    """A function that evaluates at a step (logging the FLOPs so far) and writes samples."""
    config, accelerator = run.config, run.accelerator

    def run_eval(step: int, flops: float) -> None:
        if not eval_split.pairs:
            return
        metrics = evaluate(
            policy,
            eval_split.pairs,
            collate=collate,
            accelerator=accelerator,
            objective=objective,
            reference=reference,
            nll_on_prompt=config.nll_includes_prompt,
            batch_size=config.per_device_eval_batch_size,
        )
        run.log({"step": step, "flops": flops, **metrics})
        logger.info("step %d: %s", step, metrics)
        count = config.num_sample_generations
        if run.is_main and count:
            samples = generate_samples(
                accelerator.unwrap_model(policy).model,
                tokenizer,
                eval_split.pairs[:count],
                [eval_split.rows[i] for i in eval_split.tokenized.rows[:count]],
                max_new_tokens=config.max_new_tokens,
            )
            run.write_samples(step, samples)

    return run_eval


def finish(
    run: Run,
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    tokenizer: Any,
    *,
    started: float,
    steps: int,
    data_report: dict[str, Any],
    num_parameters: int,
) -> TrainResult:
    """Save `final/`, release the prepared objects, write the manifest and report."""
    accelerator = run.accelerator
    run.save_final(policy, tokenizer)
    # Drop the DDP wrapper while the process group lives: freed after `end_training`, its reducer
    # destroys the gloo group holding the GIL, which can deadlock torch's worker threads at exit.
    policy, optimizer = accelerator.free_memory(policy, optimizer)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    evals = run.evals()
    result = TrainResult(
        run_dir=run.dir,
        final_dir=run.final_dir,
        steps=steps,
        eval_before=evals[0] if evals else {},
        eval_after=evals[-1] if evals else {},
        rejects={split: report["rejects"] for split, report in data_report.items()},
        seconds=time.monotonic() - started,
    )
    run.finish(
        {
            "objective": run.config.objective,
            "parameters": num_parameters,
            "data": data_report,
            "steps": steps,
            "eval_before": result.eval_before,
            "eval_after": result.eval_after,
            "seconds": result.seconds,
            "peak_memory_bytes": peak_memory_bytes(),
            "device": str(accelerator.device),
        }
    )
    return result


def train(config: TrainConfig) -> TrainResult:
    """Train with `config.objective`; evaluate before, every `eval_every_steps` and after.

    Writes `<run>/config.yaml`, `inputs.json` (inputs by sha256), `data.json` (kept, rejected
    and truncated pairs), `metrics.jsonl`, `samples/step-NNNNNN.jsonl`,
    `checkpoints/step-NNNNNN/`, `final/` (model and tokenizer, loadable with
    `AutoModelForCausalLM`), `manifest.json`, `report.html`, `reference.json` for a precomputed
    reference, and `tensorboard/` or `mlflow.db` when those trackers are asked for.
    """
    started = time.monotonic()
    if config.return_freed_memory:
        return_freed_memory()
    objective = build_objective(config)
    run = Run(config)
    accelerator = run.accelerator
    set_seed(config.seed)
    tokenizer = load_tokenizer(config.model, chat_template=config.chat_template)
    run.record_inputs(tokenizer.chat_template)
    train_split, eval_split, data_report = load_splits(run, tokenizer)
    train_pairs = train_split.pairs
    if not objective.uses_rejected:  # e.g. sft: the rejected answers are never forwarded
        train_pairs = [TokenizedPair(p.prompt_ids, p.chosen_ids, []) for p in train_pairs]
    world = accelerator.num_processes
    pairs_per_step = config.per_device_batch_size * config.gradient_accumulation_steps * world
    total_steps = config.max_steps or math.ceil(
        config.num_epochs * len(train_pairs) / pairs_per_step
    )

    reference: Reference | None = None
    reference_tokens = 0  # forwarded through the reference model up front, for the FLOP count
    if objective.needs_reference and config.reference == "precomputed":
        order = functools.partial(
            step_pairs, num_pairs=len(train_pairs), pairs_per_step=pairs_per_step, seed=config.seed
        )
        visited = sorted({i for step in range(total_steps) for i in order(step)})
        splits = {"train": (train_split.pairs, visited)}
        if eval_split.pairs:
            splits["eval"] = (eval_split.pairs, list(range(len(eval_split.pairs))))
        reference = precompute_reference(run, splits, tokenizer.pad_token_id)
        reference_tokens = sum(train_split.pairs[i].num_tokens for i in visited)

    policy, collate, num_parameters = build_model(config, tokenizer)
    optimizer, scheduler = build_optimizer(policy, config, total_steps)
    if accelerator.state.deepspeed_plugin is not None:  # it reads this from a dataloader we lack
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = (
            config.per_device_batch_size
        )
    policy, optimizer = accelerator.prepare(policy, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    if objective.needs_reference and reference is None:
        reference = build_reference(run, policy, tokenizer)
    run.start_trackers()
    start_step = run.restore()
    fit(
        run,
        policy,
        optimizer,
        scheduler,
        objective=objective,
        reference=reference,
        pairs=train_pairs,
        collate=collate,
        steps=range(start_step, total_steps),
        meter=Meter(
            num_parameters,
            reference_tokens,
            live_reference=objective.needs_reference and config.reference != "precomputed",
        ),
        run_eval=evaluator(
            run,
            policy,
            collate,
            objective=objective,
            reference=reference,
            eval_split=eval_split,
            tokenizer=tokenizer,
        ),
    )

    return finish(
        run,
        policy,
        optimizer,
        tokenizer,
        started=started,
        steps=total_steps,
        data_report=data_report,
        num_parameters=num_parameters,
    )


@dataclasses.dataclass
class Meter:
    """Tokens and FLOPs spent so far, and throughput since the last metrics line.

    FLOPs ≈ 6N per trained token + 2N per token forwarded through a reference model (Kaplan et
    al. 2020), N = parameters; `reference_tokens` were forwarded up front (precomputed).
    """

    parameters: int
    reference_tokens: int
    live_reference: bool
    """A reference forward runs with every training step (a frozen model, or LoRA off)."""
    trained_tokens: int = 0
    """Tokens trained on by every process: a function of the step, so a resume knows it."""
    interval: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"steps": 0, "seconds": 0.0, "tokens": 0}
    )

    @property
    def flops(self) -> float:
        """FLOPs spent so far."""
        forwarded = self.reference_tokens + (self.trained_tokens if self.live_reference else 0)
        return float(6 * self.parameters * self.trained_tokens + 2 * self.parameters * forwarded)

    def step(self, *, tokens: int, own_tokens: int, seconds: float) -> None:
        """Count one optimizer step: `tokens` on all processes, `own_tokens` on this one."""
        self.trained_tokens += tokens
        self.interval["steps"] += 1
        self.interval["seconds"] += seconds
        self.interval["tokens"] += own_tokens

    def drain(self, accelerator: Any) -> dict[str, float]:
        """The metrics-line fields, and a new throughput interval."""
        tokens = accelerator.reduce(
            torch.tensor(float(self.interval["tokens"]), device=accelerator.device)
        )
        fields = {
            "train_tokens": self.trained_tokens,
            "flops": self.flops,
            "step_seconds": self.interval["seconds"] / self.interval["steps"],
            "tokens_per_second": float(tokens) / self.interval["seconds"],
        }
        self.interval = {"steps": 0, "seconds": 0.0, "tokens": 0}
        return fields


def fit(
    run: Run,
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    *,
    objective: Objective,
    reference: Reference | None,
    pairs: list[TokenizedPair],
    collate: Collate,
    steps: range,
    meter: Meter,
    run_eval: Callable[[int, float], None],
) -> None:
    """The optimisation loop over `steps`: log, evaluate and checkpoint on schedule."""
    config, accelerator = run.config, run.accelerator
    micro_batch, micro_steps = config.per_device_batch_size, config.gradient_accumulation_steps
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    pairs_per_step = micro_batch * micro_steps * world
    nll_on_prompt, max_grad_norm = config.nll_includes_prompt, config.max_grad_norm
    order_of = functools.partial(
        step_pairs, num_pairs=len(pairs), pairs_per_step=pairs_per_step, seed=config.seed
    )
    meter.trained_tokens = sum(pairs[i].num_tokens for s in range(steps.start) for i in order_of(s))
    if steps.start == 0:
        run_eval(0, meter.flops)
    sums = torch.zeros(len(objective.sum_names), device=device)  # on device; synced when logged
    grad_norm = None
    progress = tqdm(
        total=steps.stop, initial=steps.start, disable=not run.is_main, desc="train", unit="step"
    )
    for step in steps:
        step_started = time.perf_counter()
        order = order_of(step)
        starts = [(micro * world + rank) * micro_batch for micro in range(micro_steps)]
        windows = [order[start : start + micro_batch] for start in starts]  # this process's
        mine = [i for window in windows for i in window]
        # NLL tokens in the whole window on all processes: the NLL is one token mean (§6).
        local_tokens = sum(pairs[i].nll_tokens(nll_on_prompt=nll_on_prompt) for i in mine)
        window_tokens = accelerator.reduce(torch.tensor(float(local_tokens), device=device))
        scale = {"nll_tokens": window_tokens / (micro_steps * world), "num_pairs": micro_batch}
        learning_rate = scheduler.get_last_lr()[0]
        for indices in windows:
            batch = collate([pairs[i] for i in indices]).to(device)
            with accelerator.accumulate(policy):
                logps = policy(batch, nll_on_prompt=nll_on_prompt)
                ref = reference(batch, indices, "train") if reference is not None else None
                out = objective.loss(logps, LossBatch(**scale, reference=ref))
                accelerator.backward(out.loss)  # divides by micro_steps itself: not again here
                if accelerator.sync_gradients and max_grad_norm is not None:
                    grad_norm = accelerator.clip_grad_norm_(policy.parameters(), max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            sums += out.sums
        scheduler.step()
        meter.step(
            tokens=sum(pairs[i].num_tokens for i in order),
            own_tokens=sum(pairs[i].num_tokens for i in mine),
            seconds=time.perf_counter() - step_started,
        )
        done = step + 1
        progress.update()
        if done % config.log_every_steps == 0 or done == steps.stop:
            record = {
                "step": done,
                "epoch": done * pairs_per_step / len(pairs),
                "learning_rate": learning_rate,
                **objective.metrics(accelerator.reduce(sums).tolist()),
                **({"grad_norm": float(grad_norm)} if grad_norm is not None else {}),
                **meter.drain(accelerator),
            }
            run.log(record)
            progress.set_postfix(
                loss=f"{record['loss']:.4f}", tokens_s=f"{record['tokens_per_second']:.0f}"
            )
            sums.zero_()
        if done == steps.stop or (config.eval_every_steps and done % config.eval_every_steps == 0):
            run_eval(done, meter.flops)
        if done < steps.stop and config.save_every_steps and done % config.save_every_steps == 0:
            run.save_checkpoint(done)
    progress.close()
