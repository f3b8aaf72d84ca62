"""`compare`: objectives side by side on one start model, data and budget, at matched compute.

Each arm is a recipe (ORPO; SFT→DPO; SFT; SimPO ...) run from the same base settings, each stage
in its own process so its wall time and peak memory are its own. Quality is read from the held-out
evaluations every run logs with its cumulative FLOPs, so arms are compared at equal compute.
"""

import html
import itertools
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from orpo_pipeline.errors import ConfigError
from orpo_pipeline.evaluation.config import EvalAfter
from orpo_pipeline.io import write_text
from orpo_pipeline.runs import config_hash, load_manifest, utc_stamp
from orpo_pipeline.train.config import Settings, TrainConfig
from orpo_pipeline.train.recipe import RecipeConfig, run_recipe
from orpo_pipeline.train.report import STYLE, chart

QUALITY = (
    ("eval_logp_accuracy", "Preference accuracy (ℓ_w > ℓ_l)"),
    ("eval_logp_margin", "Margin ℓ_w − ℓ_l (nats/token)"),
    ("eval_chosen_nll", "Chosen NLL (nats/token)"),
)
"""Held-out measures that depend on the policy alone, so they mean the same for every arm."""
JUDGED = (
    ("win_rate", "win rate vs start", ".3f"),
    ("lc_win_rate", "LC win rate", ".3f"),
    ("ifeval_prompt_level_strict_candidate", "IFEval prompt strict", ".3f"),
    ("mean_tokens_candidate", "answer tokens", ".1f"),
)
"""Each arm's final model judged against the start model (`evaluation`), from its summary."""
PALETTE = ("#1f6fb4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
SECONDS_PER_STEP = 9.5
SECONDS_PER_EVAL_PAIR = 0.6
SECONDS_PER_EVALUATION = 90.0
"""The default model on 2 idle CPU cores (max_length 256, 4 pairs a step; `make train` measured
2026-12-01): used only to say up front about how long a comparison will take."""


class CompareConfig(Settings):
    """Arms (recipes) run on the same start model, pairs, split, template and `max_length`."""

    name: str = Field(default="compare", pattern=r"^[A-Za-z0-9_.-]+$")
    """Comparison name; its directory is `<output_dir>/<name>-<UTC time>-<config hash8>/`."""
    output_dir: Path = Path("runs/compare")
    """Where comparison directories are created."""
    base: dict[str, Any]
    """Training settings every arm and stage shares (any `TrainConfig` field)."""
    arms: dict[str, list[dict[str, Any]]] = Field(min_length=1)
    """Arm name -> its stages, as a recipe's `stages` (e.g. sft_dpo: [{objective: sft}, ...])."""
    seeds: list[int] = Field(default=[0], min_length=1)
    """One run of every arm per seed; tables give mean ± standard deviation over seeds."""
    matched_points: int = Field(default=4, ge=1)
    """FLOP budgets at which arms are compared: 1/k .. k/k of the smallest arm's total."""
    num_samples: int = Field(default=6, ge=0)
    """Held-out prompts answered greedily by the start model and by each arm's final model."""
    max_new_tokens: int = Field(default=48, ge=1)
    """Longest sample answer in tokens."""
    isolate: bool = True
    """Run each stage in a fresh process, so its wall time and peak memory are its own."""
    evaluation: EvalAfter = None
    """Judge each arm's final model against the start model (`orpo-pipeline eval`'s settings:
    `true` for the defaults, or an `EvalConfig` mapping); the start model's answers are
    generated once and reused by every arm. Stages' own `eval_after` is switched off."""

    def recipes(self, arms_dir: Path) -> list[tuple[str, int, RecipeConfig]]:
        """(arm, seed, recipe) of every run, validated."""
        runs = []
        for seed in self.seeds:
            for arm, stages in self.arms.items():
                base = self.base | {"seed": seed, "num_sample_generations": 0, "eval_after": None}
                recipe = RecipeConfig(
                    name=f"{arm}-seed{seed}", output_dir=arms_dir, base=base, stages=stages
                )
                recipe.stage_configs(output_dir=arms_dir)
                runs.append((arm, seed, recipe))
        return runs


def plan(config: CompareConfig) -> str:
    """What a comparison will run, and about how long it takes, said before it starts."""
    lines = [f"compare {config.name}: {len(config.arms)} arms x {len(config.seeds)} seed(s)"]
    steps = evals = 0
    for arm, stages in config.arms.items():
        described = []
        for stage in stages:
            train = TrainConfig.model_validate(config.base | stage)
            count = train.max_steps or 0
            every = train.eval_every_steps or count or 1
            steps += count
            evals += (1 + math.ceil(count / every)) * (train.num_eval_pairs or 100)
            described.append(f"{train.objective} ({count} steps)")
        lines.append(f"  {arm}: {' -> '.join(described)}")
    seconds = len(config.seeds) * (steps * SECONDS_PER_STEP + evals * SECONDS_PER_EVAL_PAIR)
    if config.evaluation is not None:
        from orpo_pipeline.evaluation.run import describe_plan

        lines.append(
            f"each arm's final model vs the start model: {describe_plan(config.evaluation)}"
        )
        seconds += len(config.seeds) * len(config.arms) * SECONDS_PER_EVALUATION
    lines.append(
        f"{steps * len(config.seeds)} optimizer steps and {evals * len(config.seeds)} eval pairs: "
        f"about {seconds / 60:.0f} min on 2 idle CPU cores for the default model"
    )
    return "\n".join(lines)


def arm_result(chain_dir: Path) -> dict[str, Any]:
    """Compute, quality and the quality-vs-FLOPs curve of one arm's chain of runs."""
    stages = [chain_dir / s["path"] for s in load_manifest(chain_dir)["stages"]]
    offset, tokens, seconds, peak, curve = 0.0, 0, 0.0, 0, []
    for run_dir in stages:
        manifest = load_manifest(run_dir)
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines]
        for record in records:
            if "eval_loss" in record:
                curve.append(
                    {"flops": offset + record["flops"]}
                    | {name: record[name] for name, _ in QUALITY if name in record}
                )
        last = [r for r in records if "train_tokens" in r][-1]
        offset += last["flops"]
        tokens += last["train_tokens"]
        seconds += manifest["seconds"]
        peak = max(peak, manifest["peak_memory_bytes"])
    first, final = load_manifest(stages[0]), load_manifest(stages[-1])
    evaluation = final.get("evaluation", {})
    return {
        "chain": str(chain_dir),
        "final_model": str(stages[-1] / "final"),
        "tokens": tokens,
        "flops": offset,
        "seconds": seconds,
        "peak_memory_bytes": peak,
        "before": {name: first["eval_before"][name] for name, _ in QUALITY},
        "after": {name: final["eval_after"][name] for name, _ in QUALITY},
        "curve": curve,
        "evaluation": evaluation.get("summary"),
        "evaluation_seconds": evaluation.get("seconds", {}).get("total"),
        "judge_notes": evaluation.get("judge_notes", []),
        "baseline_sha256": evaluation.get("baseline", {}).get("sha256"),
    }


