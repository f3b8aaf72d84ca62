"""`train(config)`: any objective on Accelerate; `fit` holds the loop, read top to bottom."""

import contextlib
import dataclasses
import functools
import math
import random
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from tqdm import tqdm

from orpo_pipeline.cache import cache_root
from orpo_pipeline.errors import DataError
from orpo_pipeline.models import load_model, load_tokenizer, resolve_model
from orpo_pipeline.runs import describe_inputs
from orpo_pipeline.train.config import LoraConfig, TrainConfig
from orpo_pipeline.train.data import (
    Feed,
    TokenizedPair,
    TokenizedPairs,
    prefetch_to_device,
    read_examples,
    token_budget_batches,
    tokenize_pairs,
)
from orpo_pipeline.train.evaluate import eval_batches, evaluate, generate_samples
from orpo_pipeline.train.memory import return_freed_memory
from orpo_pipeline.train.objective import LossBatch, Objective
from orpo_pipeline.train.objectives import OBJECTIVES, build_objective
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
    evaluation: dict[str, Any] | None = None
    """`eval_after`'s judged win rate, lengths and IFEval (the manifest's `evaluation`)."""

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
        if self.evaluation:
            lines += [f"note: {note}" for note in self.evaluation["judge_notes"]]
            lines += [
                f"{key:<32}{value:>10.4f}" if isinstance(value, float) else f"{key:<32}{value:>10}"
                for key, value in self.evaluation["summary"].items()
            ]
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


@dataclasses.dataclass
class StepPlan:
    """Every optimizer step's micro-batches, as pair indices: the same on every process.

    A step takes `batches_per_step` (K accumulation steps × W processes) micro-batches of the one
    stream of seeded per-epoch shuffles; micro-batch m of process r is entry m·W + r. A
    micro-batch holds `micro_batch` pairs (`step_pairs`), or with `max_tokens`, consecutive pairs
    up to that many tokens (`data.token_budget_batches`). The step number alone says where the
    data stands, so a resume needs nothing else; every step is full, so a last step may run
    into the next epoch.
    """

    sizes: Sequence[int]  # tokens of each pair
    seed: int
    batches_per_step: int
    micro_batch: int
    max_tokens: int | None = None
    _cut: list[list[int]] = dataclasses.field(default_factory=list)  # token budget, so far
    _epoch_ends: list[int] = dataclasses.field(default_factory=list)  # len(_cut) after each

    def num_steps(self, num_epochs: float) -> int:
        """Optimizer steps in `num_epochs` passes, rounded up (by the first epoch's cut)."""
        if self.max_tokens is None:
            units, per_step = len(self.sizes), self.micro_batch * self.batches_per_step
        else:
            self._cut_until(1)
            units, per_step = self._epoch_ends[0], self.batches_per_step
        return math.ceil(num_epochs * units / per_step)

    def __call__(self, step: int) -> list[list[int]]:
        """The micro-batches of step `step` (0-based), every process's."""
        if self.max_tokens is None:
            order = step_pairs(
                step,
                num_pairs=len(self.sizes),
                pairs_per_step=self.micro_batch * self.batches_per_step,
                seed=self.seed,
            )
            return [order[k : k + self.micro_batch] for k in range(0, len(order), self.micro_batch)]
        end = (step + 1) * self.batches_per_step
        return self._cut_until(end)[end - self.batches_per_step : end]

    def _cut_until(self, batches: int) -> list[list[int]]:
        """The token-budget micro-batches, cut epoch by epoch until there are `batches`."""
        assert self.max_tokens is not None
        while len(self._cut) < batches:
            order = _epoch_order(len(self.sizes), self.seed, len(self._epoch_ends))
            self._cut += token_budget_batches(self.sizes, order, self.max_tokens)
            self._epoch_ends.append(len(self._cut))
        return self._cut


