"""AI feedback on the default model: sampling and judging throughput, and judge-human agreement.

1. Sampling: our `sample_responses` path (length-sorted batches, KV cache, per-row seeded
   sampling) against a plain loop of `model.generate` calls (one prompt at a time, the peer most
   scripts use), same model, same prompts, same settings; generated tokens per second.
2. Judging: pairwise `llm_judge` comparisons (both orders) per second on CPU.
3. Agreement: on real HH-RLHF harmless-base pairs, how often the default-model judge prefers the
   human-chosen answer (both orders asked; an order disagreement is a tie), with its position
   prior calibrated as the judge stage does by default, and from the same answers uncalibrated.

Runs alternate ours / theirs and repeat; medians are reported. On a CUDA machine the sampling
and judging numbers are measured there too (and vLLM's when installed). Writes
`runs/bench/rlaif.json` and prints a Markdown table.

    python -m benchmarks.bench_rlaif                 # 16 prompts x 4 samples, 200 HH pairs
    python -m benchmarks.bench_rlaif --quick         # 8 prompts x 2, 40 HH pairs

Prompts and pairs are drawn (seeded) among conversations of at most 400 characters, like the
recipe's filter.
"""

import argparse
import json
import platform
import random
import statistics
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import torch

from orpo_pipeline import judges
from orpo_pipeline.formats import ConvertOptions, convert_files
from orpo_pipeline.formats.generate import Sampling, sample_responses, vllm_usable
from orpo_pipeline.models import load_model, load_tokenizer, resolve_model
from orpo_pipeline.stages.judge import SHIPPED_JUDGE_PROMPT

OUTPUT = Path("runs/bench/rlaif.json")
HH = Path("data/hh-rlhf-harmless-base/test.jsonl.gz")
JUDGE_PROMPT = SHIPPED_JUDGE_PROMPT
MAX_PROMPT_CHARS = 400
SAMPLING = Sampling(max_new_tokens=64, temperature=0.8, top_p=0.95, seed=0)


