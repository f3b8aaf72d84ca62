"""Evaluate a trained model against a baseline (its start model or another run).

Both models answer the same prompts with the same sampling settings, through the AI-feedback
sample cache, so a baseline's answers are generated once and reused by every later run. A
pairwise judge compares the two answers to each prompt in both orders (a disagreement between
the orders is a tie); the win rate gets a bootstrap interval over prompts and a length-controlled
twin. IFEval scores both models' answers with lm-eval's instruction checkers.
"""

import json
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from orpo_pipeline import judges
from orpo_pipeline.errors import DataError
from orpo_pipeline.evaluation import ifeval, stats
from orpo_pipeline.evaluation.config import Benchmark, EvalConfig
from orpo_pipeline.formats.generate import Sample, model_sha256, prompt_key, sample_responses
from orpo_pipeline.formats.rows import MessageDict
from orpo_pipeline.io import write_text
from orpo_pipeline.stages.reference import eval_set_path

HELDOUT = "heldout"


class Contestant(NamedTuple):
    """A model in the comparison: how the user named it, its files and their digest."""

    label: str
    model: str
    sha256: str
    parameters: int | None


def contestant(label: str, model: str) -> Contestant:
    """Describe a model by its files (sha256, parameter count when they are local)."""
    from orpo_pipeline.models import resolve_model

    path = resolve_model(model)
    return Contestant(label, path, model_sha256(path), parameter_count(path))


def parameter_count(model: str) -> int | None:
    """Parameters stored in a local checkpoint's safetensors files; None for anything else."""
    from safetensors import safe_open

    weights = sorted(Path(model).glob("*.safetensors")) if Path(model).is_dir() else []
    total = 0
    for path in weights:
        with safe_open(path, "np") as f:
            total += sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())  # noqa: SIM118
    return total or None


def fits(prompt: list[MessageDict], max_chars: int | None) -> bool:
    """Whether a prompt's turns hold at most `max_chars` characters in all (None: any)."""
    return max_chars is None or sum(len(m["content"]) for m in prompt) <= max_chars


def heldout_prompts(
    eval_pairs: Path, count: int, *, max_chars: int | None = None
) -> list[list[MessageDict]]:
    """The first `count` distinct prompts (within `max_chars`) of a run's held-out file: pairs,
    SFT records or labelled rows, whatever its objective trained on."""
    from orpo_pipeline.io import scan_frame
    from orpo_pipeline.train.data import read_examples

    labelled = "label" in scan_frame(eval_pairs).collect_schema()
    seen: dict[str, list[MessageDict]] = {}
    for row in read_examples(eval_pairs, "labelled" if labelled else "completions"):
        if fits(row["prompt"], max_chars):
            seen.setdefault(prompt_key(row["prompt"]), row["prompt"])
        if len(seen) == count:
            break
    return list(seen.values())


def benchmark_prompts(
    name: Benchmark, count: int, *, max_chars: int | None = None
) -> list[list[MessageDict]]:
    """`count` prompts spread over a shipped benchmark set (MT-bench: first turns only), among
    those within `max_chars`."""
    lines = eval_set_path(name).read_text(encoding="utf-8").split("\n")
    texts = [json.loads(line)["prompt"] for line in lines if line]
    if name == "mt_bench":  # turn 1 and turn 2 of each question alternate
        texts = texts[::2]
    prompts = [[{"role": "user", "content": t}] for t in texts]
    prompts = [p for p in prompts if fits(p, max_chars)]
    return [prompts[i] for i in ifeval.spread(len(prompts), count)]


def eval_prompts(
    config: EvalConfig, eval_pairs: Path | None
) -> list[tuple[str, list[MessageDict]]]:
    """(set name, prompt) of every judged prompt: held-out first, then the benchmarks."""
    prompts = []
    if eval_pairs is not None and config.num_heldout_prompts:
        found = heldout_prompts(
            eval_pairs, config.num_heldout_prompts, max_chars=config.max_prompt_chars
        )
        prompts += [(HELDOUT, p) for p in found]
    for name, count in config.benchmarks.items():
        found = benchmark_prompts(name, count, max_chars=config.max_prompt_chars)
        prompts += [(name, p) for p in found]
    return prompts