@dataclasses.dataclass(frozen=True)
class Split:
    """One split's rows as read, what tokenization kept, and the tokenization report."""

    rows: list[dict[str, Any]]
    tokenized: TokenizedPairs

    @property
    def pairs(self) -> list[TokenizedPair]:
        """The kept pairs (or completions, with no rejected answer)."""
        return self.tokenized.pairs

    def feed(self, objective: Objective, *, train: bool) -> Feed:
        """The split as `objective` forwards it: for completions, training drops the rejected
        answers of pairs (evaluation keeps them for the policy-only accuracy and margin)."""
        pairs = self.pairs
        if objective.data == "completions" and train:
            pairs = [TokenizedPair(p.prompt_ids, p.chosen_ids, []) for p in pairs]
        labels = None
        if objective.data == "labelled":
            labels = [self.rows[i]["label"] for i in self.tokenized.rows]
        return Feed(pairs, labels, kl=objective.data == "labelled")

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
    """Read and tokenize the data the objective trains on (`data.read_examples`); a file where
    nothing can train is a `DataError`."""
    rows = read_examples(path, OBJECTIVES[config.objective].data, limit=limit)
    tokenized = tokenize_pairs(
        rows,
        tokenizer,
        max_length=config.max_length,
        max_prompt_length=config.max_prompt_length,
        answers=("chosen", "rejected") if rows and "rejected" in rows[0] else ("completion",),
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
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        functools.partial(
            lr_factor, shape=config.lr_scheduler, warmup=config.warmup_steps, total=total_steps
        ),
    )
    return optimizer, scheduler


def lr_factor(step: int, *, shape: str, warmup: int, total: int) -> float:
    """The learning rate at `step` over its peak: transformers' linear and cosine schedules with
    linear warmup, without importing `transformers.optimization` (which imports peft: seconds
    of start-up)."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    if shape == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def visited_pairs(
    feed: Feed, batches: Iterable[Sequence[int]]
) -> tuple[list[TokenizedPair], list[Hashable]]:
    """The distinct pairs `batches` forward, in the order first seen, and their keys."""
    seen: dict[Hashable, TokenizedPair] = {}
    for indices in batches:
        for pair, key in zip(*feed.arrange(indices), strict=True):
            seen.setdefault(key, pair)
    return list(seen.values()), list(seen)


def reference_pairs(
    feed: Feed,
    eval_feed: Feed | None,
    batches: Iterable[Sequence[int]],
    *,
    eval_batch_size: int,
    world: int,
) -> dict[str, tuple[list[TokenizedPair], list[Hashable]]]:
    """What a precomputed reference scores: the pairs the training `batches` forward, and those
    every process's evaluation batches forward (KTO's KL completions depend on the batches)."""
    splits = {"train": visited_pairs(feed, batches)}
    if eval_feed is not None:
        sizes = eval_feed.sizes
        splits["eval"] = visited_pairs(
            eval_feed,
            (
                batch
                for rank in range(world)
                for batch in eval_batches(sizes, batch_size=eval_batch_size, rank=rank, world=world)
            ),
        )
    return splits


def precompute_reference(
    run: Run, splits: dict[str, tuple[list[TokenizedPair], list[Hashable]]], pad_token_id: int
) -> PrecomputedReference:
    """Reference log-probs of the pairs each split will forward, cached by content hash.

    `splits` maps a split to the pairs the run forwards and their keys (`visited_pairs`: a run
    of a few steps over a large file needs only those). The reference model is loaded only
    when a table is not cached, and freed before training loads the policy, so training holds
    one model.
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
                    build_policy(
                        model,
                        share_prompt=config.share_prompt,
                        pad_token_id=pad_token_id,
                        attention=config.attention,
                        bucket_tokens=config.bucket_tokens,
                        device_type=accelerator.device.type,
                    )
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
        for split, (pairs, _) in splits.items():
            key = table_key(files, pairs, layout)
            tables[split], cached[split] = cached_table(
                cache_root() / "reference_logps" / f"{key}.safetensors", compute(pairs)
            )
    loaded.clear()
    run.write_json("reference.json", {"model": name, "layout": layout, "cached": cached})
    rows = {
        split: {key: row for row, key in enumerate(keys)} for split, (_, keys) in splits.items()
    }
    return PrecomputedReference(tables, rows)