def hh_pairs(count: int, seed: int = 0) -> list[tuple[list[dict], str, str]]:
    """A seeded sample of (prompt, chosen, rejected) from the real HH-RLHF file, among pairs
    whose conversation is at most MAX_PROMPT_CHARS long (as in pipelines/rlaif.yaml)."""
    pairs = convert_files([HH], ConvertOptions(format="hh_rlhf")).pairs.sort("id")
    rows = [
        r
        for r in pairs.iter_rows(named=True)
        if sum(len(m["content"]) for m in r["prompt"]) <= MAX_PROMPT_CHARS
    ]
    picked = random.Random(seed).sample(rows, min(count, len(rows)))
    return [(r["prompt"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in picked]


def ours_sampling(
    model_path: str, prompts: list, samples: int, engine: str = "transformers"
) -> tuple[float, int]:
    """Seconds and generated tokens of `sample_responses` with a fresh cache."""
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        drawn = sample_responses(
            prompts,
            model_path,
            SAMPLING,
            num_samples=samples,
            batch_size=16,
            engine=engine,
            cache_dir=Path(cache),
        )
        seconds = time.perf_counter() - started
    return seconds, sum(s.num_tokens for row in drawn for s in row)


def generate_loop(model_path: str, prompts: list, samples: int) -> tuple[float, int]:
    """Seconds and generated tokens of one `model.generate` call per (prompt, sample)."""
    started = time.perf_counter()
    model, tokenizer = load_model(model_path), load_tokenizer(model_path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device)
    tokens = 0
    for prompt in prompts:
        ids = tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(device)
        for _ in range(samples):
            out = model.generate(
                **ids,
                max_new_tokens=SAMPLING.max_new_tokens,
                do_sample=True,
                temperature=SAMPLING.temperature,
                top_p=SAMPLING.top_p,
                pad_token_id=tokenizer.pad_token_id,
            )
            new = out[0, ids["input_ids"].shape[1] :].tolist()
            eos = tokenizer.eos_token_id
            tokens += new.index(eos) if eos in new else len(new)
    return time.perf_counter() - started, tokens


def judging(model_path: str, pairs: list) -> tuple[float, float, list, list]:
    """Seconds, position prior, and results of judging each (chosen, rejected) in both orders
    in-process as the judge stage does by default (position prior calibrated), then the results
    the same answers give uncalibrated."""
    template = JUDGE_PROMPT.read_text()
    labels = judges.LocalLabels(model_path)
    items = [(p, [c, r]) for p, c, r in pairs]
    answers = []

    def recorded(chats: list) -> list:
        out = labels(chats)
        answers.extend(out)
        return out

    started = time.perf_counter()
    prior = judges.position_prior(template, labels)
    results = judges.compare(template, items, judges.calibrated(recorded, prior))
    seconds = time.perf_counter() - started
    return seconds, prior, results, judges.compare(template, items, lambda _: answers)


def agreement(results: list) -> dict[str, float | int]:
    """Shares of pairs where the judge picks the human-chosen answer (index 0), the rejected
    one, or ties (the two orders disagree)."""
    outcomes = [comparisons[0] for comparisons, _ in results]
    agree = sum(c.winner == 0 for c in outcomes)
    disagree = sum(c.winner == 1 for c in outcomes)
    always_a = sum(c.verdict_ab == c.verdict_ba == "A" for c in outcomes)
    return {
        "pairs": len(outcomes),
        "agree": agree,
        "disagree": disagree,
        "ties": len(outcomes) - agree - disagree,
        "agreement": agree / len(outcomes),
        "agreement_when_decided": agree / max(agree + disagree, 1),
        "said_A_in_both_orders": always_a / len(outcomes),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--agreement-pairs", type=int, default=None)
    args = parser.parse_args(argv)
    model_path = resolve_model("default")
    num_prompts, samples = (8, 2) if args.quick else (16, 4)
    prompts = [p for p, _, _ in hh_pairs(num_prompts, seed=1)]

    ours, theirs = [], []
    for _ in range(1 if args.quick else args.repeats):  # alternate, report medians
        seconds, tokens = ours_sampling(model_path, prompts, samples)
        ours.append(tokens / seconds)
        seconds, tokens = generate_loop(model_path, prompts, samples)
        theirs.append(tokens / seconds)
    vllm_rate = None  # measured only on CUDA with vllm installed
    if vllm_usable():
        seconds, tokens = ours_sampling(model_path, prompts, samples, engine="vllm")
        vllm_rate = tokens / seconds
    pair_count = args.agreement_pairs or (40 if args.quick else 200)
    seconds, prior, results, raw = judging(model_path, hh_pairs(pair_count))
    report = {
        "machine": f"{platform.machine()} {platform.processor() or ''} "
        f"{torch.get_num_threads()} threads, {'cuda' if torch.cuda.is_available() else 'cpu'}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "versions": {name: version(name) for name in ("torch", "transformers")},
        "model": "SmolLM2-135M-Instruct (default), float32",
        "sampling": {
            "prompts": num_prompts,
            "samples_per_prompt": samples,
            "settings": SAMPLING.model_dump(),
            "ours_tokens_per_s": statistics.median(ours),
            "generate_loop_tokens_per_s": statistics.median(theirs),
            "ratio": statistics.median(ours) / statistics.median(theirs),
            "vllm_tokens_per_s": vllm_rate,
        },
        "judging": {
            "pairs": len(results),
            "seconds": seconds,
            "judged_pairs_per_s": len(results) / seconds,
            "forward_passes_per_pair": 2,
        },
        "position_prior": prior,
        "agreement_with_hh_labels": agreement(results),
        "agreement_uncalibrated": agreement(raw),
    }
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(report, indent=2) + "\n")
    s, j = report["sampling"], report["judging"]
    print(f"machine: {report['machine']}; {report['date']}")
    print("| measure | ours | peer | ratio |\n|---|---|---|---|")
    print(
        f"| sampling tokens/s ({num_prompts} prompts x {samples}) | "
        f"{s['ours_tokens_per_s']:.1f} | {s['generate_loop_tokens_per_s']:.1f} "
        f"(generate loop) | {s['ratio']:.2f}x |"
    )
    if s["vllm_tokens_per_s"] is not None:
        print(
            f"| sampling tokens/s, vLLM engine | {s['vllm_tokens_per_s']:.1f} | "
            f"{s['generate_loop_tokens_per_s']:.1f} | "
            f"{s['vllm_tokens_per_s'] / s['generate_loop_tokens_per_s']:.2f}x |"
        )
    print(f"| judged pairs/s (both orders) | {j['judged_pairs_per_s']:.2f} | | |")
    for name, key in (
        ("calibrated", "agreement_with_hh_labels"),
        ("uncalibrated", "agreement_uncalibrated"),
    ):
        a = report[key]
        print(
            f"| judge agrees with HH label, {name} ({a['pairs']} pairs) | "
            f"{100 * a['agreement']:.1f} % (wrong {a['disagree']}, ties {a['ties']}; "
            f"{100 * a['agreement_when_decided']:.1f} % when decided) | | |"
        )
    print(f"position prior (log-odds of 'A' with no content): {prior:.3f}")


if __name__ == "__main__":
    main()
