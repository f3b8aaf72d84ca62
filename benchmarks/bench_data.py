"""Data stages against the usual Python baselines, on synthetic pairs of realistic length.

1. Exact dedupe + filters: our `filter` and `dedupe` stages (as the runner calls them) against the
   same rules written with Hugging Face `datasets` (`Dataset.filter`, batched, in memory), once in
   one process and once with `num_proc=2`; the speed-up is over the faster of the two.
2. MinHash near-dedupe of prompts: our `near_dedupe` stage against `datasketch` (MinHash + LSH,
   query-then-insert, 5-word shingles, 14 bands x 8 rows, threshold 0.7).

Runs alternate ours / theirs and repeat; medians are reported. Writes `runs/bench/data.json` and
prints a Markdown table.

    python -m benchmarks.bench_data            # 1 M pairs, 100 k prompts for MinHash
    python -m benchmarks.bench_data --quick    # 50 k pairs, 10 k prompts
"""

import argparse
import json
import os
import platform
import re
import resource
import statistics
import time
import unicodedata
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import datasets
import numpy as np
import polars as pl

from orpo_pipeline.records import MESSAGES
from orpo_pipeline.stages.base import REASON, ROW
from orpo_pipeline.stages.dedupe import DedupeConfig, dedupe
from orpo_pipeline.stages.filter import FilterConfig, filter_rows
from orpo_pipeline.stages.near_dedupe import NearDedupeConfig, near_dedupe

OUTPUT = Path("runs/bench/data.json")
FILTER = FilterConfig(
    min_response_chars=20,
    max_response_chars=4000,
    max_prompt_chars=4000,
    max_length_ratio=3.0,
    drop_refusals="chosen",
    min_score_margin=0.5,
)
DEDUPE = DedupeConfig(scope="pair")
NEAR = NearDedupeConfig()


# ---------------------------------------------------------------------------------------------
# Synthetic data


def _sentences(rng: np.random.Generator, count: int) -> np.ndarray:
    """Random-word sentences; some end a paragraph or open a list, 1 in 10 has non-ASCII text."""
    letters = np.array(list("etaoinshrdlucmfwypvbgkjqxz"))
    weights = np.linspace(2, 0.2, len(letters))
    words = np.array(
        [
            "".join(rng.choice(letters, size=rng.integers(2, 10), p=weights / weights.sum()))
            for _ in range(8000)
        ]
    )
    endings = [".", ".", ".", "?", "!", ".\n\n", ":\n-"]
    return np.array(
        [
            " ".join(words[rng.integers(0, len(words), size=rng.integers(6, 18))]).capitalize()
            + (" – it’s a café" if rng.uniform() < 0.1 else "")
            + rng.choice(endings)
            for _ in range(count)
        ]
    )