def build_reference(run: Run, policy: Any, tokenizer: Any) -> Reference:
    """A live reference (after `prepare`): a frozen second model, or the policy without LoRA."""
    config, accelerator = run.config, run.accelerator
    if config.reference == "lora_disabled":
        return AdapterOffReference(accelerator.unwrap_model(policy))
    model = load_model(config.reference_model or config.model, dtype=torch.float32)
    model.requires_grad_(False)
    frozen, _ = build_policy(  # it reads the policy's batches: the same attention kernel
        model,
        share_prompt=config.share_prompt,
        pad_token_id=tokenizer.pad_token_id,
        attention=config.attention,
        device_type=accelerator.device.type,
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


def build_model(
    config: TrainConfig, tokenizer: Any, device_type: str
) -> tuple[torch.nn.Module, Collate, int]:
    """The policy (with LoRA adapters if asked), its collate function and the model's size N.

    Attention kernel, shape buckets and compiled layers follow the config and `device_type`.
    """
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
        attention=config.attention,
        bucket_tokens=config.bucket_tokens,
        compile_blocks=config.compile,
        device_type=device_type,
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
    feed = eval_split.feed(objective, train=False)
    # Samples answer the first prompts, each once (unpaired pairs hold every prompt twice).
    first: dict[tuple[int, ...], int] = {}
    for index, pair in enumerate(eval_split.pairs):
        if len(first) == config.num_sample_generations:
            break
        first.setdefault(tuple(pair.prompt_ids), index)
    sampled = list(first.values())

    def run_eval(step: int, flops: float) -> None:
        if not eval_split.pairs:
            return
        metrics = evaluate(
            policy,
            feed,
            collate=collate,
            accelerator=accelerator,
            objective=objective,
            reference=reference,
            nll_on_prompt=config.nll_includes_prompt,
            batch_size=config.per_device_eval_batch_size,
        )
        run.log({"step": step, "flops": flops, **metrics})
        logger.info("step %d: %s", step, metrics)
        if run.is_main and sampled:
            samples = generate_samples(
                accelerator.unwrap_model(policy).model,
                tokenizer,
                [eval_split.pairs[i] for i in sampled],
                [eval_split.rows[eval_split.tokenized.rows[i]] for i in sampled],
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
    evaluation = run.finish(
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
    return dataclasses.replace(result, evaluation=evaluation)


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
    feed = train_split.feed(objective, train=True)
    plan = StepPlan(
        feed.sizes,
        seed=config.seed,
        batches_per_step=config.gradient_accumulation_steps * accelerator.num_processes,
        micro_batch=config.per_device_batch_size,
        max_tokens=config.micro_batch_tokens,
    )
    total_steps = config.max_steps or plan.num_steps(config.num_epochs)

    reference: Reference | None = None
    reference_tokens = 0  # forwarded through the reference model up front, for the FLOP count
    if objective.needs_reference and config.reference == "precomputed":
        splits = reference_pairs(
            feed,
            eval_split.feed(objective, train=False) if eval_split.pairs else None,
            (batch for step in range(total_steps) for batch in plan(step)),
            eval_batch_size=config.per_device_eval_batch_size,
            world=accelerator.num_processes,
        )
        reference = precompute_reference(run, splits, tokenizer.pad_token_id)
        reference_tokens = sum(pair.num_tokens for pair in splits["train"][0])

    policy, collate, num_parameters = build_model(config, tokenizer, accelerator.device.type)
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
        feed=feed,
        collate=collate,
        plan=plan,
        steps=range(start_step, total_steps),
        meter=Meter(
            num_parameters,
            reference_tokens,
            live_reference=objective.needs_reference and config.reference != "precomputed",
            sizes=plan.sizes,
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
    """Pairs, tokens and FLOPs trained so far, and throughput since the last metrics line.

    FLOPs ≈ 6N per trained token + 2N per token forwarded through a reference model (Kaplan et
    al. 2020), N = parameters; `reference_tokens` were forwarded up front (precomputed).
    Throughput is wall time between metrics lines, whose host sync waits for the device's
    queued work; time spent evaluating and checkpointing (`paused`) is left out.
    """

    parameters: int
    reference_tokens: int
    live_reference: bool
    """A reference forward runs with every training step (a frozen model, or LoRA off)."""
    sizes: Sequence[int]
    """Tokens of each training pair."""
    trained_pairs: int = 0
    trained_tokens: int = 0
    """Tokens trained on by every process: a function of the step, so a resume knows it."""
    interval: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def flops(self) -> float:
        """FLOPs spent so far."""
        forwarded = self.reference_tokens + (self.trained_tokens if self.live_reference else 0)
        return float(6 * self.parameters * self.trained_tokens + 2 * self.parameters * forwarded)

    def count(self, indices: list[int]) -> None:
        """Count the pairs at `indices` as trained."""
        self.trained_pairs += len(indices)
        self.trained_tokens += sum(self.sizes[i] for i in indices)

    def restart(self) -> None:
        """Begin a throughput interval now."""
        self.interval = {
            "steps": 0,
            "tokens": self.trained_tokens,
            "paused": 0.0,
            "started": time.perf_counter(),
        }

    def step(self, indices: list[int]) -> None:
        """Count one optimizer step of the pairs at `indices` (on all processes)."""
        self.count(indices)
        self.interval["steps"] += 1

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leave the time inside out of the throughput."""
        started = time.perf_counter()
        yield
        self.interval["paused"] += time.perf_counter() - started

    def drain(self) -> dict[str, float]:
        """The metrics-line fields, and a new throughput interval; call after the line's sync."""
        interval = self.interval
        seconds = time.perf_counter() - interval["started"] - interval["paused"]
        fields = {
            "train_tokens": self.trained_tokens,
            "flops": self.flops,
            "step_seconds": seconds / interval["steps"],
            "tokens_per_second": (self.trained_tokens - interval["tokens"]) / seconds,
        }
        self.restart()
        return fields


def step_windows(
    plan: StepPlan, steps: range, feed: Feed, collate: Collate, *, rank: int, world: int
) -> Iterator[tuple[list[tuple[Any, Any, list[Hashable]]], list[list[int]]]]:
    """Each step's micro-batches of this process, collated with their labels and pair keys,
    and every process's example indices."""
    for step in steps:
        batches = plan(step)
        window = []
        for indices in batches[rank::world]:
            pairs, keys = feed.arrange(indices)
            window.append((collate(pairs), feed.label_tensor(indices), keys))
        yield window, batches


def fit(
    run: Run,
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    *,
    objective: Objective,
    reference: Reference | None,
    feed: Feed,
    collate: Collate,
    plan: StepPlan,
    steps: range,
    meter: Meter,
    run_eval: Callable[[int, float], None],
) -> None:
    """The optimisation loop over `steps`: log, evaluate and checkpoint on schedule.

    Nothing in a step waits for the device: batches are collated and copied one step ahead
    (pinned and non-blocking on CUDA), counts come from the pair indices on the host, and
    metrics stay on the device until a metrics line syncs them.
    """
    config, accelerator = run.config, run.accelerator
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    nll_on_prompt, max_grad_norm = config.nll_includes_prompt, config.max_grad_norm
    for step in range(steps.start):  # a resume: count what the steps before trained
        meter.count([i for batch in plan(step) for i in batch])
    if steps.start == 0:
        run_eval(0, meter.flops)
    sums = torch.zeros(len(objective.sum_names), device=device)  # on device; synced when logged
    grad_norm = None
    progress = tqdm(
        total=steps.stop, initial=steps.start, disable=not run.is_main, desc="train", unit="step"
    )
    windows = prefetch_to_device(
        step_windows(plan, steps, feed, collate, rank=rank, world=world), device
    )
    pairs = feed.pairs
    meter.restart()
    for step, (window, batches) in zip(steps, windows, strict=True):
        everyone = [i for batch in batches for i in batch]
        # The NLL is one token mean and the pairwise loss one pair mean over the whole step on
        # all processes (§6): each micro-batch's share of both, counted on the host.
        nll_tokens = sum(pairs[i].nll_tokens(nll_on_prompt=nll_on_prompt) for i in everyone)
        scale = {"nll_tokens": nll_tokens / len(batches), "num_pairs": len(everyone) / len(batches)}
        learning_rate = scheduler.get_last_lr()[0]
        for batch, labels, keys in window:
            with accelerator.accumulate(policy):
                logps = policy(batch, nll_on_prompt=nll_on_prompt)
                ref = reference(batch, keys, "train") if reference is not None else None
                out = objective.loss(logps, LossBatch(**scale, reference=ref, labels=labels))
                accelerator.backward(out.loss)  # divides by micro_steps itself: not again here
                if accelerator.sync_gradients and max_grad_norm is not None:
                    grad_norm = accelerator.clip_grad_norm_(policy.parameters(), max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            sums += out.sums
        scheduler.step()
        meter.step(everyone)
        done = step + 1
        progress.update()
        if done == steps.stop or _every(done, config.log_every_steps):
            record = {  # the loop's only host syncs: reduce(sums).tolist() and the grad norm
                "step": done,
                "epoch": meter.trained_pairs / len(pairs),
                "learning_rate": learning_rate,
                **objective.metrics(accelerator.reduce(sums).tolist()),
                **({"grad_norm": float(grad_norm)} if grad_norm is not None else {}),
                **meter.drain(),  # after the sync: the device's queued work is in the time
            }
            run.log(record)
            progress.set_postfix(
                loss=f"{record['loss']:.4f}", tokens_s=f"{record['tokens_per_second']:.0f}"
            )
            sums.zero_()
        with meter.paused():  # evaluation and checkpoints are not training time
            if done == steps.stop or _every(done, config.eval_every_steps):
                run_eval(done, meter.flops)
            if done < steps.stop and _every(done, config.save_every_steps):
                run.save_checkpoint(done)
    progress.close()


def _every(step: int, interval: int | None) -> bool:
    """Whether something done every `interval` steps (None: never) is due after `step`."""
    return bool(interval) and step % interval == 0
