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

On CUDA (`--device cuda`, `make bench-train DEVICE=cuda`) both sides train SmolLM2 shapes with
random weights (`--shapes 135m 1.7b`: speed does not depend on the weights; the same seeded
weights on both sides) in bf16 autocast at batch 8, plus ours with a token budget per micro-batch
(`--batch-tokens`). Reported there: pairs/s, useful tokens/s, useful-token MFU against the bf16
matmul rate measured in the same run, peak allocated GPU memory, step-time spread (max and p90
over median) and the first-batch losses (ours with SDPA and with FlexAttention against TRL's).
`--startup` measures the seconds from `orpo-pipeline train` to the first forward pass.

    python -m benchmarks.bench_train            # max_length 256 and 1024, 3 reps
    python -m benchmarks.bench_train --quick    # max_length 256, 1 rep, fewer steps
    python -m benchmarks.bench_train --device cuda --max-length 1024 --pairs runs/bench/pairs.json
    python -m benchmarks.bench_train --startup  # time to the first training step
"""

import argparse
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

OUTPUT = Path("runs/bench/train.json")
BATCH_SIZE = {"cpu": 4, "cuda": 8}
LEARNING_RATE = 5e-6
SEED = 0
SHAPES = {
    "135m": {},  # SmolLM2-135M-Instruct's own config
    "1.7b": {  # SmolLM2-1.7B: the same family, wider and deeper
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 24,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
    },
}
"""Model shapes benchmarked on CUDA with random weights, as overrides of the default's config."""


@dataclass(frozen=True)
class Setup:
    """What every worker of one comparison shares."""

    model: str  # "default" or a model directory
    max_length: int
    steps: int
    batch_size: int
    device: str
    batch_tokens: int | None = None  # ours_tokens: the token budget of a micro-batch


def bench_pairs(
    max_length: int, count: int, *, model: str = "default", pairs_file: Path | None = None
) -> list[dict]:
    """The first `count` default-recipe train pairs that fit `max_length` untruncated (read from
    `pairs_file` when given, e.g. on a machine without the data recipe's inputs)."""
    from orpo_pipeline.config_files import load_config
    from orpo_pipeline.models import load_tokenizer
    from orpo_pipeline.pipeline import PipelineSpec, run_pipeline
    from orpo_pipeline.train.data import read_pairs, tokenize_pairs

    if pairs_file is not None:
        rows = json.loads(pairs_file.read_text(encoding="utf-8"))
    else:
        out = Path("runs/bench/pairs")
        spec = load_config(Path("pipelines/default.yaml"), PipelineSpec, [f"output_dir={out}"])
        run_pipeline(spec)
        rows = read_pairs(out / "train.parquet")
    tokenized = tokenize_pairs(
        rows, load_tokenizer(model), max_length=10**6, max_prompt_length=10**6
    )
    fits = [
        rows[row]
        for row, pair in zip(tokenized.rows, tokenized.pairs, strict=True)
        if len(pair.prompt_ids) + max(len(pair.chosen_ids), len(pair.rejected_ids)) <= max_length
    ]
    return fits[:count]


def step_tokens(rows: list[dict], setup: Setup) -> list[int]:
    """Prompt + chosen + rejected tokens of each step's pairs (the work no layout can avoid), in
    the order both sides train on them (batches of `setup.batch_size` pairs)."""
    from orpo_pipeline.models import load_tokenizer
    from orpo_pipeline.train.data import tokenize_pairs
    from orpo_pipeline.train.loop import step_pairs

    pairs = tokenize_pairs(
        rows, load_tokenizer(setup.model), max_length=10**6, max_prompt_length=10**6
    ).pairs
    return [
        sum(
            pairs[i].num_tokens
            for i in step_pairs(
                step, num_pairs=len(rows), pairs_per_step=setup.batch_size, seed=SEED
            )
        )
        for step in range(setup.steps)
    ]


def random_model(shape: str, base: str, device: str) -> Path:
    """`runs/bench/models/<shape>/`: `base`'s config with `SHAPES[shape]`, seeded random float32
    weights and `base`'s tokenizer (built once; `base` needs no weights, only its config)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from orpo_pipeline.models import load_tokenizer, resolve_model

    out = Path("runs/bench/models") / shape
    if (out / "config.json").is_file():
        return out
    config = AutoConfig.from_pretrained(resolve_model(base))
    for key, value in SHAPES[shape].items():
        setattr(config, key, value)
    torch.manual_seed(SEED)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    temp = out.with_name(f".tmp-{shape}")
    model.save_pretrained(temp)
    load_tokenizer(base).save_pretrained(temp)
    temp.rename(out)
    return out


class StepClock:
    """Marks the start of each step; on CUDA with events, so timing adds no host sync."""

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"
        self.marks: list = []

    def tick(self) -> None:
        if self.cuda:
            import torch

            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def seconds(self) -> list[float]:
        """Time between consecutive marks."""
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1000 for a, b in itertools.pairwise(self.marks)]
        return [b - a for a, b in itertools.pairwise(self.marks)]


def peak_memory(device: str) -> dict:
    """Peak allocated GPU memory since the last reset, in GiB (CUDA only)."""
    if device != "cuda":
        return {}
    import torch

    return {"peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30}


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


def probe_loss_ours(model, pairs: list, pad_token_id: int, *, attention: str) -> float:
    """Our training path's ORPO loss (prefix-shared, packed) on `pairs` with `attention`, no
    gradient; the model's own attention implementation is restored afterwards."""
    import torch

    from orpo_pipeline.train.loss import batch_loss
    from orpo_pipeline.train.packing import PackedPolicy, pack_pairs

    own = model.config._attn_implementation
    model.set_attn_implementation(attention)
    bucket = 128 if attention == "flex_attention" else None
    batch = pack_pairs(pairs, max_row_tokens=None, pad_token_id=pad_token_id, bucket_tokens=bucket)
    with torch.no_grad():
        logps = PackedPolicy(model)(batch.to(model.device), nll_on_prompt=True)
        loss = float(batch_loss(logps, beta=0.1).loss)
    model.set_attn_implementation(own)
    return loss


def worker_trl(rows: list[dict], setup: Setup, *, gradient_checkpointing: bool) -> dict:
    """Train TRL's ORPOTrainer for `setup.steps` steps; time each step.

    Before training, both losses are taken on TRL's first collated batch: TRL's, and ours on the
    very same token ids and weights (in fp32, with SDPA and, on CUDA, with FlexAttention).
    """
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    from orpo_pipeline.models import load_model, load_tokenizer
    from orpo_pipeline.train.loop import step_pairs

    clock = StepClock(setup.device)

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            clock.tick()

        def on_train_end(self, args, state, control, **kwargs):
            clock.tick()

    on_cuda = setup.device == "cuda"
    tokenizer = load_tokenizer(setup.model)
    model = load_model(setup.model, dtype=torch.float32)
    # Our loop's order, read sequentially by TRL: step k of both trains on the same pairs.
    order = [
        i
        for step in range(setup.steps)
        for i in step_pairs(step, num_pairs=len(rows), pairs_per_step=setup.batch_size, seed=SEED)
    ]
    dataset = Dataset.from_list(
        [{k: rows[i][k] for k in ("prompt", "chosen", "rejected")} for i in order]
    )
    with tempfile.TemporaryDirectory() as out:
        args = ORPOConfig(
            output_dir=out,
            use_cpu=not on_cuda,
            bf16=on_cuda,  # autocast on the GPU; on this CPU bf16 is ~25x slower
            gradient_checkpointing=gradient_checkpointing,
            per_device_train_batch_size=setup.batch_size,
            max_length=setup.max_length,
            max_steps=setup.steps,
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
            callbacks=[StepTimer()],
        )
        size = setup.batch_size
        collated = trainer.data_collator([trainer.train_dataset[i] for i in range(size)])
        model.eval()
        with torch.no_grad():
            probe, _ = trainer.get_batch_loss_metrics(model, collated, train_eval="eval")
        pairs = trl_batch_pairs(collated)
        probes = {
            "probe_loss_ours": probe_loss_ours(
                model, pairs, tokenizer.pad_token_id, attention="sdpa"
            )
        }
        if on_cuda:
            probes["probe_loss_ours_flex"] = probe_loss_ours(
                model, pairs, tokenizer.pad_token_id, attention="flex_attention"
            )
            torch.cuda.reset_peak_memory_stats()
        model.train()
        trainer.train()
    return {
        "step_seconds": clock.seconds(),
        "probe_loss": float(probe),
        **probes,
        "probe_tokens": sum(p.num_tokens for p in pairs),
        **peak_memory(setup.device),
    }


def worker_ours(
    rows: list[dict],
    setup: Setup,
    *,
    gradient_checkpointing: bool,
    return_freed_memory: bool = False,
    token_budget: bool = False,
) -> dict:
    """Train with our loop (no eval, no checkpoints); time each step, from one forward pass to
    the next, and count each step's pairs and useful tokens from the batch it trains on."""
    import polars as pl

    from orpo_pipeline.records import PAIR_SCHEMA
    from orpo_pipeline.train.config import TrainConfig
    from orpo_pipeline.train.loop import train
    from orpo_pipeline.train.packing import PackedPolicy

    clock = StepClock(setup.device)
    pairs_seen, tokens_seen = [], []
    forward = PackedPolicy.forward

    def timed_forward(self, batch, **kwargs):
        clock.tick()
        pairs_seen.append(batch.num_pairs)
        # Every token but each prompt's first is scored once: shapes only, no device sync.
        tokens_seen.append(batch.predictor.numel() + batch.num_pairs)
        return forward(self, batch, **kwargs)

    PackedPolicy.forward = timed_forward
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
        budget = {"micro_batch_tokens": setup.batch_tokens} if token_budget else {}
        config = TrainConfig(
            model=setup.model,
            train_pairs=pairs,
            output_dir=Path(out) / "runs",
            max_steps=setup.steps + 1,  # the last step only marks where the one before ended
            per_device_batch_size=setup.batch_size,
            learning_rate=LEARNING_RATE,
            max_length=setup.max_length,
            max_prompt_length=setup.max_length,
            seed=SEED,
            num_sample_generations=0,
            gradient_checkpointing=gradient_checkpointing,
            return_freed_memory=return_freed_memory,
            **budget,
        )
        train(config)
    return {
        "step_seconds": clock.seconds(),
        "step_pairs": pairs_seen[:-1],
        "step_tokens": tokens_seen[:-1],
        **peak_memory(setup.device),
    }


def matmul_peak_flops(device: str) -> float:
    """Best matmul FLOP/s of this machine now: float32 2048^3 on all CPU threads, or bf16
    8192^3 on the GPU (the rate the GPU's MFU is quoted against)."""
    import torch

    size, dtype = (8192, torch.bfloat16) if device == "cuda" else (2048, torch.float32)
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    a @ b
    times = []
    for _ in range(7):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(10 if device == "cuda" else 1):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - started) / (10 if device == "cuda" else 1))
    return 2 * size**3 / min(times)


