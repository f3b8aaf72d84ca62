"""Our ORPO trainer against TRL 1.16's `ORPOTrainer` on the same model, data and settings.

Both sides train the embedded SmolLM2-135M-Instruct (float32) on real HH-RLHF pairs (the default
recipe's train split) with the same batch size, learning rate and `max_length`, on the same pairs
in the same order (TRL reads our loop's shuffle sequentially), so step k is the same batch on both.
Only pairs that fit `max_length` untruncated are used (TRL cannot truncate a prompt and returns
NaN for an overlong one). TRL runs with `bf16=False` and otherwise its defaults, once with its
default gradient checkpointing (its least memory) and once without (its speed); ours runs without,
with (`ours_gc`), and with it and `return_freed_memory` (`ours_lowmem`). Each run is a fresh
subprocess that reads the chosen pairs from a file (so peak RSS is its trainer's own); runs
alternate between the implementations and repeat; medians are reported, and the first step of
each run (one-off warm-up) is not timed.

Reported per `max_length`: pairs/s and useful tokens/s (prompt + chosen + rejected tokens of each
pair, the least any layout must compute), peak RSS, both losses on TRL's first collated batch
(ours on the very same token ids and weights), and our useful-token FLOP/s (6 x parameters x
useful tokens per second) as a fraction of the float32 matmul peak measured before each rep.
Speed is compared with TRL's fastest setting, memory with its leanest.

    python -m benchmarks.bench_train            # max_length 256 and 1024, 3 reps
    python -m benchmarks.bench_train --quick    # max_length 256, 1 rep, fewer steps
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

OUTPUT = Path("runs/bench/train.json")
BATCH_SIZE = 4
LEARNING_RATE = 5e-6
SEED = 0


def bench_pairs(max_length: int, count: int) -> list[dict]:
    """The first `count` default-recipe train pairs that fit `max_length` untruncated."""
    from orpo_pipeline.config_files import load_config
    from orpo_pipeline.models import load_tokenizer
    from orpo_pipeline.pipeline import PipelineSpec, run_pipeline
    from orpo_pipeline.train.data import read_pairs, tokenize_pairs

    out = Path("runs/bench/pairs")
    spec = load_config(Path("pipelines/default.yaml"), PipelineSpec, [f"output_dir={out}"])
    run_pipeline(spec)
    rows = read_pairs(out / "train.parquet")
    tokenized = tokenize_pairs(
        rows, load_tokenizer("default"), max_length=10**6, max_prompt_length=10**6
    )
    fits = [
        rows[row]
        for row, pair in zip(tokenized.rows, tokenized.pairs, strict=True)
        if len(pair.prompt_ids) + max(len(pair.chosen_ids), len(pair.rejected_ids)) <= max_length
    ]
    return fits[:count]


def step_tokens(rows: list[dict], steps: int) -> list[int]:
    """Prompt + chosen + rejected tokens of each step's pairs (the work no layout can avoid), in
    the order both sides train on them."""
    from orpo_pipeline.models import load_tokenizer
    from orpo_pipeline.train.data import tokenize_pairs
    from orpo_pipeline.train.loop import step_pairs

    pairs = tokenize_pairs(
        rows, load_tokenizer("default"), max_length=10**6, max_prompt_length=10**6
    ).pairs
    return [
        sum(
            pairs[i].num_tokens
            for i in step_pairs(step, num_pairs=len(rows), pairs_per_step=BATCH_SIZE, seed=SEED)
        )
        for step in range(steps)
    ]


def trl_batch_pairs(collated: dict) -> list:
    """TRL's collated pairs as our `TokenizedPair`s: the very token ids TRL trains on."""
    from orpo_pipeline.train.data import TokenizedPair

    pairs = []
    for i in range(len(collated["prompt_input_ids"])):
        prompt, chosen, rejected = (
            collated[f"{key}_input_ids"][i][collated[f"{key}_attention_mask"][i].bool()].tolist()
            for key in ("prompt", "chosen", "rejected")
        )
        assert chosen[: len(prompt)] == prompt == rejected[: len(prompt)]
        pairs.append(TokenizedPair(prompt, chosen[len(prompt) :], rejected[len(prompt) :]))
    return pairs


def probe_loss_ours(model, pairs: list, pad_token_id: int) -> float:
    """Our training path's ORPO loss (prefix-shared, packed) on `pairs`, no gradient."""
    import torch

    from orpo_pipeline.train.loss import batch_loss
    from orpo_pipeline.train.policy import build_policy

    policy, collate = build_policy(model, share_prompt=True, pad_token_id=pad_token_id)
    with torch.no_grad():
        logps = policy(collate(pairs), nll_on_prompt=True)
        out = batch_loss(logps, beta=0.1)
    return float(out.loss)


