"""Conversion throughput: the vectorised path against the per-row converter, rows per second.

Inputs (written to a temporary folder, removed at the end):
- `hh_rlhf` JSONL: the repository's HH-RLHF harmless-base test file, repeated to `--rows`;
- `trl_preference` Parquet: `bench_data.synthetic_pairs` as conversational message lists;
- `trl_preference` JSONL: the same pairs with string prompt, chosen and rejected;
- `ultrafeedback` JSONL and Parquet: `synthetic_ultrafeedback`, rows shaped like
  OpenBMB/UltraFeedback (default ranked options: overall score, one random lower answer), a
  quarter as many rows: each is ~12 KB, eight times an HH row.
- `alpaca` JSONL: LLaMA-Factory's `alpaca_en_demo.json` (vendored in tests/data), repeated to
  `--rows` with a row number appended to each instruction (SFT, `negatives='other_prompt'`);
- `sharegpt` JSONL: FastChat's `dummy_conversation.json`, repeated the same way (first turn).

Each input goes through `convert_files` (vectorised where it can) and through the per-row
converter (the vectorised path switched off) on the first `--per-row-rows` rows; the two
alternate, `--repeats` times, and the medians are reported with the machine's load average.
Writes `runs/bench/convert.json` and prints a Markdown table.

    python -m benchmarks.bench_convert               # 200 k rows a file
    python -m benchmarks.bench_convert --quick       # 50 k rows
"""

import argparse
import gzip
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from unittest import mock

import numpy as np
import polars as pl

from benchmarks.bench_data import _sentences, synthetic_pairs
from orpo_pipeline.formats import ConvertOptions, convert_files, vectorized, vectorized_sft
from orpo_pipeline.formats.ranked import UF_ASPECTS
from orpo_pipeline.stages.base import ROW

OUTPUT = Path("runs/bench/convert.json")
HH_FILE = Path("data/hh-rlhf-harmless-base/test.jsonl.gz")
ALPACA_FILE = Path("tests/data/llamafactory-demo-data/alpaca_en_demo.json")
SHAREGPT_FILE = Path("tests/data/fastchat-dummy-sharegpt/dummy_conversation.json")


def write_inputs(directory: Path, rows: int) -> dict[str, tuple[str, Path]]:
    """label -> (format, path) of the three inputs, `rows` rows each."""
    lines = gzip.decompress(HH_FILE.read_bytes()).splitlines(keepends=True)
    hh = directory / "hh.jsonl"
    hh.write_bytes(b"".join(lines[i % len(lines)] for i in range(rows)))
    pairs = synthetic_pairs(rows, seed=1).drop(ROW, "id", "source")
    trl = directory / "trl.parquet"
    pairs.write_parquet(trl)
    strings = pairs.select(
        pl.col("prompt").list.first().struct.field("content").alias("prompt"),
        pl.col("chosen").list.first().struct.field("content").alias("chosen"),
        pl.col("rejected").list.first().struct.field("content").alias("rejected"),
        "score_chosen",
        "score_rejected",
    )
    trl_jsonl = directory / "trl.jsonl"
    strings.write_ndjson(trl_jsonl)
    return {
        "hh_rlhf JSONL": ("hh_rlhf", hh),
        "trl_preference Parquet (messages)": ("trl_preference", trl),
        "trl_preference JSONL (strings)": ("trl_preference", trl_jsonl),
        "alpaca JSONL (SFT)": ("alpaca", _sft_jsonl(directory, ALPACA_FILE, rows)),
        "sharegpt JSONL (SFT)": ("sharegpt", _sft_jsonl(directory, SHAREGPT_FILE, rows)),
    }


def synthetic_ultrafeedback(rows: int, *, seed: int = 2) -> pl.DataFrame:
    """Rows shaped like OpenBMB/UltraFeedback: `source`, an instruction of ~300 characters,
    `models`, and 4 completions, each with `model`, `principle`, `custom_system_prompt`, a
    response of ~1,000 characters, a critique, `overall_score` (1-10 in halves) and
    `fine-grained_score`, and annotations on the 4 aspects: `Rating` '1'-'5' ('N/A' 2 %) with a
    rationale (truthfulness and helpfulness also `Type` and `Rationale For Rating`). 1 % of
    responses repeat another of the row; ties occur as in the real data."""
    rng = np.random.default_rng(seed)
    pool = pl.Series(_sentences(rng, 20_000))

    def text(sentences: int, length: int) -> pl.Expr:
        parts = [pool.gather(rng.integers(0, len(pool), rows)) for _ in range(sentences)]
        return pl.concat_str([pl.lit(part) for part in parts], separator=" ").str.slice(0, length)

    def rating() -> pl.Expr:
        values = rng.integers(1, 6, rows).astype(str)
        return pl.lit(pl.Series(np.where(rng.uniform(0, 1, rows) < 0.02, "N/A", values)))

    def annotation(name: str) -> pl.Expr:
        fields = {"Rating": rating(), "Rationale": text(3, 200)}
        if name in ("truthfulness", "helpfulness"):
            fields |= {"Rationale For Rating": text(2, 150), "Type": pl.lit(["1", "3"])}
        return pl.struct(**fields)

    def completion(index: int) -> pl.Expr:
        response = text(16, 1000)
        if index == 3:  # 1 % repeat the first response
            repeat = pl.lit(pl.Series(rng.uniform(0, 1, rows) < 0.01))
            response = pl.when(repeat).then(pl.col("_first")).otherwise(response)
        return pl.struct(
            model=pl.lit(f"model-{index}"),
            principle=pl.lit("helpfulness"),
            custom_system_prompt=text(2, 120),
            response=response,
            critique=text(5, 400),
            overall_score=pl.lit(pl.Series(rng.integers(2, 21, rows) / 2)),
            **{"fine-grained_score": pl.lit(pl.Series(rng.integers(4, 21, rows) / 4))},
            annotations=pl.struct(**{name: annotation(name) for name in UF_ASPECTS}),
        )

    first = pl.DataFrame({"_first": pl.select(text(16, 1000)).to_series()})
    return first.select(
        source=pl.lit("evol_instruct"),
        instruction=text(5, 300),
        models=pl.lit([f"model-{index}" for index in range(4)]),
        completions=pl.concat_list([completion(index) for index in range(4)]),
        correct_answers=pl.lit(["None"]),
    )


