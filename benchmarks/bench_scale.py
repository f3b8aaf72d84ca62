"""Scale: synthetic pairs of realistic length through every curation stage, locally and on Ray.

Writes the pairs as Parquet files in the `trl_preference` layout (200 k pairs a file, from
`bench_data.synthetic_pairs`, one seed per file), then runs the recipe (convert, validate, exact
dedupe, near_dedupe, the `bench_data` filters, decontaminate, split; `cache: false`) in a child
process once per executor: `local`, and `ray` on a local Ray cluster with one worker per CPU.
Peak memory is the sum of RSS over the child's process tree (Ray's workers, raylet and object
store included), sampled every 0.2 s. The child also times each global stage's decide step and
measures the keys it gathers, which feed the scaling estimate (`scaling_table`).

Writes `runs/bench/scale.json` and prints Markdown tables; the generated files are removed.

    python -m benchmarks.bench_scale                      # 10 M pairs (about 7 GB of Parquet)
    python -m benchmarks.bench_scale --pairs 1000000      # 1 M
    python -m benchmarks.bench_scale --executors local    # local only
"""

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import psutil
import yaml

import orpo_pipeline  # noqa: F401  (before Polars loads: its allocator settings, as the CLI)
from benchmarks.bench_data import FILTER, synthetic_pairs
from orpo_pipeline.io import sha256_file
from orpo_pipeline.stages.base import ROW

OUTPUT = Path("runs/bench/scale.json")
WORKDIR = Path("runs/bench/scale")
FILE_PAIRS = 200_000
NODES = (1, 2, 4, 8, 16, 32, 64)
NETWORK_BYTES_PER_S = 1.25e9
"""10 Gbit/s between nodes, for the keys gathered to the driver and the decisions sent back."""
STAGES = ("convert", "validate", "dedupe", "near_dedupe", "filter", "decontaminate", "split")
SECONDS_PER_MILLION = {"generate": 17.6, "local": 83.0, "ray": 85.0}
"""Seconds per million pairs on an idle 2-CPU machine, for the estimate printed before a run when
no earlier result is at hand: the 10 M run of 2026-12-01 11:52 UTC (local 828 s, Ray 847 s)."""


def write_inputs(directory: Path, num_pairs: int) -> list[Path]:
    """`num_pairs` synthetic pairs as Parquet files of `FILE_PAIRS` pairs; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, start in enumerate(range(0, num_pairs, FILE_PAIRS)):
        path = directory / f"part-{index:05d}.parquet"
        pairs = synthetic_pairs(min(FILE_PAIRS, num_pairs - start), seed=index)
        pairs.drop(ROW, "id", "source").write_parquet(path)
        paths.append(path)
    return paths


def recipe(inputs: list[Path], output_dir: Path, executor: str) -> dict:
    """Every curation stage of the issue, no stage cache."""
    return {
        "name": f"scale-{executor}",
        "source": {"inputs": [str(p) for p in inputs], "format": "trl_preference"},
        "stages": [
            {"stage": "validate"},
            {"stage": "dedupe", "scope": "pair"},
            {"stage": "near_dedupe"},
            FILTER.model_dump(mode="json", exclude={"refusal_phrases"}),
            {"stage": "decontaminate"},
            {"stage": "split", "eval_fraction": 0.01},
        ],
        "output_dir": str(output_dir),
        "cache": False,
        "executor": executor,
    }


def child(recipe_path: Path, timings_path: Path) -> None:
    """Run a recipe, timing each global stage's decide step and sizing the keys it gathers."""
    from orpo_pipeline.config_files import load_config
    from orpo_pipeline.pipeline import PipelineSpec, run_pipeline
    from orpo_pipeline.stages import STAGES
    from orpo_pipeline.stages.base import GlobalStage

    timings: dict[str, dict] = {}

    def timed(name: str, decide):
        def run(keys, config):
            frame = keys.collect()
            started = time.perf_counter()
            decided = decide(frame.lazy(), config).collect()
            timings[name] = {
                "decide_s": time.perf_counter() - started,
                "keys_bytes": frame.estimated_size(),
                "decided_bytes": decided.estimated_size(),
            }
            return decided.lazy()

        return run

    for name, function in STAGES.items():
        if isinstance(function, GlobalStage):
            STAGES[name] = GlobalStage(function.keys, timed(name, function.decide))
    run_pipeline(load_config(recipe_path, PipelineSpec))
    timings_path.write_text(json.dumps(timings))