def worker_trl(
    rows: list[dict], max_length: int, steps: int, *, gradient_checkpointing: bool
) -> dict:
    """Train TRL's ORPOTrainer for `steps` steps; time each step.

    Before training, both losses are taken on TRL's first collated batch: TRL's, and ours on the
    very same token ids and weights.
    """
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    from orpo_pipeline.models import load_model, load_tokenizer

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.losses: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.started)

    from orpo_pipeline.train.loop import step_pairs

    tokenizer, model = load_tokenizer("default"), load_model("default")
    # Our loop's order, read sequentially by TRL: step k of both trains on the same pairs.
    order = [
        i
        for step in range(steps)
        for i in step_pairs(step, num_pairs=len(rows), pairs_per_step=BATCH_SIZE, seed=SEED)
    ]
    dataset = Dataset.from_list(
        [{k: rows[i][k] for k in ("prompt", "chosen", "rejected")} for i in order]
    )
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        args = ORPOConfig(
            output_dir=out,
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=gradient_checkpointing,
            per_device_train_batch_size=BATCH_SIZE,
            max_length=max_length,
            max_steps=steps,
            learning_rate=LEARNING_RATE,
            logging_steps=1,
            save_strategy="no",
            train_sampling_strategy="sequential",
            report_to=[],
            seed=SEED,
        )
        trainer = ORPOTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[timer],
        )
        collated = trainer.data_collator([trainer.train_dataset[i] for i in range(BATCH_SIZE)])
        model.eval()
        with torch.no_grad():
            probe, _ = trainer.get_batch_loss_metrics(model, collated, train_eval="eval")
        pairs = trl_batch_pairs(collated)
        probe_ours = probe_loss_ours(model, pairs, tokenizer.pad_token_id)
        model.train()
        trainer.train()
    return {
        "step_seconds": timer.seconds,
        "probe_loss": float(probe),
        "probe_loss_ours": probe_ours,
        "probe_tokens": sum(p.num_tokens for p in pairs),
    }


def worker_ours(
    rows: list[dict],
    max_length: int,
    steps: int,
    *,
    gradient_checkpointing: bool,
    return_freed_memory: bool = False,
) -> dict:
    """Train with our loop for `steps` steps (no eval, no checkpoints); time each step."""
    import polars as pl

    from orpo_pipeline.records import PAIR_SCHEMA
    from orpo_pipeline.train.config import TrainConfig
    from orpo_pipeline.train.loop import train

    with tempfile.TemporaryDirectory() as out:
        pairs = Path(out) / "pairs.parquet"
        frame = pl.DataFrame(
            [
                {**row, "source": "bench", "score_chosen": None, "score_rejected": None}
                for row in rows
            ],
            schema=PAIR_SCHEMA,
        )
        frame.write_parquet(pairs)
        config = TrainConfig(
            train_pairs=pairs,
            output_dir=Path(out) / "runs",
            max_steps=steps,
            per_device_batch_size=BATCH_SIZE,
            learning_rate=LEARNING_RATE,
            max_length=max_length,
            max_prompt_length=max_length,
            seed=SEED,
            num_sample_generations=0,
            gradient_checkpointing=gradient_checkpointing,
            return_freed_memory=return_freed_memory,
        )
        result = train(config)
        metrics = [
            json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
        ]
    return {"step_seconds": [m["step_seconds"] for m in metrics if "step_seconds" in m]}