def evaluate_arm(chain_dir: Path, config: CompareConfig) -> None:
    """Judge an arm's final model against the start model (into its last stage's run)."""
    from orpo_pipeline.evaluation.run import evaluate_run

    last = chain_dir / load_manifest(chain_dir)["stages"][-1]["path"]
    start = TrainConfig.model_validate(config.base).model
    evaluate_run(last, against=start, config=config.evaluation, root=config.output_dir)


def at_flops(curve: list[dict[str, float]], flops: float, name: str) -> float | None:
    """`name` linearly interpolated at `flops` along an arm's curve; None outside it."""
    points = [(p["flops"], p[name]) for p in curve if name in p]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 <= flops <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (flops - x0) / (x1 - x0)
    return None


def mean_spread(values: list[float | None]) -> dict[str, float | None]:
    """Mean and standard deviation over seeds (spread 0 for one seed; None if any is missing)."""
    if not values or any(v is None for v in values):
        return {"mean": None, "std": None}
    numbers = [v for v in values if v is not None]
    spread = statistics.stdev(numbers) if len(numbers) > 1 else 0.0
    return {"mean": statistics.fmean(numbers), "std": spread}


def summarise(results: dict[str, list[dict[str, Any]]], *, matched_points: int) -> dict[str, Any]:
    """Per-arm means ± spreads of compute and quality, and quality at matched FLOP budgets."""
    smallest = min(r["flops"] for runs in results.values() for r in runs)
    budgets = [smallest * (k + 1) / matched_points for k in range(matched_points)]
    arms = {}
    for arm, runs in results.items():
        arms[arm] = {
            key: mean_spread([r[key] for r in runs])
            for key in ("tokens", "flops", "seconds", "peak_memory_bytes")
        }
        for name, _ in QUALITY:
            arms[arm][f"before/{name}"] = mean_spread([r["before"][name] for r in runs])
            arms[arm][name] = mean_spread([r["after"][name] for r in runs])
        if all(r.get("evaluation") for r in runs):
            arms[arm]["evaluation"] = {
                name: mean_spread([r["evaluation"].get(name) for r in runs])
                for name, _, _ in JUDGED
            }
        arms[arm]["matched"] = [
            {"flops": budget}
            | {
                name: mean_spread([at_flops(r["curve"], budget, name) for r in runs])
                for name, _ in QUALITY
            }
            for budget in budgets
        ]
    return {"budgets": budgets, "arms": arms}