def outcome_of(comparison: judges.Comparison) -> float:
    """The candidate's (response 0's) outcome: 1 win, 0 loss, 0.5 tie."""
    return 0.5 if comparison.winner is None else 1.0 if comparison.winner == 0 else 0.0


def pairwise_verdicts(
    template: str,
    prompts: list[list[MessageDict]],
    candidate: list[str],
    baseline: list[str],
    ask: judges.LabelLogprobs,
) -> list[dict[str, Any]]:
    """Ask an LLM judge about every (candidate, baseline) answer pair in both orders."""
    items = [(p, [c, b]) for p, c, b in zip(prompts, candidate, baseline, strict=True)]
    verdicts = []
    for (comparison,), _ in judges.compare(template, items, ask):
        verdicts.append(
            {
                "outcome": outcome_of(comparison),
                "verdict_candidate_first": comparison.verdict_ab,
                "verdict_baseline_first": comparison.verdict_ba,
                "p_candidate": (comparison.p_first_ab + comparison.p_first_ba) / 2,
                "reason": comparison.reason,
            }
        )
    return verdicts


def scored_verdicts(
    prompts: list[list[MessageDict]],
    candidate: list[str],
    baseline: list[str],
    score: judges.Scorer,
) -> list[dict[str, Any]]:
    """Score both answers with a reward model; the higher score wins, equal scores tie."""
    values = score([*zip(prompts, candidate, strict=True), *zip(prompts, baseline, strict=True)])
    verdicts = []
    for mine, theirs in zip(values[: len(prompts)], values[len(prompts) :], strict=True):
        outcome = 0.5 if mine == theirs else float(mine > theirs)
        verdicts.append(
            {
                "outcome": outcome,
                "score_candidate": mine,
                "score_baseline": theirs,
                "reason": "equal_scores" if mine == theirs else None,
            }
        )
    return verdicts


def win_rate_summary(
    outcomes: list[float], length_diff: list[float], config: EvalConfig
) -> dict[str, Any]:
    """Counts, raw and length-controlled win rates, and their bootstrap intervals."""
    y, diff = np.asarray(outcomes), np.asarray(length_diff, dtype=float)
    draws = stats.bootstrap_indices(len(y), num_resamples=config.num_bootstrap, seed=config.seed)
    raw_ci = stats.percentile_interval(y[draws].mean(axis=1), config.confidence)
    lc_ci = stats.percentile_interval(
        stats.length_controlled_rates(y[draws], diff[draws]), config.confidence
    )
    fit = stats.length_controlled(y, diff)
    return {
        "num_prompts": len(y),
        "wins": int((y == 1).sum()),
        "ties": int((y == 0.5).sum()),
        "losses": int((y == 0).sum()),
        "win_rate": stats.win_rate(y),
        "win_rate_ci": list(raw_ci),
        "lc_win_rate": fit.rate,
        "lc_win_rate_ci": list(lc_ci),
        "length_fit": {"intercept": fit.intercept, "slope": fit.slope, "scale_chars": fit.scale},
    }


def length_summary(samples: list[Sample]) -> dict[str, float]:
    """Mean answer length in tokens and characters, and the share cut at the token limit."""
    return {
        "mean_tokens": float(np.mean([s.num_tokens for s in samples])),
        "mean_chars": float(np.mean([len(s.text) for s in samples])),
        "truncated": float(np.mean([s.finish_reason == "length" for s in samples])),
    }


def judge_notes(identity: dict[str, Any], contestants: list[Contestant]) -> list[str]:
    """Plain warnings when the judge is one of the contestants or smaller than them."""
    if "endpoint" in identity:
        return [
            f"The judge is {identity['model']} at {identity['endpoint']}; its size is not known "
            "here. Make sure it is stronger than both contestants."
        ]
    notes = []
    for c in contestants:
        if identity.get("sha256") == c.sha256:
            notes.append(
                f"The judge is the {c.label} model itself ({c.model}). A model judging its own "
                "answers tends to prefer them, and it is no stronger than the model it judges: "
                "read this win rate as a smoke test, not as evidence. Point `judge:` at a "
                "stronger model or endpoint."
            )
    judge_size = parameter_count(identity["model"]) if "model" in identity else None
    largest = max(contestants, key=lambda c: c.parameters or 0)
    if not notes and judge_size and largest.parameters and judge_size < largest.parameters:
        notes.append(
            f"The judge ({judge_size:,} parameters) is smaller than the {largest.label} model "
            f"({largest.parameters:,}): its verdicts are weak evidence."
        )
    return notes