def matmul_peak_flops() -> float:
    """Best float32 matmul FLOP/s of this machine now (2048 x 2048, all threads)."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    times = []
    for _ in range(7):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * 2048**3 / min(times)


def cpu_model() -> str:
    """The CPU's model name, as lscpu prints it."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def run_worker(impl: str, max_length: int, steps: int, rows_file: Path) -> dict:
    """One fresh process: train on the pairs in `rows_file`, then report step times, probe losses
    and peak RSS. The pairs are chosen here, so the worker's peak is its trainer's alone."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.bench_train",
        "--worker",
        impl,
        "--max-length",
        str(max_length),
        "--steps",
        str(steps),
        "--rows",
        str(rows_file),
    ]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"},
    )
    if done.returncode != 0:
        msg = f"{impl} worker failed:\n{done.stderr[-3000:]}"
        raise RuntimeError(msg)
    return json.loads(done.stdout.strip().splitlines()[-1])


WORKERS = {
    "trl": partial(worker_trl, gradient_checkpointing=True),
    "trl_no_gc": partial(worker_trl, gradient_checkpointing=False),
    "ours": partial(worker_ours, gradient_checkpointing=False),
    "ours_gc": partial(worker_ours, gradient_checkpointing=True),
    "ours_lowmem": partial(worker_ours, gradient_checkpointing=True, return_freed_memory=True),
}
"""Each side with gradient checkpointing (TRL's default: least memory) and without (speed); ours
also with `return_freed_memory` (its least memory)."""


def summarize(
    runs: dict[str, list[dict]], tokens: list[int], flops_per_token: float, peak: float
) -> dict:
    """Medians over runs per implementation; ours against TRL's fastest (speed) and leanest (RSS).

    A run's throughput is its timed steps' pairs (or useful tokens) over their summed time. The
    first step of each run pays one-off costs (allocator warm-up, lazy init) and is not timed.
    """
    summary: dict = {"useful_tokens_per_step": tokens}

    def rates(run: dict) -> tuple[float, float]:
        timed = run["step_seconds"][1:]
        seconds = sum(timed)
        return BATCH_SIZE * len(timed) / seconds, sum(tokens[1 : 1 + len(timed)]) / seconds

    for impl, done in runs.items():
        summary[impl] = {
            "pairs_per_second": statistics.median(rates(run)[0] for run in done),
            "useful_tokens_per_second": statistics.median(rates(run)[1] for run in done),
            "peak_rss_mb": statistics.median(run["peak_rss_mb"] for run in done),
            "runs": done,
        }
    trls = [impl for impl in runs if impl.startswith("trl")]
    for impl in (impl for impl in runs if impl.startswith("ours")):
        ours = summary[impl]
        ours["useful_flops_fraction_of_peak"] = (
            flops_per_token * ours["useful_tokens_per_second"] / peak
        )
        if trls:
            fastest = max(trls, key=lambda trl: summary[trl]["pairs_per_second"])
            leanest = min(trls, key=lambda trl: summary[trl]["peak_rss_mb"])
            ours["speedup_vs_fastest_trl"] = (
                ours["pairs_per_second"] / summary[fastest]["pairs_per_second"]
            )
            ours["rss_ratio_vs_leanest_trl"] = ours["peak_rss_mb"] / summary[leanest]["peak_rss_mb"]
            ours["fastest_trl"], ours["leanest_trl"] = fastest, leanest
    if trls:
        probe = runs[trls[0]][0]
        summary["probe_loss_trl"] = probe["probe_loss"]
        summary["probe_loss_ours"] = probe["probe_loss_ours"]
        summary["probe_loss_relative_difference"] = abs(
            probe["probe_loss_ours"] - probe["probe_loss"]
        ) / abs(probe["probe_loss"])
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", choices=sorted(WORKERS))
    parser.add_argument("--impls", nargs="*", choices=sorted(WORKERS), default=sorted(WORKERS))
    parser.add_argument("--max-length", type=int, nargs="*", default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--rows", type=Path, default=None, help="worker: JSON list of pairs")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)

    if args.worker:
        (max_length,) = args.max_length
        rows = json.loads(args.rows.read_text(encoding="utf-8"))
        result = WORKERS[args.worker](rows, max_length, args.steps)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return

    lengths = args.max_length or ([256] if args.quick else [256, 1024])
    steps = args.steps or (2 if args.quick else 3)
    reps = args.reps or (1 if args.quick else 3)
    count = steps * BATCH_SIZE
    from orpo_pipeline.models import load_model

    parameters = sum(p.numel() for p in load_model("default").parameters())
    results = {
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "command": " ".join(["python -m benchmarks.bench_train", *(argv or sys.argv[1:])]),
        "batch_size": BATCH_SIZE,
        "learning_rate": LEARNING_RATE,
        "steps_per_run": steps,
        "reps": reps,
        "lengths": {},
    }
    peaks = []
    for max_length in lengths:
        rows = bench_pairs(max_length, count)
        tokens = step_tokens(rows, steps)
        rows_file = OUTPUT.parent / f"pairs-{max_length}.json"
        rows_file.parent.mkdir(parents=True, exist_ok=True)
        rows_file.write_text(json.dumps(rows), encoding="utf-8")
        runs: dict[str, list[dict]] = {impl: [] for impl in args.impls}
        for _ in range(reps):  # alternate implementations, so load drifts hit all alike
            peaks.append(matmul_peak_flops())
            for impl in args.impls:
                runs[impl].append(run_worker(impl, max_length, steps, rows_file))
        peak = statistics.median(peaks)
        results["lengths"][str(max_length)] = summarize(runs, tokens, 6 * parameters, peak)
        results["matmul_peak_gflops"] = peak / 1e9
        results["matmul_peak_gflops_samples"] = [p / 1e9 for p in peaks]
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n")  # after each length: partial
    print(
        f"{results['machine']['cpu']}, {results['machine']['cpus']} CPUs, "
        f"fp32 matmul peak {results['matmul_peak_gflops']:.0f} GFLOP/s"
    )
    print(
        "| max_length | impl | pairs/s | useful tokens/s | peak RSS MB | speed-up vs fastest TRL "
        "| RSS vs leanest TRL | useful FLOP/s of peak |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for length, s in results["lengths"].items():
        for impl in (impl for impl in WORKERS if impl in s):
            r = s[impl]
            ratios = (
                f"{r['speedup_vs_fastest_trl']:.2f}x | {r['rss_ratio_vs_leanest_trl']:.2f} | "
                if "speedup_vs_fastest_trl" in r
                else "| | "
            )
            flops = f"{r['useful_flops_fraction_of_peak']:.0%}" if impl.startswith("ours") else ""
            print(
                f"| {length} | {impl} | {r['pairs_per_second']:.3f} | "
                f"{r['useful_tokens_per_second']:.0f} | {r['peak_rss_mb']:.0f} | {ratios}{flops} |"
            )
        if "probe_loss_trl" in s:
            print(
                f"first-batch loss at {length}: TRL {s['probe_loss_trl']:.6f}, "
                f"ours {s['probe_loss_ours']:.6f}"
            )


if __name__ == "__main__":
    main()
