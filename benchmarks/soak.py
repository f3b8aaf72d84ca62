"""Soak: 2,000 ORPO steps of a tiny Llama on CPU, a checkpoint every 50 steps, random kill -9s.

The killed run is a chain of `orpo-pipeline train` processes: the first starts the run, each
later one resumes it (`--set resume=RUN_DIR`), and every one but the last is SIGKILLed at a
seeded random step (plus a random fraction of a second, so some kills land inside a checkpoint
write). An uninterrupted run of the same config runs afterwards. The RSS of each training
process is sampled every 0.25 s together with the step it has logged.

Reported: the RSS curve of both runs (per 100 steps), RSS growth after warm-up in MiB per 1,000
steps, peak RSS per process, the checkpoints left on disk, and whether the killed-and-resumed
run ends with the same weights and metrics as the uninterrupted one. The tiny model and tokenizer
are the test suite's (`tests/train/conftest.py`); each process uses one thread (on shared cores,
more threads only contend on a model this small).

    python -m benchmarks.soak                     # 2,000 steps, 8 kills (~3 min on 2 cores)
    python -m benchmarks.soak --steps 400 --kills 2
"""

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUTPUT = Path("runs/bench/soak.json")
SAMPLE_SECONDS = 0.25
WARMUP_STEPS = 100
"""Steps of each process left out of the growth fit (allocator and caches settle)."""
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def write_config(root: Path, *, steps: int, save_every: int) -> Path:
    """The tiny model, 64 train pairs and a training config under `root`."""
    import yaml

    from tests.train.conftest import build_model, build_tokenizer, make_pairs, write_pairs

    tokenizer = build_tokenizer()
    build_model(tokenizer).save_pretrained(root / "tiny")
    tokenizer.save_pretrained(root / "tiny")
    config = {
        "name": "soak",
        "model": str(root / "tiny"),
        "train_pairs": str(write_pairs(make_pairs(64), root / "train.parquet")),
        "max_length": 64,
        "max_prompt_length": 48,
        "per_device_batch_size": 2,
        "max_steps": steps,
        "learning_rate": 1e-3,
        "save_every_steps": save_every,
        "save_total_limit": 2,
        "num_sample_generations": 0,
    }
    path = root / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def rss_mib(pid: int) -> float | None:
    """Resident set size of a process in MiB; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def logged_step(output_dir: Path) -> int:
    """The step of the last line of the run's `metrics.jsonl` (0 before the first)."""
    found = sorted(output_dir.glob("*/metrics.jsonl"))
    if not found:
        return 0
    with found[0].open("rb") as stream:
        stream.seek(max(0, found[0].stat().st_size - 4096))
        lines = stream.read().splitlines()
    for line in reversed(lines):
        try:
            return json.loads(line)["step"]
        except ValueError:  # the first, cut line of the tail, or a line being written
            continue
    return 0


def resumed_step(output_dir: Path) -> int:
    """The step a resumed process starts from: its newest complete checkpoint's (0 if none)."""
    from orpo_pipeline.train.checkpoints import complete_checkpoints

    found = [c for run in output_dir.glob("*") for c in complete_checkpoints(run / "checkpoints")]
    return int(found[-1].name.removeprefix("step-")) if found else 0


def run_process(
    config: Path, output_dir: Path, *overrides: str, kill_at: tuple[int, float] | None = None
) -> dict:
    """One training process, sampled; SIGKILLed `kill_at[1]` s after it logs step `kill_at[0]`.

    Returns the samples [(seconds, step, rss MiB)], the step it started from (its checkpoint),
    the last step it logged, whether it was killed, and its exit code.
    """
    command = [sys.executable, "-m", "orpo_pipeline", "train", str(config)]
    for override in (f"output_dir={output_dir}", *overrides):
        command += ["--set", override]
    log = output_dir.with_suffix(".log")
    with log.open("w", encoding="utf-8") as stream:  # a pipe nobody reads would fill up
        process = subprocess.Popen(command, env=ENV, stdout=stream, stderr=stream)
    started, first_step = time.monotonic(), resumed_step(output_dir)
    samples: list[tuple[float, int, float]] = []
    reached = None
    while process.poll() is None:
        time.sleep(SAMPLE_SECONDS)
        rss, step = rss_mib(process.pid), logged_step(output_dir)
        if rss is not None:
            samples.append((round(time.monotonic() - started, 2), step, round(rss, 1)))
        if kill_at is not None and reached is None and step >= kill_at[0]:
            reached = time.monotonic()
        if reached is not None and time.monotonic() - reached >= kill_at[1]:
            process.send_signal(signal.SIGKILL)
            break
    process.wait()
    if kill_at is None and process.returncode != 0:
        raise SystemExit(f"training failed:\n{log.read_text(encoding='utf-8')[-3000:]}")
    return {
        "first_step": first_step,
        "last_step": logged_step(output_dir),
        "killed": process.returncode == -signal.SIGKILL,
        "exit_code": process.returncode,
        "peak_rss_mib": max((rss for _, _, rss in samples), default=None),
        "samples": samples,
    }


