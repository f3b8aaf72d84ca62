"""Scale: 10 M synthetic pairs of realistic length through a recipe, with peak RSS and wall time.

Writes the pairs as Parquet files in the `trl_preference` layout (200 k pairs a file, from
`bench_data.synthetic_pairs`, one seed per file), then runs `orpo-pipeline data` on them in a
child process: convert, validate, exact dedupe, filters (as in `bench_data`) and a split, with
`cache: false`. Peak RSS is the child's (`RUSAGE_CHILDREN`), so data generation is not counted.
Writes `runs/bench/scale.json` and prints a Markdown table; the generated files are removed.

    python -m benchmarks.bench_scale                    # 10 M pairs (about 7 GB of Parquet)
    python -m benchmarks.bench_scale --pairs 1000000    # 1 M
"""

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import yaml

from benchmarks.bench_data import FILTER, synthetic_pairs
from orpo_pipeline.io import sha256_file
from orpo_pipeline.stages.base import ROW

OUTPUT = Path("runs/bench/scale.json")
WORKDIR = Path("runs/bench/scale")
FILE_PAIRS = 200_000


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


def recipe(inputs: list[Path], output_dir: Path) -> dict:
    """Convert, validate, exact dedupe, the `bench_data` filters, split; no stage cache."""
    return {
        "name": "scale",
        "source": {"inputs": [str(p) for p in inputs], "format": "trl_preference"},
        "stages": [
            {"stage": "validate"},
            {"stage": "dedupe", "scope": "pair"},
            FILTER.model_dump(mode="json", exclude={"refusal_phrases"}),
            {"stage": "split", "eval_fraction": 0.01},
        ],
        "output_dir": str(output_dir),
        "cache": False,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10_000_000)
    parser.add_argument("--quick", action="store_true", help="200 k pairs")
    args = parser.parse_args(argv)
    num_pairs = 200_000 if args.quick else args.pairs
    shutil.rmtree(WORKDIR, ignore_errors=True)

    started = time.perf_counter()
    inputs = write_inputs(WORKDIR / "inputs", num_pairs)
    generate_s = time.perf_counter() - started
    input_bytes = sum(p.stat().st_size for p in inputs)
    recipe_path = WORKDIR / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe(inputs, WORKDIR / "out"), sort_keys=False))

    env = {**os.environ, "ORPO_PIPELINE_CACHE": str(WORKDIR / "cache")}
    command = [sys.executable, "-m", "orpo_pipeline", "data", str(recipe_path)]
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    wall_s = time.perf_counter() - started
    peak_rss_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    report = json.loads((WORKDIR / "out" / "report.json").read_text())
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            **{p: version(p) for p in ("polars", "pyarrow")},
        },
        "num_pairs": num_pairs,
        "input_files": len(inputs),
        "input_gb": round(input_bytes / 1e9, 2),
        "generate_s": round(generate_s, 1),
        "wall_s": round(wall_s, 1),
        "pairs_per_min": num_pairs / wall_s * 60,
        "peak_rss_mib": round(peak_rss_mib),
        "stages": [
            {k: s[k] for k in ("stage", "rows_in", "rows_out", "rejected", "seconds")}
            for s in report["stages"]
        ],
        "outputs": report["outputs"],
        "train_sha256": sha256_file(WORKDIR / "out" / "train.parquet"),
    }
    shutil.rmtree(WORKDIR, ignore_errors=True)
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(result, indent=2) + "\n")
    print(_markdown(result))
    return result


def _markdown(result: dict) -> str:
    machine = result["machine"]
    lines = [
        f"Machine: {machine['platform']}, {machine['cpu_count']} CPUs, {machine['processor']}; "
        f"polars {machine['polars']}",
        "",
        f"{result['num_pairs']:,} pairs in {result['input_files']} Parquet files "
        f"({result['input_gb']} GB): {result['wall_s']:.0f} s wall "
        f"({result['pairs_per_min']:,.0f} pairs/min), peak RSS {result['peak_rss_mib']:,} MiB.",
        "",
        "| stage | rows in | rows out | seconds |",
        "|---|---|---|---|",
        *(
            f"| {s['stage']} | {s['rows_in']:,} | {s['rows_out']:,} | {s['seconds']:.0f} |"
            for s in result["stages"]
        ),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