def synthetic_pairs(num_pairs: int, *, seed: int = 0) -> pl.DataFrame:
    """Canonical pairs: prompts ~500 chars, answers 300-800 chars, with duplicates and rejects.

    5 % exact copies of earlier pairs, 3 % earlier prompts with new answers, 2 % earlier prompts
    with their last 30 characters changed (near-duplicates), and ~1 % each of blank, identical,
    too-short, refusal and overlong-ratio pairs; score margins are sometimes below 0.5.
    """
    rng = np.random.default_rng(seed)
    pool = pl.Series(_sentences(rng, 20_000))

    def texts(num_sentences: int, low: int, high: int) -> pl.Series:
        parts = [pool.gather(rng.integers(0, len(pool), num_pairs)) for _ in range(num_sentences)]
        joined = pl.select(pl.concat_str(parts, separator=" ")).to_series()
        return joined.str.slice(0, pl.Series(rng.integers(low, high, num_pairs)))

    frame = pl.DataFrame(
        {
            "p": texts(8, 400, 600),
            "c": texts(12, 300, 800),
            "r": texts(12, 300, 800),
            "score_chosen": rng.uniform(5, 10, num_pairs),
            "margin": rng.uniform(-0.5, 4, num_pairs),
        }
    )
    row = np.arange(num_pairs)
    earlier = (row * rng.uniform(0, 1, num_pairs)).astype(np.int64)
    kind = rng.uniform(0, 1, num_pairs)
    frame = frame.with_columns(
        earlier=pl.Series(earlier), kind=pl.Series(kind), tail=texts(1, 30, 31)
    ).with_columns(
        p=pl.when(pl.col("kind") < 0.10).then(pl.col("p").gather(pl.col("earlier"))).otherwise("p"),
        c=pl.when(pl.col("kind") < 0.05).then(pl.col("c").gather(pl.col("earlier"))).otherwise("c"),
        r=pl.when(pl.col("kind") < 0.05).then(pl.col("r").gather(pl.col("earlier"))).otherwise("r"),
    )
    frame = frame.with_columns(
        p=pl.when(pl.col("kind").is_between(0.08, 0.10))
        .then(pl.col("p").str.slice(0, pl.col("p").str.len_chars() - 30) + pl.col("tail"))
        .otherwise("p"),
        c=pl.when(pl.col("kind").is_between(0.10, 0.11))
        .then(pl.lit("  "))
        .when(pl.col("kind").is_between(0.11, 0.12))
        .then(pl.col("r"))
        .when(pl.col("kind").is_between(0.12, 0.13))
        .then(pl.lit("Sure."))
        .when(pl.col("kind").is_between(0.13, 0.14))
        .then(pl.lit("As an AI language model, I cannot do that. ") + pl.col("c"))
        .when(pl.col("kind").is_between(0.14, 0.15))
        .then(pl.col("c") + pl.col("c") + pl.col("c") + pl.col("c"))
        .otherwise("c"),
    )

    def messages(role: str, column: str) -> pl.Expr:
        return pl.concat_list(
            pl.struct(pl.lit(role).alias("role"), pl.col(column).alias("content"))
        )

    return frame.select(
        pl.int_range(pl.len()).cast(pl.String).alias("id"),
        messages("user", "p").cast(MESSAGES).alias("prompt"),
        messages("assistant", "c").cast(MESSAGES).alias("chosen"),
        messages("assistant", "r").cast(MESSAGES).alias("rejected"),
        pl.lit("synthetic").alias("source"),
        "score_chosen",
        (pl.col("score_chosen") - pl.col("margin")).alias("score_rejected"),
    ).with_row_index(ROW)


# ---------------------------------------------------------------------------------------------
# Exact dedupe + filters


def ours_exact(frame: pl.DataFrame) -> int:
    """Filter then dedupe, collecting and splitting after each stage as the runner does."""
    tagged = filter_rows(frame.lazy(), FILTER).collect()
    kept = tagged.filter(pl.col(REASON).is_null()).drop(REASON)
    tagged = dedupe(kept.lazy(), DEDUPE).collect()
    return tagged.filter(pl.col(REASON).is_null()).height


def _normalized(text: str) -> str:
    # `str.split()` splits on the same Unicode whitespace as `re`'s `\s`, and is faster.
    return " ".join(unicodedata.normalize("NFKC", text).split())


