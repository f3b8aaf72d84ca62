"""Our ORPO trainer against TRL 1.16's `ORPOTrainer` on the same model, data and settings.

Both sides train the embedded SmolLM2-135M-Instruct (float32) on real HH-RLHF pairs (the default
recipe's train split) with the same batch size, learning rate and `max_length`. Only pairs that
fit `max_length` untruncated are used, so both sides do the same work (TRL cannot truncate a
prompt and returns NaN for an overlong one). TRL runs with `bf16=False` (its default bf16 is ~25x
slower on a CPU without bf16) and otherwise its defaults, gradient checkpointing included. Each
run is a fresh subprocess (so peak RSS is its own); runs alternate TRL / ours and repeat, and
medians are reported.

Reported per `max_length`: pairs/s and useful tokens/s (prompt + chosen + rejected tokens of each
pair, the least any layout must compute), peak RSS, the loss of both on one identical batch, and
our useful-token FLOP/s (6 x parameters x useful tokens per second) as a fraction of the measured
float32 matmul peak of this machine.

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
from pathlib import Path

OUTPUT = Path("runs/bench/train.json")
BATCH_SIZE = 8
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


def useful_tokens(rows: list[dict]) -> int:
    """Prompt + chosen + rejected tokens of the pairs: the work no layout can avoid."""
    from orpo_pipeline.models import load_tokenizer
    from orpo_pipeline.train.data import tokenize_pairs

    pairs = tokenize_pairs(
        rows, load_tokenizer("default"), max_length=10**6, max_prompt_length=10**6
    ).pairs
    return sum(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)


def probe_loss_ours(rows: list[dict], max_length: int) -> float:
    """Our ORPO loss on one batch, no gradient."""
    import torch

    from orpo_pipeline.models import load_model, load_tokenizer
    from orpo_pipeline.train.data import PreferenceCollator, tokenize_pairs
    from orpo_pipeline.train.loss import orpo_loss, pair_logps

    tokenizer, model = load_tokenizer("default"), load_model("default").eval()
    pairs = tokenize_pairs(
        rows, tokenizer, max_length=max_length, max_prompt_length=max_length
    ).pairs
    batch = PreferenceCollator(pad_token_id=tokenizer.pad_token_id)(pairs)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        logps = pair_logps(logits, batch, nll_on_prompt=True)
        out = orpo_loss(
            logps.chosen,
            logps.rejected,
            logps.nll_sum,
            beta=0.1,
            nll_tokens=logps.nll_tokens,
            num_pairs=len(pairs),
        )
    return float(out.loss)


def worker_trl(rows: list[dict], max_length: int, steps: int) -> dict:
    """Train TRL's ORPOTrainer for `steps` steps; time each step; probe the first batch."""
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

    tokenizer, model = load_tokenizer("default"), load_model("default")
    dataset = Dataset.from_list(
        [{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in rows]
    )
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        args = ORPOConfig(
            output_dir=out,
            use_cpu=True,
            bf16=False,
            per_device_train_batch_size=BATCH_SIZE,
            max_length=max_length,
            max_steps=steps,
            learning_rate=LEARNING_RATE,
            logging_steps=1,
            save_strategy="no",
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
        model.train()
        trainer.train()
    return {"step_seconds": timer.seconds, "probe_loss": float(probe)}


def worker_ours(rows: list[dict], max_length: int, steps: int) -> dict:
    """Train with our loop for `steps` steps (no eval, no checkpoints); probe the first batch."""
    import polars as pl

    from orpo_pipeline.records import PAIR_SCHEMA
    from orpo_pipeline.train.config import TrainConfig
    from orpo_pipeline.train.loop import train

    probe = probe_loss_ours(rows[:BATCH_SIZE], max_length)
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
        )
        result = train(config)
        metrics = [
            json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
        ]
    return {
        "step_seconds": [m["step_seconds"] for m in metrics if "step_seconds" in m],
        "probe_loss": probe,
    }


def matmul_peak_flops() -> float:
    """Median float32 matmul FLOP/s of this machine (2048 x 2048, all threads)."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    times = []
    for _ in range(7):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * 2048**3 / statistics.median(times)


def run_worker(impl: str, max_length: int, steps: int, count: int) -> dict:
    """One fresh process: train, then report step times, probe loss and peak RSS."""
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
        "--pairs",
        str(count),
    ]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"},
    )
    if done.returncode != 0:
        raise RuntimeError(f"{impl} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", choices=["trl", "ours"])
    parser.add_argument("--max-length", type=int, nargs="*", default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--pairs", type=int, default=None)
    args = parser.parse_args(argv)

    if args.worker:
        (max_length,) = args.max_length
        rows = bench_pairs(max_length, args.pairs)
        worker = worker_trl if args.worker == "trl" else worker_ours
        result = worker(rows, max_length, args.steps)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return

    lengths = args.max_length or ([256] if args.quick else [256, 1024])
    steps = args.steps or (3 if args.quick else 6)
    reps = args.reps or (1 if args.quick else 3)
    count = steps * BATCH_SIZE
    from orpo_pipeline.models import load_model

    parameters = sum(p.numel() for p in load_model("default").parameters())
    peak = matmul_peak_flops()
    results = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "processor": platform.processor(),
        },
        "matmul_peak_gflops": peak / 1e9,
        "batch_size": BATCH_SIZE,
        "steps": steps,
        "lengths": {},
    }
    for max_length in lengths:
        tokens = useful_tokens(bench_pairs(max_length, count)) / count  # per pair
        runs: dict[str, list[dict]] = {"trl": [], "ours": []}
        for _ in range(reps):
            for impl in ("trl", "ours"):
                runs[impl].append(run_worker(impl, max_length, steps, count))
        summary = {}
        for impl, done in runs.items():
            # The first step pays one-off costs (allocator warm-up, lazy init): not timed.
            step = statistics.median(s for run in done for s in run["step_seconds"][1:])
            summary[impl] = {
                "seconds_per_step": step,
                "pairs_per_second": BATCH_SIZE / step,
                "useful_tokens_per_second": BATCH_SIZE * tokens / step,
                "peak_rss_mb": statistics.median(run["peak_rss_mb"] for run in done),
                "probe_loss": done[0]["probe_loss"],
            }
        ours, trl = summary["ours"], summary["trl"]
        summary["speedup"] = ours["pairs_per_second"] / trl["pairs_per_second"]
        summary["rss_ratio"] = ours["peak_rss_mb"] / trl["peak_rss_mb"]
        summary["probe_loss_relative_difference"] = abs(
            ours["probe_loss"] - trl["probe_loss"]
        ) / abs(trl["probe_loss"])
        summary["useful_flops_fraction_of_peak"] = (
            6 * parameters * ours["useful_tokens_per_second"] / peak
        )
        summary["useful_tokens_per_pair"] = tokens
        results["lengths"][str(max_length)] = summary
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"machine: {results['machine']['platform']}, {results['machine']['cpus']} CPUs, "
        f"fp32 matmul peak {peak / 1e9:.1f} GFLOP/s"
    )
    print(
        "| max_length | TRL pairs/s | ours pairs/s | speed-up | TRL RSS MB | ours RSS MB | "
        "RSS ratio | probe loss TRL / ours | useful FLOP/s of peak |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for length, s in results["lengths"].items():
        print(
            f"| {length} | {s['trl']['pairs_per_second']:.3f} | "
            f"{s['ours']['pairs_per_second']:.3f} | {s['speedup']:.2f}x | "
            f"{s['trl']['peak_rss_mb']:.0f} | {s['ours']['peak_rss_mb']:.0f} | "
            f"{s['rss_ratio']:.2f} | {s['trl']['probe_loss']:.5f} / "
            f"{s['ours']['probe_loss']:.5f} | {s['useful_flops_fraction_of_peak']:.0%} |"
        )


if __name__ == "__main__":
    main()