def answer_lengths(samples: list[dict[str, Any]]) -> float:
    """Mean length of the generated answers, in words."""
    return statistics.fmean(len(s["completion"].split()) for s in samples) if samples else 0.0


def generate(model: str, config: CompareConfig) -> list[dict[str, Any]]:
    """Greedy answers of `model` to the first `num_samples` held-out prompts."""
    import torch

    from orpo_pipeline.models import load_model, load_tokenizer
    from orpo_pipeline.train.evaluate import generate_samples
    from orpo_pipeline.train.loop import load_split

    train = TrainConfig.model_validate(config.base)
    tokenizer = load_tokenizer(model, chat_template=train.chat_template)
    split = load_split(train.eval_pairs, tokenizer, train, limit=config.num_samples)
    rows = [split.rows[i] for i in split.tokenized.rows]
    return generate_samples(
        load_model(model, dtype=torch.float32),
        tokenizer,
        split.pairs,
        rows,
        max_new_tokens=config.max_new_tokens,
    )


def run_compare(config: CompareConfig, *, echo=print) -> Path:
    """Run every arm for every seed, then write `compare.json` and `report.html`."""
    out = config.output_dir / f"{config.name}-{utc_stamp()}-{config_hash(config)[:8]}"
    runs = config.recipes(out / "arms")  # every stage validated before anything runs
    if TrainConfig.model_validate(config.base).eval_pairs is None:
        msg = "compare needs `eval_pairs` in `base`: quality is measured on held-out pairs"
        raise ConfigError(msg)
    out.mkdir(parents=True)
    write_text(
        yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), out / "compare.yaml"
    )
    echo(plan(config))
    started = time.monotonic()
    results: dict[str, list[dict[str, Any]]] = {arm: [] for arm in config.arms}
    samples: dict[str, Any] = {}
    for done, (arm, seed, recipe) in enumerate(runs, start=1):
        echo(f"[{done}/{len(runs)}] {arm} seed {seed}")
        chain = run_recipe(recipe, isolated=config.isolate)
        if config.evaluation is not None:
            evaluate_arm(chain, config)
        result = arm_result(chain)
        results[arm].append(result | {"seed": seed})
        elapsed = time.monotonic() - started
        echo(
            f"  {result['seconds']:.0f} s; {elapsed / 60:.1f} min so far, about "
            f"{elapsed / done * (len(runs) - done) / 60:.1f} min to go"
        )
    if config.num_samples:
        start_model = TrainConfig.model_validate(config.base).model
        samples["start"] = generate(start_model, config)
        for arm, arm_runs in results.items():
            samples[arm] = generate(arm_runs[0]["final_model"], config)
    report = {
        "name": config.name,
        "summary": summarise(results, matched_points=config.matched_points),
        "runs": results,
        "samples": samples,
        "answer_words": {name: answer_lengths(s) for name, s in samples.items()},
        "judge_notes": list(
            dict.fromkeys(n for runs in results.values() for r in runs for n in r["judge_notes"])
        ),
        "seconds": time.monotonic() - started,
    }
    write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", out / "compare.json")
    write_text(render_compare(report, config), out / "report.html")
    return out


def _fmt(cell: dict[str, float | None], spec: str, scale: float = 1.0) -> str:
    if cell["mean"] is None:
        return "–"
    text = format(cell["mean"] / scale, spec)
    return text + (f" ± {format(cell['std'] / scale, spec)}" if cell["std"] else "")


