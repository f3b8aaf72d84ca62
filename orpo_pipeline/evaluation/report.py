"""The evaluation section of a run's `report.html`: a win/tie/loss bar, the intervals, the
length plot, IFEval, and plain warnings about the judge. Inline SVG, no scripts."""

import html
import math
import re
from pathlib import Path
from typing import Any

from orpo_pipeline.evaluation.ifeval import METRICS
from orpo_pipeline.io import write_text

COLORS = {"win": "#2a9d3a", "tie": "#bbbbbb", "loss": "#d62728", "candidate": "#1f6fb4"}
SECTION = re.compile(r'<section id="evaluation">.*?</section>', re.DOTALL)
STYLE = (
    "#evaluation .warn { background: #fff4d6; border-left: 4px solid #e0a800; padding: .5em 1em; }"
    " #evaluation svg text { font: 11px sans-serif; fill: #555; }"
)


def _bar(wins: int, ties: int, losses: int, width: int = 460) -> str:
    total = max(wins + ties + losses, 1)
    parts, x = [], 0.0
    for name, count in (("win", wins), ("tie", ties), ("loss", losses)):
        w = width * count / total
        if count:
            parts.append(
                f'<rect x="{x:.1f}" y="0" width="{w:.1f}" height="22" fill="{COLORS[name]}">'
                f"<title>{name}: {count}</title></rect>"
                f'<text x="{x + w / 2:.1f}" y="15" text-anchor="middle" style="fill:#fff">'
                f"{count}</text>"
            )
        x += w
    return (
        f'<svg width="{width}" height="22" role="img" data-plot="outcomes">{"".join(parts)}</svg>'
    )


def _interval(rows: list[tuple[str, float, list[float]]], width: int = 460) -> str:
    """Each estimate as a dot on a 0..1 axis with its interval as a line; 0.5 dashed."""
    left, plot = 130, width - 150
    parts = [
        f'<line x1="{left + plot / 2}" y1="0" x2="{left + plot / 2}" y2="{24 * len(rows) + 6}" '
        'stroke="#999" stroke-dasharray="3,3"/>',
        f'<text x="{left}" y="{24 * len(rows) + 18}">0</text>',
        f'<text x="{left + plot / 2}" y="{24 * len(rows) + 18}" text-anchor="middle">0.5</text>',
        f'<text x="{left + plot}" y="{24 * len(rows) + 18}" text-anchor="end">1</text>',
    ]
    for i, (label, value, (low, high)) in enumerate(rows):
        y = 24 * i + 14
        parts += [
            f'<text x="0" y="{y + 4}">{html.escape(label)}</text>',
            f'<line x1="{left + low * plot:.1f}" y1="{y}" x2="{left + high * plot:.1f}" y2="{y}" '
            f'stroke="{COLORS["candidate"]}" stroke-width="3"/>',
            f'<circle cx="{left + value * plot:.1f}" cy="{y}" r="4" fill="#222">'
            f"<title>{label}: {value:.3f} [{low:.3f}, {high:.3f}]</title></circle>",
        ]
    return (
        f'<svg width="{width}" height="{24 * len(rows) + 24}" role="img" data-plot="intervals">'
        f"{''.join(parts)}</svg>"
    )


def _length_plot(points: list[list[float]], fit: dict[str, float], width: int = 460) -> str:
    """Outcome against the length difference (characters), with the fitted win probability."""
    height, left, bottom = 200, 40, 30
    span = max((abs(d) for d, _ in points), default=1) or 1
    plot_w, plot_h = width - left - 10, height - bottom - 10

    def xy(d: float, p: float) -> tuple[float, float]:
        return left + (d + span) / (2 * span) * plot_w, 10 + (1 - p) * plot_h

    parts = [
        f'<rect x="{left}" y="10" width="{plot_w}" height="{plot_h}" fill="none" stroke="#ccc"/>',
        f'<text x="{left - 4}" y="16" text-anchor="end">win</text>',
        f'<text x="{left - 4}" y="{10 + plot_h / 2 + 4}" text-anchor="end">tie</text>',
        f'<text x="{left - 4}" y="{10 + plot_h}" text-anchor="end">loss</text>',
        f'<text x="{left}" y="{height - 8}">{-span:+.0f} chars</text>',
        f'<text x="{left + plot_w}" y="{height - 8}" text-anchor="end">{span:+.0f}</text>',
        f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">'
        "candidate minus baseline length</text>",
    ]
    for d, outcome in points:
        x, y = xy(d, outcome)
        name = "win" if outcome == 1 else "loss" if outcome == 0 else "tie"
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{COLORS[name]}" opacity=".7">'
            f"<title>Δ {d:+.0f} chars: {name}</title></circle>"
        )
    scale = fit["scale_chars"]
    curve = []
    for k in range(61):
        d = -span + 2 * span * k / 60
        z = fit["intercept"] + fit["slope"] * (math.tanh(d / scale) if scale else 0.0)
        curve.append(xy(d, 1 / (1 + math.exp(-z))))
    parts.append(
        f'<polyline fill="none" stroke="{COLORS["candidate"]}" stroke-width="1.5" '
        f'points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in curve)}"/>'
    )
    svg = f'<svg width="{width}" height="{height}" role="img" data-plot="length">'
    return svg + "".join(parts) + "</svg>"