def _messages_text(messages: list[dict]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _keep(batch: dict[str, list]) -> list[bool]:
    keep = []
    phrases = [p.lower() for p in FILTER.refusal_phrases]
    for prompt, chosen, rejected, score_c, score_r in zip(
        batch["prompt"],
        batch["chosen"],
        batch["rejected"],
        batch["score_chosen"],
        batch["score_rejected"],
        strict=True,
    ):
        c, r = chosen[0]["content"], rejected[0]["content"]
        blank = any(not m["content"].strip() for m in (*prompt, *chosen, *rejected))
        chosen_lower = c.replace("’", "'").lower()
        keep.append(
            not blank
            and _normalized(c) != _normalized(r)
            and min(len(c), len(r)) >= FILTER.min_response_chars
            and max(len(c), len(r)) <= FILTER.max_response_chars
            and len(_messages_text(prompt)) <= FILTER.max_prompt_chars
            and len(c) / len(r) <= FILTER.max_length_ratio
            and not any(p in chosen_lower for p in phrases)
            and score_c - score_r >= FILTER.min_score_margin
        )
    return keep


def datasets_exact(dataset: datasets.Dataset, num_proc: int | None = None) -> int:
    """The same rules with `datasets`: a batched filter (in `num_proc` processes), then one
    sequential pass keeping the first row of each pair key (Python's `hash` of the normalised
    texts, an in-memory key like ours)."""
    kept = dataset.filter(_keep, batched=True, keep_in_memory=True, num_proc=num_proc)
    seen: set[int] = set()

    def first_seen(batch: dict[str, list]) -> list[bool]:
        flags = []
        for texts in zip(batch["prompt"], batch["chosen"], batch["rejected"], strict=True):
            key = hash(tuple(_normalized(_messages_text(m)) for m in texts))
            flags.append(key not in seen)
            seen.add(key)
        return flags

    return len(kept.filter(first_seen, batched=True, keep_in_memory=True))


# ---------------------------------------------------------------------------------------------
# MinHash near-dedupe


def ours_near(frame: pl.DataFrame) -> int:
    tagged = near_dedupe(frame.lazy(), NEAR).collect()
    return int(tagged[REASON].is_not_null().sum())


def near_agreement(frame: pl.DataFrame) -> dict:
    """Rows rejected with the default 8-bit signatures against full 32-bit ones (the exact
    MinHash estimate): precision and recall of the 8-bit rejects, and whether all are equal."""
    rejected = {}
    for bits in (8, 32):
        config = NEAR.model_copy(update={"signature_bits": bits})
        tagged = near_dedupe(frame.lazy(), config).collect()
        rejected[bits] = set(tagged.filter(pl.col(REASON).is_not_null())[ROW].to_list())
    both = len(rejected[8] & rejected[32])
    return {
        "rejected_8_bit": len(rejected[8]),
        "rejected_32_bit": len(rejected[32]),
        "precision": both / max(len(rejected[8]), 1),
        "recall": both / max(len(rejected[32]), 1),
        "same_kept_rows": rejected[8] == rejected[32],
    }


def datasketch_near(prompts: list[str]) -> int:
    """datasketch's usual dedupe loop: sign, query the LSH, insert if no close match."""
    from datasketch import MinHash, MinHashLSH

    num_perm = NEAR.bands * NEAR.rows_per_band
    lsh = MinHashLSH(
        threshold=NEAR.threshold, num_perm=num_perm, params=(NEAR.bands, NEAR.rows_per_band)
    )
    kept: dict[int, MinHash] = {}
    duplicates = 0
    for index, prompt in enumerate(prompts):
        text = unicodedata.normalize("NFKC", prompt).lower()
        words = re.sub(r"[^\w\s]|_", " ", text).split()
        size = NEAR.ngram_size
        shingles = {" ".join(words[i : i + size]) for i in range(max(len(words) - size + 1, 1))}
        signature = MinHash(num_perm=num_perm)
        signature.update_batch([s.encode() for s in shingles])
        candidates = lsh.query(signature)
        if any(kept[c].jaccard(signature) >= NEAR.threshold for c in candidates):
            duplicates += 1
        else:
            lsh.insert(index, signature)
            kept[index] = signature
    return duplicates


# ---------------------------------------------------------------------------------------------


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _alternate(
    contenders: dict[str, Callable[[], int]], repeats: int
) -> dict[str, dict[str, object]]:
    """Run each contender in turn, `repeats` times; the process's peak RSS is noted after each
    contender's first run (the first contender's is its own, data included)."""
    runs: dict[str, list[float]] = {name: [] for name in contenders}
    results: dict[str, int] = {}
    peak_rss: dict[str, float] = {}
    for _ in range(repeats):
        for name, run in contenders.items():
            started = time.perf_counter()
            results[name] = run()
            runs[name].append(time.perf_counter() - started)
            peak_rss.setdefault(name, _peak_rss_mib())
    return {
        name: {
            "seconds": times,
            "median_s": statistics.median(times),
            "result": results[name],
            "peak_rss_mib_after_first_run": peak_rss[name],
        }
        for name, times in runs.items()
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 k pairs, 10 k MinHash prompts")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    datasets.disable_progress_bars()
    num_pairs, num_near = (50_000, 10_000) if args.quick else (1_000_000, 100_000)

    started = time.perf_counter()
    frame = synthetic_pairs(num_pairs)
    generate_s = time.perf_counter() - started
    rss_after_data = _peak_rss_mib()
    ours_exact(frame)  # warm-up, before `datasets` holds its copy of the data
    rss_after_ours = _peak_rss_mib()
    dataset = datasets.Dataset.from_polars(frame.drop(ROW))

    exact = _alternate(
        {
            "orpo_pipeline": lambda: ours_exact(frame),
            "datasets": lambda: datasets_exact(dataset),
            "datasets (num_proc=2)": lambda: datasets_exact(dataset, num_proc=2),
        },
        args.repeats,
    )
    rss_after_exact = _peak_rss_mib()

    near_frame = frame.head(num_near).select(ROW, "id", "prompt")
    prompts = near_frame["prompt"].list.first().struct.field("content").to_list()
    near = _alternate(
        {
            "orpo_pipeline": lambda: ours_near(near_frame),
            "datasketch": lambda: datasketch_near(prompts),
        },
        args.repeats,
    )
    started = time.perf_counter()
    near_full = ours_near(frame)
    near_full_s = time.perf_counter() - started
    agreement = near_agreement(frame)

    for entry in exact.values():
        entry["pairs_per_min"] = num_pairs / entry["median_s"] * 60
    for entry in near.values():
        entry["prompts_per_min"] = num_near / entry["median_s"] * 60
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
            "python": platform.python_version(),
            **{p: version(p) for p in ("polars", "numpy", "datasets", "datasketch")},
        },
        "num_pairs": num_pairs,
        "generate_s": round(generate_s, 2),
        "exact_dedupe_and_filters": {
            **exact,
            "speedup": min(exact[n]["median_s"] for n in exact if n.startswith("datasets"))
            / exact["orpo_pipeline"]["median_s"],
            "filter": FILTER.model_dump(exclude={"refusal_phrases"}),
            "dedupe": DEDUPE.model_dump(),
        },
        "near_dedupe": {
            **near,
            "num_prompts": num_near,
            "speedup": near["datasketch"]["median_s"] / near["orpo_pipeline"]["median_s"],
            "orpo_pipeline_all_pairs": {
                "prompts": num_pairs,
                "seconds": near_full_s,
                "prompts_per_min": num_pairs / near_full_s * 60,
                "result": near_full,
            },
            "config": NEAR.model_dump(),
            "bbit_agreement": agreement,
        },
        "peak_rss_mib": {
            "after_data": rss_after_data,
            "after_ours_exact": rss_after_ours,
            "after_exact": rss_after_exact,
            "end": _peak_rss_mib(),
        },
    }
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(result, indent=2) + "\n")
    print(_markdown(result))
    return result