def growth_per_1000_steps(samples: list[tuple[float, int, float]]) -> float | None:
    """Least-squares slope of RSS over steps after warm-up, in MiB per 1,000 steps."""
    if not samples:
        return None
    start = samples[0][1] + WARMUP_STEPS
    points = [(step, rss) for _, step, rss in samples if step >= start]
    if len({step for step, _ in points}) < 3:
        return None
    slope = statistics.linear_regression(*zip(*points, strict=True)).slope
    return round(slope * 1000, 2)


def curve(samples: list[tuple[float, int, float]], every: int) -> dict[int, float]:
    """RSS at the first sample at or after each multiple of `every` steps."""
    points: dict[int, float] = {}
    for _, step, rss in samples:
        mark = step // every * every
        if step and mark not in points:
            points[mark] = rss
    return points


def same_final_weights(run_a: Path, run_b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    a = load_file(run_a / "final" / "model.safetensors")
    b = load_file(run_b / "final" / "model.safetensors")
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--save-every", type=int, default=50)
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    begun = time.monotonic()

    with tempfile.TemporaryDirectory(prefix="orpo-soak-") as temp:
        root = Path(temp)
        config = write_config(root, steps=args.steps, save_every=args.save_every)
        targets = sorted(rng.sample(range(args.save_every, args.steps - 10), args.kills))
        killed_dir, processes = root / "killed", []
        for target in [*targets, None]:
            run_dirs = list(killed_dir.glob("*")) if killed_dir.exists() else []
            resume = [f"resume={run_dirs[0]}"] if run_dirs else []
            kill_at = None if target is None else (target, rng.uniform(0.0, 0.5))
            processes.append(run_process(config, killed_dir, *resume, kill_at=kill_at))
            print(
                f"process {len(processes)}: steps {processes[-1]['first_step']}"
                f"-{processes[-1]['last_step']}, "
                + ("killed" if processes[-1]["killed"] else f"exit {processes[-1]['exit_code']}")
                + f", peak RSS {processes[-1]['peak_rss_mib']} MiB",
                flush=True,
            )
        [run_dir] = killed_dir.iterdir()
        reference_dir = root / "reference"
        reference = run_process(config, reference_dir)
        [reference_run] = reference_dir.iterdir()
        checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
        metrics = [
            [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            for run in (run_dir, reference_run)
        ]
        report = {
            "steps": args.steps,
            "save_every_steps": args.save_every,
            "kills": sum(p["killed"] for p in processes),
            "seconds": round(time.monotonic() - begun, 1),
            "same_final_weights": same_final_weights(run_dir, reference_run),
            "same_metrics": metrics[0] == metrics[1],
            "checkpoints_left": checkpoints,
            "reference": {
                "peak_rss_mib": reference["peak_rss_mib"],
                "growth_mib_per_1000_steps": growth_per_1000_steps(reference["samples"]),
                "rss_by_step": curve(reference["samples"], 100),
            },
            "processes": [
                {
                    **{k: v for k, v in p.items() if k != "samples"},
                    "growth_mib_per_1000_steps": growth_per_1000_steps(p["samples"]),
                    "rss_by_step": curve(p["samples"], 100),
                }
                for p in processes
            ],
        }
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nuninterrupted run, RSS (MiB) by step: {report['reference']['rss_by_step']}")
    print(
        f"growth after step {WARMUP_STEPS}: "
        f"{report['reference']['growth_mib_per_1000_steps']} MiB per 1,000 steps; "
        f"peak {report['reference']['peak_rss_mib']} MiB"
    )
    print(
        f"killed run: {report['kills']} kills, same final weights: "
        f"{report['same_final_weights']}, same metrics: {report['same_metrics']}, "
        f"checkpoints left: {checkpoints}"
    )
    print(f"took {report['seconds']} s; wrote {OUTPUT}")


if __name__ == "__main__":
    main()