def _ifeval_table(scores: dict[str, dict[str, float]]) -> str:
    head = "".join(f"<th>{role}</th>" for role in scores)
    rows = "".join(
        f"<tr><td>{name.replace('_', ' ')}</td>"
        + "".join(f"<td>{s[name]:.3f}</td>" for s in scores.values())
        + "</tr>"
        for name in METRICS
    )
    counts = next(iter(scores.values()))
    return (
        f"<h3>IFEval ({counts['num_prompts']} prompts, {counts['num_instructions']} instructions)"
        f"</h3><table><tr><th>accuracy</th>{head}</tr>{rows}</table>"
    )


def render_evaluation(evaluation: dict[str, Any]) -> str:
    """The `<section id="evaluation">` of a run's report, from its manifest's `evaluation`."""
    pairwise, length = evaluation["pairwise"], evaluation["length"]
    candidate, baseline = evaluation["candidate"], evaluation["baseline"]
    judge = evaluation["judge"]
    judge_name = judge.get("endpoint", "") + " " + judge.get("model", "")
    notes = "".join(f'<p class="warn">{html.escape(n)}</p>' for n in evaluation["judge_notes"])
    by_set = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{s['num_prompts']}</td><td>{s['win_rate']:.3f}</td></tr>"
        for name, s in pairwise["by_set"].items()
    )
    lengths = "".join(
        f"<tr><td>{role}</td><td>{v['mean_tokens']:.1f}</td><td>{v['mean_chars']:.0f}</td>"
        f"<td>{v['truncated']:.0%}</td></tr>"
        for role, v in length.items()
    )
    level = f"{evaluation['config']['confidence']:.0%}"
    intervals = _interval(
        [
            ("win rate", pairwise["win_rate"], pairwise["win_rate_ci"]),
            ("length-controlled", pairwise["lc_win_rate"], pairwise["lc_win_rate_ci"]),
        ]
    )
    ifeval = _ifeval_table(evaluation["ifeval"]) if "ifeval" in evaluation else ""
    return (
        f'<section id="evaluation"><style>{STYLE}</style>'
        f"<h2>Evaluation: {html.escape(candidate['label'])} against "
        f"{html.escape(baseline['label'])}</h2>"
        f"<p>Candidate <code>{html.escape(candidate['model'])}</code>, baseline "
        f"<code>{html.escape(baseline['model'])}</code>; judge "
        f"<code>{html.escape(judge_name.strip())}</code> ({html.escape(judge['judge'])}), "
        "both answer orders asked, a disagreement counts as a tie.</p>"
        f"{notes}"
        f"<h3>Judged win rate over {pairwise['num_prompts']} prompts</h3>"
        f"{_bar(pairwise['wins'], pairwise['ties'], pairwise['losses'])}"
        f"<p>{pairwise['wins']} wins, {pairwise['ties']} ties, {pairwise['losses']} losses. "
        f"Win rate {pairwise['win_rate']:.3f} [{pairwise['win_rate_ci'][0]:.3f}, "
        f"{pairwise['win_rate_ci'][1]:.3f}]; length-controlled {pairwise['lc_win_rate']:.3f} "
        f"[{pairwise['lc_win_rate_ci'][0]:.3f}, {pairwise['lc_win_rate_ci'][1]:.3f}] "
        f"({level} bootstrap intervals over prompts).</p>{intervals}"
        f"<table><tr><th>prompt set</th><th>prompts</th><th>win rate</th></tr>{by_set}</table>"
        f"<h3>Answer length</h3>{_length_plot(pairwise['length_points'], pairwise['length_fit'])}"
        "<table><tr><th>model</th><th>mean tokens</th><th>mean chars</th><th>cut at limit</th>"
        f"</tr>{lengths}</table>{ifeval}"
        f"<p>Took {evaluation['seconds']['total']:.0f} s.</p></section>"
    )


def add_to_report(run_dir: Path, evaluation: dict[str, Any]) -> Path:
    """Put the evaluation section into `report.html` (replacing an earlier one), or write a
    page holding only it when the run has no report."""
    path = run_dir / "report.html"
    section = render_evaluation(evaluation)
    if path.exists():
        page = path.read_text(encoding="utf-8")
        page = (
            SECTION.sub(lambda _: section, page)
            if SECTION.search(page)
            else page.replace("</body>", section + "</body>", 1)
        )
    else:
        page = (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>Evaluation of {html.escape(run_dir.name)}</title></head><body>"
            f"{section}</body></html>\n"
        )
    write_text(page, path)
    return path