def run_child(recipe_path: Path, timings_path: Path) -> tuple[float, float]:
    """Wall seconds and peak summed RSS (MiB) of the child's process tree."""
    command = [sys.executable, "-m", "benchmarks.bench_scale", "--child", str(recipe_path)]
    command += ["--timings", str(timings_path)]
    started = time.perf_counter()
    process = psutil.Popen(command)
    peak = 0
    while process.poll() is None:
        try:
            tree = [process, *process.children(recursive=True)]
            peak = max(peak, sum(_rss(p) for p in tree))
        except psutil.Error:
            pass
        time.sleep(0.2)
    if process.returncode:
        msg = f"the {recipe_path} run failed (exit {process.returncode})"
        raise RuntimeError(msg)
    return time.perf_counter() - started, peak / 2**20


def _rss(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except psutil.Error:
        return 0


def run_executor(inputs: list[Path], executor: str) -> dict:
    """One run of the recipe on one executor: wall, peak RSS, per-stage figures."""
    out = WORKDIR / f"out-{executor}"
    recipe_path = WORKDIR / f"recipe-{executor}.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe(inputs, out, executor), sort_keys=False))
    timings_path = WORKDIR / f"timings-{executor}.json"
    os.environ["ORPO_PIPELINE_CACHE"] = str(WORKDIR / "cache")
    wall_s, peak_rss_mib = run_child(recipe_path, timings_path)
    report = json.loads((out / "report.json").read_text())
    timings = json.loads(timings_path.read_text())
    stages = []
    for stage in report["stages"]:
        entry = {k: stage[k] for k in ("stage", "rows_in", "rows_out", "rejected", "seconds")}
        entry["pairs_per_min"] = stage["rows_in"] / max(stage["seconds"], 1e-9) * 60
        entry.update(timings.get(stage["stage"], {}))
        stages.append(entry)
    return {
        "wall_s": round(wall_s, 1),
        "peak_rss_mib": round(peak_rss_mib),
        "stages": stages,
        "outputs": report["outputs"],
        "train_sha256": sha256_file(out / "train.parquet"),
    }


def scaling_table(result: dict, model_pairs: int = 10_000_000) -> list[dict]:
    """Predicted seconds per stage for `model_pairs` pairs on N nodes like this one (2 CPUs).

    Model, per stage, from the measured run scaled linearly to `model_pairs`: the parallel work W
    (the local stage time minus its decide step) runs in waves of 2N shard tasks of one CPU each,
    so it takes ceil(S / 2N) * 2W / S for S shards of `FILE_PAIRS` rows; a global stage adds its
    decide step (on the driver, not parallel) and the transfer of its keys to the driver and of
    the decisions back at 10 Gbit/s; every stage adds the fixed overhead Ray showed on this
    machine (its stage time minus the local one, at least 0).
    """
    scale = model_pairs / result["num_pairs"]
    local, ray = result["local"]["stages"], result.get("ray", {}).get("stages")
    shards = max(1, math.ceil(model_pairs / FILE_PAIRS))
    rows = []
    for index, stage in enumerate(local):
        decide = stage.get("decide_s", 0.0) * scale
        work = max(stage["seconds"] * scale - decide, 0.0)
        overhead = max(ray[index]["seconds"] - stage["seconds"], 0.0) if ray else 0.0
        volume = (stage.get("keys_bytes", 0) + stage.get("decided_bytes", 0)) * scale
        row = {"stage": stage["stage"]}
        for nodes in NODES:
            waves = math.ceil(shards / (2 * nodes))
            shuffle = volume / NETWORK_BYTES_PER_S * (nodes - 1) / nodes
            row[nodes] = decide + overhead + shuffle + waves * 2 * work / shards
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10_000_000)
    parser.add_argument("--quick", action="store_true", help="200 k pairs")
    parser.add_argument("--executors", default="local,ray")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--timings", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.timings)
        return {}
    num_pairs = 200_000 if args.quick else args.pairs
    executors = args.executors.split(",")
    files = math.ceil(num_pairs / FILE_PAIRS)
    print(
        f"bench_scale: {num_pairs:,} synthetic pairs ({files} Parquet files of up to "
        f"{FILE_PAIRS:,}, about {num_pairs * 700 / 1e9:.1f} GB) through {', '.join(STAGES)}, "
        f"once per executor: {', '.join(executors)}; {estimate(num_pairs, executors)}",
        flush=True,
    )
    shutil.rmtree(WORKDIR, ignore_errors=True)

    started = time.perf_counter()
    inputs = write_inputs(WORKDIR / "inputs", num_pairs)
    generate_s = time.perf_counter() - started
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
            "python": platform.python_version(),
            **{p: version(p) for p in ("polars", "pyarrow", "ray")},
        },
        "num_pairs": num_pairs,
        "input_files": len(inputs),
        "input_gb": round(sum(p.stat().st_size for p in inputs) / 1e9, 2),
        "generate_s": round(generate_s, 1),
    }
    for executor in executors:
        print(f"running {executor} ...", flush=True)
        result[executor] = run_executor(inputs, executor)
        result[executor]["pairs_per_min"] = num_pairs / result[executor]["wall_s"] * 60
    if "local" in result and "ray" in result:
        result["ray_over_local"] = result["ray"]["wall_s"] / result["local"]["wall_s"]
        result["same_train_file"] = result["ray"]["train_sha256"] == result["local"]["train_sha256"]
    if "local" in result:
        result["scaling"] = scaling_table(result)
    shutil.rmtree(WORKDIR, ignore_errors=True)
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(_markdown(result))
    return result