def _answers(
    prompts: list[list[MessageDict]],
    models: list[Contestant],
    config: EvalConfig,
    *,
    ifeval_set: bool,
) -> list[list[Sample]]:
    sampling = config.sampling(ifeval=ifeval_set)
    return [
        [
            s
            for (s,) in sample_responses(
                prompts, m.model, sampling, batch_size=config.batch_size, engine=config.engine
            )
        ]
        for m in models
    ]


def evaluate_models(
    candidate: Contestant,
    baseline: Contestant,
    config: EvalConfig,
    *,
    eval_pairs: Path | None,
    output_dir: Path,
) -> dict[str, Any]:
    """Judged win rate of `candidate` over `baseline`, lengths and IFEval; per-prompt verdicts
    go to `output_dir/verdicts.jsonl` and `output_dir/ifeval.jsonl`."""
    from orpo_pipeline.stages.judge import build_judge

    started, seconds = time.perf_counter(), {}
    named = eval_prompts(config, eval_pairs)
    if not named:
        msg = "nothing to judge: no held-out prompts (eval_pairs) and no benchmark prompts"
        raise DataError(msg)
    prompts = [p for _, p in named]
    mine, theirs = _answers(prompts, [candidate, baseline], config, ifeval_set=False)
    seconds["generate"] = time.perf_counter() - started

    judge, identity = build_judge(config.judge)
    texts = [s.text for s in mine], [s.text for s in theirs]
    if config.judge.judge == "llm_judge":
        template = config.judge.template()
        verdicts = pairwise_verdicts(template, prompts, *texts, judge)
    else:
        verdicts = scored_verdicts(prompts, *texts, judge)
    del judge
    seconds["judge"] = time.perf_counter() - started - seconds["generate"]

    outcomes = [v["outcome"] for v in verdicts]
    length_diff = [len(a.text) - len(b.text) for a, b in zip(mine, theirs, strict=True)]
    by_set = {}
    for name in dict.fromkeys(n for n, _ in named):
        picked = [o for (n, _), o in zip(named, outcomes, strict=True) if n == name]
        by_set[name] = {"num_prompts": len(picked), "win_rate": stats.win_rate(picked)}
    rows = [
        {"set": n, "prompt": p, "candidate": a._asdict(), "baseline": b._asdict(), **v}
        for (n, p), a, b, v in zip(named, mine, theirs, verdicts, strict=True)
    ]
    write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
        output_dir / "verdicts.jsonl",
    )

    result: dict[str, Any] = {
        "candidate": candidate._asdict(),
        "baseline": baseline._asdict(),
        "judge": identity,
        "judge_notes": judge_notes(identity, [candidate, baseline]),
        "config": config.model_dump(mode="json"),
        "pairwise": win_rate_summary(outcomes, length_diff, config)
        | {
            "by_set": by_set,
            "length_points": [list(p) for p in zip(length_diff, outcomes, strict=True)],
        },
        "length": {"candidate": length_summary(mine), "baseline": length_summary(theirs)},
    }
    if config.num_ifeval_prompts:
        mark = time.perf_counter()
        result["ifeval"] = _ifeval(candidate, baseline, config, output_dir)
        seconds["ifeval"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - started
    result["seconds"] = seconds
    result["summary"] = summary(result)
    return result


def _ifeval(
    candidate: Contestant, baseline: Contestant, config: EvalConfig, output_dir: Path
) -> dict[str, Any]:
    records = ifeval.ifeval_records(config.num_ifeval_prompts)
    prompts = [[{"role": "user", "content": r["prompt"]}] for r in records]
    answers = _answers(prompts, [candidate, baseline], config, ifeval_set=True)
    scores, rows = {}, []
    for role, samples in zip(("candidate", "baseline"), answers, strict=True):
        checked = [ifeval.check_response(r, s.text) for r, s in zip(records, samples, strict=True)]
        scores[role] = ifeval.ifeval_scores(checked)
        rows += [
            {"model": role, "response": s.text, **c} for c, s in zip(checked, samples, strict=True)
        ]
    write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), output_dir / "ifeval.jsonl"
    )
    return scores