def write_ultrafeedback(directory: Path, rows: int) -> dict[str, tuple[str, Path]]:
    """label -> (format, path) of the UltraFeedback inputs, JSONL and Parquet, `rows` each."""
    frame = synthetic_ultrafeedback(max(rows, 1))
    jsonl, parquet = directory / "uf.jsonl", directory / "uf.parquet"
    frame.write_ndjson(jsonl)
    frame.write_parquet(parquet)
    return {
        "ultrafeedback JSONL": ("ultrafeedback", jsonl),
        "ultrafeedback Parquet": ("ultrafeedback", parquet),
    }


def _sft_jsonl(directory: Path, source: Path, rows: int) -> Path:
    """`source`'s records repeated to `rows` lines, each prompt made unique by its number."""
    records = json.loads(source.read_text(encoding="utf-8"))
    path = directory / f"{source.stem}.jsonl"
    with path.open("w", encoding="utf-8") as out:
        for i in range(rows):
            record = json.loads(json.dumps(records[i % len(records)]))
            if "instruction" in record:
                record["instruction"] += f" (#{i})"
            else:
                record["conversations"][0]["value"] += f" (#{i})"
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def _head(path: Path, rows: int, directory: Path) -> Path:
    """The first `rows` rows of `path` as a file of the same kind."""
    head = directory / f"head-{path.name}"
    if path.suffix == ".parquet":
        pl.scan_parquet(path).head(rows).sink_parquet(head)
    else:
        with path.open("rb") as source:
            head.write_bytes(b"".join(line for _, line in zip(range(rows), source, strict=False)))
    return head


def _timed(run: Callable[[], int]) -> tuple[float, float, int]:
    wall, cpu = time.perf_counter(), time.process_time()
    rows = run()
    return time.perf_counter() - wall, time.process_time() - cpu, rows


def _convert(path: Path, name: str, *, vectorised: bool) -> Callable[[], int]:
    def run() -> int:
        options = ConvertOptions(format=name)
        if vectorised:
            return convert_files([path], options).rows_in
        with (
            mock.patch.object(vectorized, "fast_pairs", return_value=None),
            mock.patch.object(vectorized_sft, "fast_targets", return_value=None),
        ):
            return convert_files([path], options).rows_in

    return run


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--per-row-rows", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="50 k rows, 10 k per-row")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rows = 50_000 if args.quick else args.rows
    per_row_rows = min(rows, 10_000 if args.quick else args.per_row_rows)
    print(
        f"bench_convert: 5 inputs of {rows:,} rows and 2 UltraFeedback ones of {rows // 4:,}, "
        f"vectorised and per-row ({per_row_rows:,} rows), {args.repeats} repeats; about "
        f"{args.repeats * 50 * rows // 200_000 + 60} s",
        flush=True,
    )
    result: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
            "polars": version("polars"),
        },
        "rows": rows,
        "per_row_rows": per_row_rows,
        "inputs": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        inputs = write_inputs(directory, rows)
        inputs |= write_ultrafeedback(directory, rows // 4)
        for label, (name, path) in inputs.items():
            head = _head(path, per_row_rows, directory)
            runs: dict[str, list[tuple[float, float, int]]] = {"vectorised": [], "per_row": []}
            for _ in range(args.repeats):
                runs["vectorised"].append(_timed(_convert(path, name, vectorised=True)))
                runs["per_row"].append(_timed(_convert(head, name, vectorised=False)))
            figures = {}
            for contender, timings in runs.items():
                wall = statistics.median(t[0] for t in timings)
                cpu = statistics.median(t[1] for t in timings)
                count = timings[0][2]
                figures[contender] = {
                    "rows": count,
                    "wall_s": round(wall, 3),
                    "cpu_s": round(cpu, 3),
                    "rows_per_s": round(count / wall),
                    "rows_per_cpu_s": round(count / cpu),
                }
            figures["speedup"] = round(
                figures["vectorised"]["rows_per_s"] / figures["per_row"]["rows_per_s"], 1
            )
            result["inputs"][label] = figures
            print(f"  {label}: {figures}", flush=True)
    result["machine"]["load_average_at_end"] = os.getloadavg()
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(result, indent=2) + "\n")
    print(_markdown(result))
    return result


def _markdown(result: dict) -> str:
    machine = result["machine"]
    load = ", ".join(f"{x:.1f}" for x in machine["load_average_at_start"])
    lines = [
        f"{result['date']}; {machine['platform']}, {machine['cpu_count']} CPUs; polars "
        f"{machine['polars']}; load average at start {load}",
        "",
        "| input | vectorised rows/s (wall) | rows/CPU-s | per-row rows/s | rows/CPU-s | speedup |",
        "|---|---|---|---|---|---|",
    ]
    for label, figures in result["inputs"].items():
        fast, slow = figures["vectorised"], figures["per_row"]
        lines.append(
            f"| {label} | {fast['rows_per_s']:,} | {fast['rows_per_cpu_s']:,} | "
            f"{slow['rows_per_s']:,} | {slow['rows_per_cpu_s']:,} | {figures['speedup']}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