def estimate(num_pairs: int, executors: list[str]) -> str:
    """How long the run should take: from the last result in `OUTPUT` (its wall per pair) when
    it had at least 1 M pairs (smaller runs are mostly start-up), else `SECONDS_PER_MILLION`."""
    rates, basis = dict(SECONDS_PER_MILLION), "rough idle-machine rates"
    last = json.loads(OUTPUT.read_text()) if OUTPUT.exists() else {}
    if last.get("num_pairs", 0) >= 1_000_000:
        millions = last["num_pairs"] / 1e6
        rates["generate"] = last["generate_s"] / millions
        rates.update({e: last[e]["wall_s"] / millions for e in executors if e in last})
        basis = f"scaled from the last run ({last['num_pairs']:,} pairs, {last['date']})"
    parts = {name: rates[name] * num_pairs / 1e6 for name in ("generate", *executors)}
    listing = ", ".join(f"{name} ~{_minutes(seconds)}" for name, seconds in parts.items())
    return f"estimate {_minutes(sum(parts.values()))} in all ({listing}; {basis})"


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _markdown(result: dict) -> str:
    machine = result["machine"]
    lines = [
        f"{result['date']}; {machine['platform']}, {machine['cpu_count']} CPUs, "
        f"{machine['processor']}; polars {machine['polars']}, ray {machine['ray']}; load average "
        f"at start {machine['load_average_at_start'][0]:.1f}",
        "",
        f"{result['num_pairs']:,} pairs in {result['input_files']} Parquet files "
        f"({result['input_gb']} GB).",
        "",
        "| executor | wall s | pairs/min | peak RSS MiB |",
        "|---|---|---|---|",
    ]
    executors = [e for e in ("local", "ray") if e in result]
    for executor in executors:
        run = result[executor]
        lines.append(
            f"| {executor} | {run['wall_s']:.0f} | {run['pairs_per_min']:,.0f} | "
            f"{run['peak_rss_mib']:,} |"
        )
    if "ray_over_local" in result:
        lines += [
            "",
            f"Ray / local wall: {result['ray_over_local']:.2f}; same train.parquet bytes: "
            f"{result['same_train_file']}.",
        ]
    header = " | ".join(f"{e} s | {e} pairs/min" for e in executors)
    lines += [
        "",
        f"| stage | rows in | rows out | {header} |",
        "|---" * (3 + 2 * len(executors)) + "|",
    ]
    for index, stage in enumerate(result[executors[0]]["stages"]):
        cells = " | ".join(
            f"{result[e]['stages'][index]['seconds']:.0f} | "
            f"{result[e]['stages'][index]['pairs_per_min']:,.0f}"
            for e in executors
        )
        lines.append(
            f"| {stage['stage']} | {stage['rows_in']:,} | {stage['rows_out']:,} | {cells} |"
        )
    if "scaling" in result:
        lines += [
            "",
            "| stage | " + " | ".join(f"{n} node{'s' if n > 1 else ''}" for n in NODES) + " |",
            "|---" * (1 + len(NODES)) + "|",
        ]
        for row in result["scaling"]:
            lines.append(f"| {row['stage']} | " + " | ".join(f"{row[n]:.0f}" for n in NODES) + " |")
        totals = [sum(row[n] for row in result["scaling"]) for n in NODES]
        lines.append("| **all** | " + " | ".join(f"**{t:.0f}**" for t in totals) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