def _markdown(result: dict) -> str:
    machine = result["machine"]
    exact, near = result["exact_dedupe_and_filters"], result["near_dedupe"]
    full = near["orpo_pipeline_all_pairs"]
    lines = [
        f"Machine: {machine['platform']}, {machine['cpu_count']} CPUs, {machine['processor']}; "
        f"polars {machine['polars']}, datasets {machine['datasets']}, "
        f"datasketch {machine['datasketch']}; load average at start "
        f"{machine['load_average_at_start'][0]:.1f}",
        "",
        "| benchmark | rows | implementation | median s | rows/min | kept or found |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in exact.items():
        if isinstance(entry, dict) and "median_s" in entry:
            lines.append(
                f"| exact dedupe + filters | {result['num_pairs']:,} | {name} | "
                f"{entry['median_s']:.1f} | {entry['pairs_per_min']:,.0f} | {entry['result']:,} |"
            )
    for name, entry in near.items():
        if isinstance(entry, dict) and "median_s" in entry:
            lines.append(
                f"| MinHash near-dedupe | {near['num_prompts']:,} | {name} | "
                f"{entry['median_s']:.1f} | {entry['prompts_per_min']:,.0f} | {entry['result']:,} |"
            )
    lines.append(
        f"| MinHash near-dedupe | {full['prompts']:,} | orpo_pipeline | {full['seconds']:.1f} | "
        f"{full['prompts_per_min']:,.0f} | {full['result']:,} |"
    )
    agreement = near["bbit_agreement"]
    rss = result["peak_rss_mib"]
    lines += [
        "",
        f"8-bit against 32-bit MinHash values on {full['prompts']:,} prompts: "
        f"{agreement['rejected_8_bit']:,} against {agreement['rejected_32_bit']:,} rejected, "
        f"precision {agreement['precision']:.4f}, recall {agreement['recall']:.4f}, "
        f"same kept rows: {agreement['same_kept_rows']}.",
        "",
        f"Speed-up: exact dedupe + filters {exact['speedup']:.1f}x over the faster datasets run; "
        f"MinHash {near['speedup']:.1f}x over datasketch.",
        f"Peak RSS: {rss['after_data']:,.0f} MiB after generating data, "
        f"{rss['after_ours_exact']:,.0f} MiB after our exact dedupe + filters, "
        f"{rss['after_exact']:,.0f} MiB after the exact benchmark (datasets too), "
        f"{rss['end']:,.0f} MiB at the end.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