def machine(device: str) -> dict:
    """The CPU's model name (as lscpu prints it), core count, platform; the GPU and torch."""
    import torch

    cpu = platform.processor()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    info = {"cpu": cpu, "cpus": os.cpu_count(), "platform": platform.platform()}
    info["torch"] = torch.__version__
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def run_worker(impl: str, setup: Setup, rows_file: Path) -> dict:
    """One fresh process: train on the pairs in `rows_file`, then report step times, probe losses
    and peak memory. The pairs are chosen here, so the worker's peak is its trainer's alone."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.bench_train",
        "--worker",
        impl,
        "--setup",
        json.dumps(asdict(setup)),
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
    "ours_tokens": partial(worker_ours, gradient_checkpointing=False, token_budget=True),
}
"""Each side with gradient checkpointing (TRL's default: least memory) and without (speed); ours
also with `return_freed_memory` (its least memory, CPU) and with a token budget per micro-batch."""
DEFAULT_IMPLS = {
    "cpu": ["ours", "ours_gc", "ours_lowmem", "trl", "trl_no_gc"],
    "cuda": ["ours", "ours_gc", "ours_tokens", "trl", "trl_no_gc"],
}


def summarize(
    runs: dict[str, list[dict]],
    setup: Setup,
    tokens: list[int],
    flops_per_token: float,
    peak: float,
) -> dict:
    """Medians over runs per implementation; ours against TRL's fastest (speed) and leanest
    (memory: peak RSS on CPU, peak allocated on CUDA).

    A run's throughput is its timed steps' pairs (or useful tokens) over their summed time. The
    first step of each run pays one-off costs (allocator warm-up, lazy init, compilation) and is
    not timed; the spread is the slowest and the 90th-percentile timed step over the median.
    """
    summary: dict = {"useful_tokens_per_step": tokens}
    memory = "peak_allocated_gib" if setup.device == "cuda" else "peak_rss_mb"

    def rates(run: dict) -> dict:
        timed = run["step_seconds"][1:]
        seconds = sum(timed)
        pairs = run.get("step_pairs", [setup.batch_size] * len(run["step_seconds"]))
        useful = run.get("step_tokens", tokens)
        median = statistics.median(timed)
        ranked = sorted(timed)
        return {
            "pairs_per_second": sum(pairs[1 : 1 + len(timed)]) / seconds,
            "useful_tokens_per_second": sum(useful[1 : 1 + len(timed)]) / seconds,
            "step_max_over_median": ranked[-1] / median,
            "step_p90_over_median": ranked[int(0.9 * (len(ranked) - 1))] / median,
        }

    for impl, done in runs.items():
        per_run = [rates(run) for run in done]
        summary[impl] = {key: statistics.median(r[key] for r in per_run) for key in per_run[0]} | {
            memory: statistics.median(run[memory] for run in done),
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
            leanest = min(trls, key=lambda trl: summary[trl][memory])
            ours["speedup_vs_fastest_trl"] = (
                ours["pairs_per_second"] / summary[fastest]["pairs_per_second"]
            )
            ours["memory_ratio_vs_leanest_trl"] = ours[memory] / summary[leanest][memory]
            ours["fastest_trl"], ours["leanest_trl"] = fastest, leanest
    if trls:
        probe = runs[trls[0]][0]
        summary["probe_loss_trl"] = probe["probe_loss"]
        for key in ("probe_loss_ours", "probe_loss_ours_flex"):
            if key in probe:
                summary[key] = probe[key]
                summary[f"{key}_relative_difference"] = abs(probe[key] - probe["probe_loss"]) / abs(
                    probe["probe_loss"]
                )
    return summary


def measure_startup(setup: Setup, rows_file: Path, reps: int) -> dict:
    """Seconds from starting `orpo-pipeline train` to its first forward pass (model load,
    tokenization and set-up included), and to importing the training loop alone; medians of wall
    time and of the process's CPU time (user + system, all threads: the figure that does not
    depend on what else the machine runs)."""
    import polars as pl

    from orpo_pipeline.records import PAIR_SCHEMA

    rows = json.loads(rows_file.read_text(encoding="utf-8"))
    work = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    pairs = work / "pairs.parquet"
    pl.DataFrame(
        [{**r, "source": "bench", "score_chosen": None, "score_rejected": None} for r in rows],
        schema=PAIR_SCHEMA,
    ).write_parquet(pairs)
    config = work / "train.yaml"
    config.write_text(
        json.dumps(
            {
                "model": setup.model,
                "train_pairs": str(pairs),
                "output_dir": str(work / "runs"),
                "max_steps": 2,
                "max_length": setup.max_length,
                "max_prompt_length": setup.max_length,
                "per_device_batch_size": setup.batch_size,
                "num_sample_generations": 0,
            }
        )
    )
    # The CLI as installed, with one hook: print the time at the first forward pass and leave.
    first_step = (
        "import os, sys, time\n"
        "from orpo_pipeline.train import packing\n"
        "def stop(self, *a, **k):\n"
        "    cpu = os.times()\n"
        "    print(f'FIRST_STEP {time.time()} {cpu.user + cpu.system}', flush=True)\n"
        "    os._exit(0)\n"
        "packing.PackedPolicy.forward = stop\n"
        "from orpo_pipeline.cli import cli\n"
        f"sys.argv = ['orpo-pipeline', 'train', {str(config)!r}]\n"
        "cli()\n"
    )
    import_loop = (
        "import os, time\n"
        "import orpo_pipeline.train.loop\n"
        "cpu = os.times()\n"
        "print(f'IMPORTED {time.time()} {cpu.user + cpu.system}')\n"
    )
    samples: dict[str, list[float]] = {}
    for _ in range(reps):
        for name, script in (("first_step", first_step), ("import_loop", import_loop)):
            started = time.time()
            done = subprocess.run(
                [sys.executable, "-c", script], capture_output=True, text=True, check=False
            )
            lines = done.stdout.splitlines()
            marks = [line.split() for line in lines if line.startswith(("FIRST_STEP", "IMPORTED"))]
            if not marks:
                msg = f"start-up run ({name}) did not get there:\n{done.stderr[-3000:]}"
                raise RuntimeError(msg)
            samples.setdefault(f"seconds_to_{name}", []).append(float(marks[0][1]) - started)
            samples.setdefault(f"cpu_seconds_to_{name}", []).append(float(marks[0][2]))
    return {name: statistics.median(values) for name, values in samples.items()} | {
        "samples": samples
    }


def print_table(results: dict) -> None:
    """The results as a Markdown table, one row per implementation and comparison."""
    cuda = results["device"] == "cuda"
    memory, unit = ("peak_allocated_gib", "GiB") if cuda else ("peak_rss_mb", "MB")
    print(
        f"{results['machine']}, matmul peak {results['matmul_peak_gflops']:.0f} GFLOP/s "
        f"({'bf16' if cuda else 'fp32'})"
    )
    print(
        f"| comparison | impl | pairs/s | useful tokens/s | peak {unit} | speed-up vs fastest TRL "
        "| memory vs leanest TRL | useful-token MFU | step max/median |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label, s in results["lengths"].items():
        for impl in (impl for impl in WORKERS if impl in s):
            r = s[impl]
            ratios = (
                f"{r['speedup_vs_fastest_trl']:.2f}x | {r['memory_ratio_vs_leanest_trl']:.2f} | "
                if "speedup_vs_fastest_trl" in r
                else "| | "
            )
            mfu = f"{r['useful_flops_fraction_of_peak']:.1%}" if impl.startswith("ours") else ""
            print(
                f"| {label} | {impl} | {r['pairs_per_second']:.3f} | "
                f"{r['useful_tokens_per_second']:.0f} | {r[memory]:.1f} | {ratios}{mfu} | "
                f"{r['step_max_over_median']:.2f} |"
            )
        for key in ("probe_loss_ours", "probe_loss_ours_flex"):
            if key in s:
                print(
                    f"first-batch loss at {label}: TRL {s['probe_loss_trl']:.6f}, "
                    f"{key} {s[key]:.6f}"
                )
    if "startup" in results:
        print(f"start-up: {json.dumps(results['startup'])}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--worker", choices=sorted(WORKERS))
    parser.add_argument("--setup", help="worker: the Setup as JSON")
    parser.add_argument("--impls", nargs="*", choices=sorted(WORKERS), default=None)
    parser.add_argument("--max-length", type=int, nargs="*", default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--batch-tokens", type=int, default=16384, help="ours_tokens budget")
    parser.add_argument("--shapes", nargs="*", choices=sorted(SHAPES), default=None)
    parser.add_argument("--base-model", default="default", help="config + tokenizer for shapes")
    parser.add_argument("--pairs", type=Path, default=None, help="JSON list of pairs to use")
    parser.add_argument("--startup", action="store_true", help="time to the first step only")
    parser.add_argument("--rows", type=Path, default=None, help="worker: JSON list of pairs")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)

    if args.worker:
        setup = Setup(**json.loads(args.setup))
        rows = json.loads(args.rows.read_text(encoding="utf-8"))
        result = WORKERS[args.worker](rows, setup)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return

    device = args.device
    lengths = args.max_length or ([256] if args.quick else [256, 1024])
    steps = args.steps or (2 if args.quick else 3)
    reps = args.reps or (1 if args.quick else 3)
    batch_size = args.batch_size or BATCH_SIZE[device]
    impls = args.impls or DEFAULT_IMPLS[device]
    # CPU: the real default model; CUDA: random weights in the shapes (no weights travel)
    shapes = args.shapes or (["135m", "1.7b"] if device == "cuda" else [None])
    results = {
        "machine": machine(device),
        "device": device,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "command": " ".join(["python -m benchmarks.bench_train", *(argv or sys.argv[1:])]),
        "batch_size": batch_size,
        "batch_tokens": args.batch_tokens,
        "learning_rate": LEARNING_RATE,
        "steps_per_run": steps,
        "reps": reps,
        "lengths": {},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if args.startup:
        setup = Setup(args.base_model, lengths[0], steps, batch_size, device)
        rows_file = OUTPUT.parent / "pairs-startup.json"
        rows_file.parent.mkdir(parents=True, exist_ok=True)
        rows = bench_pairs(lengths[0], 64, model=args.base_model, pairs_file=args.pairs)
        rows_file.write_text(json.dumps(rows), encoding="utf-8")
        results["startup"] = measure_startup(setup, rows_file, reps)
        args.output.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results["startup"], indent=2))
        return
    peaks = []
    for shape in shapes:
        model = str(random_model(shape, args.base_model, device)) if shape else args.base_model
        parameters = count_parameters(model)
        for max_length in lengths:
            setup = Setup(model, max_length, steps, batch_size, device, args.batch_tokens)
            # enough pairs for the token-budget run's bigger steps
            count = steps * batch_size * (8 if "ours_tokens" in impls else 1)
            rows = bench_pairs(max_length, count, model=model, pairs_file=args.pairs)
            tokens = step_tokens(rows, setup)
            label = f"{shape}@{max_length}" if shape else str(max_length)
            rows_file = OUTPUT.parent / f"pairs-{max_length}.json"
            rows_file.parent.mkdir(parents=True, exist_ok=True)
            rows_file.write_text(json.dumps(rows), encoding="utf-8")
            runs: dict[str, list[dict]] = {impl: [] for impl in impls}
            for _ in range(reps):  # alternate implementations, so load drifts hit all alike
                peaks.append(matmul_peak_flops(device))
                for impl in impls:
                    print(f"{label}: {impl}", file=sys.stderr, flush=True)
                    runs[impl].append(run_worker(impl, setup, rows_file))
            peak = statistics.median(peaks)
            results["lengths"][label] = summarize(runs, setup, tokens, 6 * parameters, peak)
            results["matmul_peak_gflops"] = peak / 1e9
            results["matmul_peak_gflops_samples"] = [p / 1e9 for p in peaks]
            args.output.write_text(json.dumps(results, indent=2) + "\n")  # after each: partial
    print_table(results)


def count_parameters(model: str) -> int:
    """Parameters of `model` (tied embeddings once), from a meta-device copy: no weights read."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from orpo_pipeline.models import resolve_model

    with torch.device("meta"):
        built = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve_model(model)))
    return sum(p.numel() for p in built.parameters())


if __name__ == "__main__":
    main()
