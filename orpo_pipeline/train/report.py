"""`<run>/report.html`: training and eval curves as inline SVG, and the eval before and after.

One self-contained file: no scripts, no styles or fonts from the network. Regenerate it from a
run directory with `write_report(run_dir)`.
"""

import html
import json
import math
from pathlib import Path

from orpo_pipeline.io import write_text

SUMMARY_METRICS = (
    "rewards/accuracies",
    "rewards/margins",
    "log_odds_chosen",
    "log_odds_ratio",
    "nll_loss",
    "loss",
    "chosen_nll",
    "logp_accuracy",
    "logp_margin",
)
"""The eval metrics compared before and after training, without `eval_`: TRL's names (those an
objective reports), then the policy-only ones every objective reports."""
CURVES = (
    ("loss", "Loss"),
    ("nll_loss", "NLL"),
    ("log_odds_ratio", "Log-odds ratio term: mean log σ(log-odds)"),
    ("log_odds_chosen", "Log-odds of chosen over rejected"),
    ("rewards/margins", "Reward margin (β · (ℓ_w − ℓ_l))"),
    ("rewards/accuracies", "Preference accuracy"),
    ("tokens_per_second", "Training tokens per second"),
)
COLORS = {"train": "#1f6fb4", "eval": "#d62728"}
WIDTH, HEIGHT = 460, 220
LEFT, RIGHT, TOP, BOTTOM = 60, 12, 10, 30
MAX_POINTS = 500
"""Longer series are thinned to about this many points (the first and last are always kept)."""

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
.charts { display: flex; flex-wrap: wrap; gap: 1.5em; }
figure { margin: 0; } figcaption { font-weight: 600; margin-bottom: .3em; }
svg text { font: 11px sans-serif; fill: #555; }
table { border-collapse: collapse; } td, th { padding: .25em .8em; text-align: right; }
th:first-child, td:first-child { text-align: left; } tr:nth-child(even) { background: #f4f4f4; }
.train { color: #1f6fb4; } .eval { color: #d62728; }
"""


def _thin(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    stride = math.ceil(len(points) / MAX_POINTS)
    return points if stride <= 1 else points[::stride] + points[-1:]


def chart(
    metric: str,
    title: str,
    series: dict[str, list[tuple[float, float]]],
    *,
    colors: dict[str, str] = COLORS,
    x_label: str = "step",
) -> str:
    """One figure: a line and hoverable points per series, min and max labelled on both axes."""
    every = [point for points in series.values() for point in points]
    if not every:
        return ""
    x_lo, x_hi = min(s for s, _ in every), max(s for s, _ in every)
    y_lo, y_hi = min(v for _, v in every), max(v for _, v in every)
    x_span, y_span = (x_hi - x_lo) or 1, (y_hi - y_lo) or 1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def xy(step: float, value: float) -> tuple[float, float]:
        return LEFT + (step - x_lo) / x_span * plot_w, TOP + (y_hi - value) / y_span * plot_h

    parts = [
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" '
        'stroke="#ccc"/>',
        f'<text x="{LEFT - 4}" y="{TOP + 10}" text-anchor="end">{y_hi:.4g}</text>',
        f'<text x="{LEFT - 4}" y="{TOP + plot_h}" text-anchor="end">{y_lo:.4g}</text>',
        f'<text x="{LEFT}" y="{HEIGHT - 12}">{x_label} {x_lo:.4g}</text>',
        f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 12}" text-anchor="end">{x_hi:.4g}</text>',
    ]
    for name, points in series.items():
        if not points:
            continue
        color = colors[name]
        points = _thin(points)
        coords = [xy(s, v) for s, v in points]
        parts.append(
            f'<polyline data-series="{name}" fill="none" stroke="{color}" stroke-width="1.5" '
            f'points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in coords)}"/>'
        )
        parts += [
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}">'
            f"<title>{name} {x_label} {s:.6g}: {v:.6g}</title></circle>"
            for (x, y), (s, v) in zip(coords, points, strict=True)
        ]
    legend = " ".join(
        f'<span style="color: {colors[name]}">— {html.escape(name)}</span>'
        for name, p in series.items()
        if p
    )
    return (
        f'<figure data-metric="{html.escape(metric)}"><figcaption>{html.escape(title)} '
        f"<small>{legend}</small></figcaption>"
        f'<svg width="{WIDTH}" height="{HEIGHT}" role="img">{"".join(parts)}</svg></figure>'
    )


def _eval_table(before: dict[str, float], after: dict[str, float]) -> str:
    rows = "".join(
        f"<tr><td>{name}</td><td>{before[f'eval_{name}']:.4f}</td>"
        f"<td>{after[f'eval_{name}']:.4f}</td>"
        f"<td>{after[f'eval_{name}'] - before[f'eval_{name}']:+.4f}</td></tr>"
        for name in SUMMARY_METRICS
        if f"eval_{name}" in before
    )
    return (
        f"<h2>Eval: step {before['step']} and step {after['step']}</h2><table>"
        f"<tr><th>metric</th><th>before</th><th>after</th><th>change</th></tr>{rows}</table>"
    )


def render_report(records: list[dict[str, float]], *, title: str, config_yaml: str) -> str:
    """The HTML page for the records of a `metrics.jsonl` (train lines and eval lines)."""
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]

    def finite(rows: list[dict[str, float]], key: str) -> list[tuple[int, float]]:
        return [(r["step"], r[key]) for r in rows if key in r and math.isfinite(r[key])]

    charts = "".join(
        chart(name, caption, {"train": finite(train, name), "eval": finite(evals, f"eval_{name}")})
        for name, caption in CURVES
    )
    table = _eval_table(evals[0], evals[-1]) if evals else "<p>No evaluation in this run.</p>"
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>{len(train)} logged training steps, {len(evals)} evaluations.</p>"
        f'{table}<h2>Curves</h2><div class="charts">{charts}</div>'
        f"<h2>Config</h2><pre>{html.escape(config_yaml)}</pre></body></html>\n"
    )


def write_report(run_dir: Path) -> Path:
    """Write `<run_dir>/report.html` from its `metrics.jsonl` and `config.yaml`; return its path."""
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    page = render_report(
        [json.loads(line) for line in lines],
        title=f"Training run {run_dir.name}",
        config_yaml=(run_dir / "config.yaml").read_text(encoding="utf-8"),
    )
    path = run_dir / "report.html"
    write_text(page, path)
    return path