def judged(report: dict[str, Any]) -> bool:
    """Whether every arm was judged against the start model (`evaluation`)."""
    return all("evaluation" in s for s in report["summary"]["arms"].values())


def table(report: dict[str, Any]) -> list[list[str]]:
    """Rows of the per-arm table: header first."""
    arms, with_evaluation = report["summary"]["arms"], judged(report)
    rows = [["arm", "tokens", "TFLOPs", "wall s", "peak MiB", "accuracy", "margin", "chosen NLL"]]
    rows[0] += [title for _, title, _ in JUDGED] if with_evaluation else []
    for arm, s in arms.items():
        evaluation = s.get("evaluation", {})
        rows.append(
            [
                arm,
                _fmt(s["tokens"], ",.0f"),
                _fmt(s["flops"], ".2f", 1e12),
                _fmt(s["seconds"], ".0f"),
                _fmt(s["peak_memory_bytes"], ",.0f", 2**20),
                _fmt(s["eval_logp_accuracy"], ".3f"),
                _fmt(s["eval_logp_margin"], ".3f"),
                _fmt(s["eval_chosen_nll"], ".3f"),
                *(
                    [_fmt(evaluation[name], spec) for name, _, spec in JUDGED]
                    if with_evaluation
                    else []
                ),
            ]
        )
    return rows


def matched_table(report: dict[str, Any]) -> list[list[str]]:
    """Rows of accuracy / margin / NLL per arm at each matched FLOP budget."""
    summary = report["summary"]
    rows = [["TFLOPs", *summary["arms"]]]
    for k, budget in enumerate(summary["budgets"]):
        cells = []
        for s in summary["arms"].values():
            point = s["matched"][k]
            cells.append(" / ".join(_fmt(point[name], ".3f") for name, _ in QUALITY))
        rows.append([f"{budget / 1e12:.2f}", *cells])
    return rows


def markdown(rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows[1:]])


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:]
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _judged_note(report: dict[str, Any]) -> str:
    """Who judged the arms against the start model, and the caveats `eval` gives about it."""
    if not judged(report):
        return ""
    notes = report.get("judge_notes", [])
    return (
        "<p>Win rates: each arm's final model against the start model, judged in both orders "
        "(a disagreement is a tie); LC is length-controlled; IFEval is the arm's prompt-level "
        "strict accuracy. Per-prompt verdicts are in each arm's last run under "
        "<code>evaluation/</code>.</p>"
        + "".join(f"<p><strong>{html.escape(note)}</strong></p>" for note in notes)
    )


def render_compare(report: dict[str, Any], config: CompareConfig) -> str:
    """The comparison page: compute and quality tables, matched-compute table, curves, samples."""
    colors = dict(zip(report["runs"], PALETTE, strict=False))
    charts = "".join(
        chart(
            name,
            title,
            {
                arm: [
                    (p["flops"], p[name])
                    for p in runs[0]["curve"]
                    if name in p and math.isfinite(p[name])
                ]
                for arm, runs in report["runs"].items()
            },
            colors=colors,
            x_label="FLOPs",
        )
        for name, title in QUALITY
    )
    samples = "".join(
        f"<h3>{html.escape(name)} (mean {report['answer_words'][name]:.1f} words)</h3><ol>"
        + "".join(f"<li><pre>{html.escape(s['completion'])}</pre></li>" for s in items)
        + "</ol>"
        for name, items in report["samples"].items()
    )
    title = f"Comparison {report['name']}"
    config_yaml = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>Seeds {config.seeds}; mean ± standard deviation over seeds. Accuracy, margin and NLL "
        f"are held-out and depend on the policy alone (per-token log-probs).</p>"
        f"<h2>Compute and final quality</h2>{_html_table(table(report))}{_judged_note(report)}"
        f"<h2>Quality at matched compute</h2><p>accuracy / margin / chosen NLL</p>"
        f"{_html_table(matched_table(report))}"
        f'<h2>Quality vs compute</h2><div class="charts">{charts}</div>'
        f"<h2>Greedy samples</h2>{samples}"
        f"<h2>Config</h2><pre>{html.escape(config_yaml)}</pre>"
        f"</body></html>\n"
    )