def summary(result: dict[str, Any]) -> dict[str, float | int]:
    """The headline numbers, flat: what `runs diff` compares between runs."""
    pairwise = result["pairwise"]
    flat = {
        "win_rate": pairwise["win_rate"],
        "win_rate_ci_low": pairwise["win_rate_ci"][0],
        "win_rate_ci_high": pairwise["win_rate_ci"][1],
        "lc_win_rate": pairwise["lc_win_rate"],
        "wins": pairwise["wins"],
        "ties": pairwise["ties"],
        "losses": pairwise["losses"],
        "mean_tokens_candidate": result["length"]["candidate"]["mean_tokens"],
        "mean_tokens_baseline": result["length"]["baseline"]["mean_tokens"],
    }
    for role, scores in result.get("ifeval", {}).items():
        for name in ifeval.METRICS:
            flat[f"ifeval_{name}_{role}"] = scores[name]
    return flat


def resolve_contestant(name: str, root: Path) -> Contestant:
    """A run (directory or id under `root`: its `final/` model) or a model name or path."""
    from orpo_pipeline.runs import find_runs

    run = Path(name)
    if not (run / "manifest.json").is_file():
        matches = [r for r in find_runs(root) if r.name == name] if root.is_dir() else []
        run = matches[0] if len(matches) == 1 else run
    if (run / "manifest.json").is_file():
        if not (run / "final").is_dir():
            msg = f"{run}: no final/ model; only a finished training run can be compared"
            raise DataError(msg)
        return contestant(f"run {run.name}", str(run / "final"))
    return contestant(name, name)


def evaluate_run(
    run_dir: Path,
    *,
    against: str | None = None,
    config: EvalConfig | None = None,
    root: Path = Path("runs"),
) -> dict[str, Any]:
    """Evaluate a training run's `final/` model against its start model or `against` (a model,
    or another run's directory or id under `root`). Writes `evaluation/` (per-prompt verdicts and
    IFEval checks) and the `evaluation` key of `manifest.json`, adds the section to
    `report.html`, and returns the evaluation."""
    from orpo_pipeline.evaluation.report import add_to_report
    from orpo_pipeline.runs import load_manifest

    config = config or EvalConfig()
    manifest = load_manifest(run_dir)
    if manifest.get("kind") != "train" or not (run_dir / "final").is_dir():
        msg = f"{run_dir}: not a finished training run (no final/ model)"
        raise DataError(msg)
    candidate = contestant(f"run {run_dir.name}", str(run_dir / "final"))
    start = manifest["config"]["model"]
    baseline = contestant("start", start) if against is None else resolve_contestant(against, root)
    eval_pairs = manifest["config"].get("eval_pairs")
    result = evaluate_models(
        candidate,
        baseline,
        config,
        eval_pairs=Path(eval_pairs) if eval_pairs else None,
        output_dir=run_dir / "evaluation",
    )
    manifest["evaluation"] = result
    write_text(json.dumps(manifest, indent=2) + "\n", run_dir / "manifest.json")
    add_to_report(run_dir, result)
    return result


def describe_plan(config: EvalConfig) -> str:
    """What an evaluation will run, said before it runs."""
    judged = config.num_heldout_prompts + sum(config.benchmarks.values())
    judge = config.judge.endpoint or config.judge.model
    how = "in both orders " if config.judge.judge == "llm_judge" else ""
    return (
        f"evaluation: up to {judged} prompts answered by both models (<= {config.max_new_tokens} "
        f"new tokens), judged {how}by {judge} ({config.judge.judge}); IFEval on "
        f"{config.num_ifeval_prompts} prompts (<= {config.ifeval_max_new_tokens} tokens); "
        "a baseline's answers are cached and reused"
    )
