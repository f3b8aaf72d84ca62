"""Data card of a pipeline run: counts, rejects, source mix and length plots, as HTML and Markdown.

The HTML is one self-contained file (inline CSS and SVG, no scripts, nothing fetched).
"""

import html
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from orpo_pipeline.exprs import contents
from orpo_pipeline.io import write_text
from orpo_pipeline.tokens import token_counter

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

COLORS = {"prompt": "#4c72b0", "chosen": "#55a868", "rejected": "#c44e52", "other": "#8172b2"}
_SPARKS = "▁▂▃▄▅▆▇█"
_PERCENTILES = (50, 90, 99)


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 or float(value).is_integer() else f"{value:,.2f}"


def _nice_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Bin edges over [1st, 99th] percentile widened to whole numbers, so outliers do not flatten
    the plot; values outside land in the end bins."""
    low, high = np.percentile(values, [1, 99])
    if values.dtype.kind in "iu" or np.all(values == np.round(values)):
        low, high = np.floor(low), np.ceil(high)
    if high <= low:
        high = low + 1
    return np.linspace(low, high, bins + 1)


def _histogram(values: np.ndarray, bins: int = 30) -> tuple[np.ndarray, np.ndarray]:
    edges = _nice_edges(values, bins)
    counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
    return counts, edges


def _svg_histogram(
    values: np.ndarray, *, title: str, x_label: str, color: str, zero_line: bool = False
) -> str:
    width, height, left, right, top, bottom = 360, 210, 48, 16, 28, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{width / 2}" y="16" class="title">{html.escape(title)}</text>',
    ]
    if len(values) == 0:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" class="title">no data</text></svg>')
        return "".join(parts)
    counts, edges = _histogram(values)
    peak = max(int(counts.max()), 1)
    bar_w = plot_w / len(counts)
    for i, count in enumerate(counts):
        bar_h = plot_h * count / peak
        parts.append(
            f'<rect x="{left + i * bar_w:.1f}" y="{top + plot_h - bar_h:.1f}" '
            f'width="{max(bar_w - 1, 1):.1f}" height="{bar_h:.1f}" fill="{color}">'
            f"<title>{_fmt(edges[i])} to {_fmt(edges[i + 1])}: {count}</title></rect>"
        )
    base = top + plot_h
    parts.append(f'<line x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}" class="axis"/>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{base}" class="axis"/>')
    span = edges[-1] - edges[0]
    for fraction, anchor in ((0, "start"), (0.5, ""), (1, "end")):
        x = left + plot_w * fraction
        label = _fmt(edges[0] + span * fraction)
        parts.append(f'<text x="{x:.1f}" y="{base + 14}" class="tick {anchor}">{label}</text>')
    if zero_line and edges[0] < 0 < edges[-1]:
        x = left + plot_w * (0 - edges[0]) / span
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{base}" class="zero"/>')
    parts.append(f'<text x="{left - 4}" y="{top + 4}" class="tick end">{peak}</text>')
    parts.append(f'<text x="{left - 4}" y="{base}" class="tick end">0</text>')
    parts.append(
        f'<text x="{left + plot_w / 2}" y="{height - 6}" class="label">'
        f"{html.escape(x_label)}</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def _svg_bars(labels: Sequence[str], counts: Sequence[int], *, title: str, color: str) -> str:
    row_h, label_w, bar_w, top = 20, 300, 420, 28
    width, height = label_w + bar_w + 70, top + row_h * max(len(labels), 1) + 8
    peak = max([*counts, 1])
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="8" y="16" class="title start">{html.escape(title)}</text>',
    ]
    if not labels:
        parts.append(f'<text x="8" y="{top + 14}" class="tick start">none</text>')
    for i, (label, count) in enumerate(zip(labels, counts, strict=True)):
        y = top + i * row_h
        length = bar_w * count / peak
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 14}" class="tick end">{html.escape(label)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{max(length, 1):.1f}" height="{row_h - 6}" '
            f'fill="{color}"/><text x="{label_w + length + 4:.1f}" y="{y + 14}" '
            f'class="tick start">{count:,}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _sparkline(values: np.ndarray) -> str:
    if len(values) == 0:
        return ""
    counts, _ = _histogram(values, bins=24)
    levels = np.ceil(counts / max(counts.max(), 1) * (len(_SPARKS) - 1)).astype(int)
    return "".join(_SPARKS[level] for level in levels)


def _summary(values: np.ndarray) -> dict[str, str]:
    if len(values) == 0:
        return dict.fromkeys(("min", "mean", *(f"p{p}" for p in _PERCENTILES), "max"), "–")
    percentiles = np.percentile(values, _PERCENTILES)
    return {
        "min": _fmt(values.min()),
        "mean": _fmt(values.mean()),
        **{f"p{p}": _fmt(v) for p, v in zip(_PERCENTILES, percentiles, strict=True)},
        "max": _fmt(values.max()),
    }


def _stats(pairs: pl.LazyFrame, tokenizer: "PreTrainedTokenizerBase | None") -> pl.DataFrame:
    """One small row per pair: character (and token) lengths, score margin and source.

    Streams over `pairs`, so only these numbers, never the texts, are held for all rows.
    """
    schema = pairs.collect_schema()
    texts = {c: contents(c) for c in ("prompt", "chosen", "rejected")}
    columns = [text.str.len_chars().cast(pl.Int64).alias(f"chars_{c}") for c, text in texts.items()]
    if tokenizer is not None:
        tokens = token_counter(tokenizer)
        columns += [tokens(text).cast(pl.Int64).alias(f"tokens_{c}") for c, text in texts.items()]
    if {"score_chosen", "score_rejected"} <= set(schema):
        columns.append((pl.col("score_chosen") - pl.col("score_rejected")).alias("margin"))
    else:
        columns.append(pl.lit(None, dtype=pl.Float64).alias("margin"))
    columns.append(pl.col("source").cast(pl.String))
    return pairs.select(columns).collect(engine="streaming")


def _lengths(stats: pl.DataFrame) -> dict[str, dict[str, np.ndarray]]:
    """Length arrays by unit (chars, tokens) and column."""
    lengths: dict[str, dict[str, np.ndarray]] = {}
    for name in stats.columns:
        unit, _, column = name.partition("_")
        if unit in ("chars", "tokens"):
            lengths.setdefault(unit, {})[column] = stats[name].to_numpy()
    return lengths


def _cell(value: Any) -> str:
    text = str(value)
    numeric = re.fullmatch(r"[-−]?[\d,.]+( %)?", text) is not None
    return f"<td class='num'>{text}</td>" if numeric else f"<td>{html.escape(text)}</td>"


def _table_html(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(cell) for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _table_md(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(r) for r in rows)])


def _reject_summary(
    rejects: dict[str, pl.LazyFrame], labels: Mapping[str, Mapping[str, str]]
) -> tuple[dict[str, int], dict[str, pl.DataFrame]]:
    """Rejected rows per source, and per value of each label column a stage declares.

    `labels` maps a rejects name to `{reason: column}`. Later stages carry earlier label columns
    along, so only the rows rejected for that very reason are counted.
    """
    by_source: dict[str, int] = {}
    by_label: dict[str, pl.DataFrame] = {}
    for name, lazy in rejects.items():
        present = set(lazy.collect_schema().names())
        declared = {r: c for r, c in labels.get(name, {}).items() if c in present}
        wanted = [c for c in ("reason", "source", *declared.values()) if c in present]
        frame = lazy.select(wanted).collect(engine="streaming")
        if "source" in frame.columns:
            for source, count in frame.group_by("source").len().iter_rows():
                by_source[source] = by_source.get(source, 0) + count
        for reason, column in declared.items():
            counts = (
                frame.filter(pl.col("reason") == reason)
                .group_by(column)
                .len("rejected")
                .sort(["rejected", column], descending=[True, False])
            )
            if counts.height:
                by_label[f"{name} · {reason} by {column}"] = counts
    return by_source, by_label


def _label_rows(counts: pl.DataFrame) -> list[tuple[str, str]]:
    """Distinct values, rows, then the ten values with the most rejected rows."""
    top = counts.head(10).rows()
    return [
        ("distinct values", f"{counts.height:,}"),
        ("rejected rows", f"{counts['rejected'].sum():,}"),
        *((str(value), f"{count:,}") for value, count in top),
    ]


def _judge_summary(judgments: Sequence[dict[str, Any]]) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Rows of the judge table and every response score, over distinct judged prompts.

    Tie rate: comparisons without a winner (pairwise judges), and prompts whose judged responses
    all scored the same. Order agreement: comparisons whose two orders named the same response.
    Length bias: how often the chosen answer is the longer one (equal lengths left out).
    """
    prompts = {json.dumps(j["responses"]): j for j in judgments}.values()
    responses = [
        r
        for j in prompts
        for r in zip(j["responses"], j["finish_reasons"], j["scores"], strict=True)
    ]
    comparisons = [c for j in prompts for c in j["comparisons"]]
    scores = np.array([s for _, _, s in responses if s is not None], dtype=float)
    judged = [[s for s in j["scores"] if s is not None] for j in prompts]
    all_tied = sum(len(s) >= 2 and len(set(s)) == 1 for s in judged)
    pairs = [j for j in judgments if j["chosen_index"] is not None]
    longer = [
        len(j["responses"][j["chosen_index"]]) > len(j["responses"][j["rejected_index"]])
        for j in pairs
        if len(j["responses"][j["chosen_index"]]) != len(j["responses"][j["rejected_index"]])
    ]

    def share(part: int, whole: int) -> str:
        return f"{100 * part / whole:.1f} % ({part:,} of {whole:,})" if whole else "–"

    rows = [
        ("judge", "; ".join(sorted({j["judge"] for j in prompts}))),
        ("prompts judged", f"{len(prompts):,}"),
        ("responses", f"{len(responses):,}"),
        ("responses truncated", f"{sum(f == 'length' for _, f, _ in responses):,}"),
        ("responses empty", f"{sum(not t.strip() for t, _, _ in responses):,}"),
        ("responses scored", f"{len(scores):,}"),
        ("prompts with all scores tied", share(all_tied, sum(len(s) >= 2 for s in judged))),
    ]
    if comparisons:
        ties = sum(c["winner"] is None for c in comparisons)
        agree = sum(c["reason"] != "order_disagreement" for c in comparisons)
        rows += [
            ("comparisons (each in both orders)", f"{len(comparisons):,}"),
            ("comparisons tied", share(ties, len(comparisons))),
            ("order agreement", share(agree, len(comparisons))),
        ]
    rows.append(("longer answer chosen", share(sum(longer), len(longer))))
    seconds = sum(j["seconds"] for j in prompts)
    rows.append(("judge time", f"{seconds:,.1f} s ({seconds / max(len(prompts), 1):.2f} s/prompt)"))
    return rows, scores


def write_data_card(
    output_dir: Path,
    report: dict[str, Any],
    pairs: pl.DataFrame | pl.LazyFrame,
    rejects: dict[str, pl.DataFrame | pl.LazyFrame] | None = None,
    *,
    labels: Mapping[str, Mapping[str, str]] | None = None,
    tokenizer: "PreTrainedTokenizerBase | None" = None,
    judgments: Sequence[dict[str, Any]] = (),
) -> tuple[Path, Path]:
    """Write `datacard.html` and `datacard.md` into `output_dir`.

    Args:
        output_dir: Where the two files go.
        report: The run's `report.json` as a dict (`PipelineReport.model_dump(mode="json")`).
        pairs: The kept canonical pairs (all output files together); a lazy frame is streamed.
        rejects: Reject frames (or lazy frames) by name (e.g. `"02_filter"`), as the runner
            writes them: a `reason` column plus the pair columns. Adds rejects per source.
        labels: Per rejects name, the label columns its stage declares (`{reason: column}`,
            `StageConfig.reject_labels`); the card counts that reason's rejects per value.
        tokenizer: Adds token-length distributions when given.
        judgments: The `judgment` of every pair and rejected prompt from `binarize` on; adds
            the judge section (score histogram, tie rate, order agreement, length bias).

    Returns:
        The paths of `datacard.html` and `datacard.md`.
    """
    stages = report.get("stages", [])
    name = report.get("name", "pipeline run")
    stats = _stats(pairs.lazy(), tokenizer)
    num_pairs = stats.height
    rows_in = stages[0]["rows_in"] if stages else num_pairs
    total_rejected = sum(sum(s["rejected"].values()) for s in stages)
    lengths = _lengths(stats)
    chosen_minus_rejected = lengths["chars"]["chosen"] - lengths["chars"]["rejected"]
    chosen_longer = float((chosen_minus_rejected > 0).mean() * 100) if num_pairs else 0.0
    margins = stats["margin"].drop_nulls().to_numpy()
    sources = stats.group_by("source").len().sort(["len", "source"], descending=[True, False])
    rejected_by_source, by_label = _reject_summary(
        {k: v.lazy() for k, v in (rejects or {}).items()}, labels or {}
    )

    counts_rows = [
        ("pairs in", f"{rows_in:,}"),
        ("pairs out", f"{num_pairs:,}"),
        ("rejected", f"{total_rejected:,}"),
        ("chosen longer than rejected", f"{chosen_longer:.1f} %"),
        *((f"output {file}", f"{rows:,}") for file, rows in report.get("outputs", {}).items()),
    ]
    stage_rows = [
        (
            i,
            s["stage"],
            f"{s['rows_in']:,}",
            f"{s['rows_out']:,}",
            ", ".join(f"{reason}: {n:,}" for reason, n in sorted(s["rejected"].items())) or "–",
        )
        for i, s in enumerate(stages)
    ]
    reason_labels = [
        f"{i:02d} {s['stage']} · {reason}" for i, s in enumerate(stages) for reason in s["rejected"]
    ]
    reason_counts = [n for s in stages for n in s["rejected"].values()]
    source_rows = [
        (
            source,
            f"{count:,}",
            f"{100 * count / max(num_pairs, 1):.1f} %",
            f"{rejected_by_source.get(source, 0):,}",
        )
        for source, count in sources.iter_rows()
    ]
    source_rows += [
        (source, "0", "0.0 %", f"{count:,}")
        for source, count in sorted(rejected_by_source.items())
        if source not in set(sources["source"].to_list())
    ]
    length_rows = [
        (unit, column, *_summary(values).values())
        for unit, by_column in lengths.items()
        for column, values in by_column.items()
    ]
    length_header = ("unit", "column", "min", "mean", *(f"p{p}" for p in _PERCENTILES), "max")

    plots = [
        _svg_histogram(
            values,
            title=f"{column} length ({unit})",
            x_label=unit,
            color=COLORS.get(column, COLORS["other"]),
        )
        for unit, by_column in lengths.items()
        for column, values in by_column.items()
    ]
    plots.append(
        _svg_histogram(
            chosen_minus_rejected,
            title="chosen − rejected length",
            x_label="chars",
            color=COLORS["other"],
            zero_line=True,
        )
    )
    if len(margins):
        plots.append(
            _svg_histogram(
                margins,
                title="score margin",
                x_label="score_chosen − score_rejected",
                color="#937860",
                zero_line=True,
            )
        )

    html_parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Data card: {html.escape(name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Data card: {html.escape(name)}</h1>",
        "<h2>Counts</h2>",
        _table_html(("", "value"), counts_rows),
        "<h2>Stages</h2>",
        _table_html(("#", "stage", "in", "out", "rejected by reason"), stage_rows),
        _svg_bars(
            reason_labels, reason_counts, title="Rejects by reason", color=COLORS["rejected"]
        ),
        "<h2>Sources</h2>",
        _table_html(("source", "pairs", "share", "rejected"), source_rows),
        _svg_bars(
            sources["source"].to_list(),
            sources["len"].to_list(),
            title="Pairs by source",
            color=COLORS["prompt"],
        ),
        "<h2>Lengths</h2>",
        _table_html(length_header, length_rows),
        "<p class='note'>Histograms span the 1st to 99th percentile; the end bins hold the rest."
        " Hover a bar for its range and count.</p>",
        f"<div class='grid'>{''.join(plots)}</div>",
    ]
    md_parts = [
        f"# Data card: {name}",
        "## Counts",
        _table_md(("", "value"), counts_rows),
        "## Stages",
        _table_md(("#", "stage", "in", "out", "rejected by reason"), stage_rows),
        "## Sources",
        _table_md(("source", "pairs", "share", "rejected"), source_rows),
        "## Lengths",
        _table_md(length_header, length_rows),
        _table_md(
            ("distribution", "histogram (1st to 99th percentile)"),
            [
                *(
                    (f"{column} ({unit})", f"`{_sparkline(values)}`")
                    for unit, by_column in lengths.items()
                    for column, values in by_column.items()
                ),
                ("chosen − rejected (chars)", f"`{_sparkline(chosen_minus_rejected)}`"),
                *([("score margin", f"`{_sparkline(margins)}`")] if len(margins) else []),
            ],
        ),
    ]
    if by_label:
        html_parts.append("<h2>Rejects by label</h2>")
        md_parts.append("## Rejects by label")
    for title, counts in by_label.items():
        rows = _label_rows(counts)
        html_parts += [f"<h3>{html.escape(title)}</h3>", _table_html(("", "rejected"), rows)]
        md_parts += [f"### {title}", _table_md(("", "rejected"), rows)]
    if judgments:
        judge_rows, scores = _judge_summary(judgments)
        histogram = _svg_histogram(
            scores, title="response scores", x_label="score", color="#937860"
        )
        html_parts += ["<h2>Judge</h2>", _table_html(("", ""), judge_rows), histogram]
        md_parts += [
            "## Judge",
            _table_md(("", ""), [*judge_rows, ("response scores", f"`{_sparkline(scores)}`")]),
        ]
    html_parts.append("</body></html>")

    output_dir.mkdir(parents=True, exist_ok=True)
    html_path, md_path = output_dir / "datacard.html", output_dir / "datacard.md"
    write_text("\n".join(html_parts) + "\n", html_path)
    write_text("\n\n".join(md_parts) + "\n", md_path)
    return html_path, md_path


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto;
       max-width: 1140px; color: #222; }
h1 { font-size: 24px; } h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { font-size: 12px; color: #555; }
.grid { display: grid; grid-template-columns: repeat(3, 370px); gap: 8px; }
svg { background: #fff; }
svg .title { font-size: 13px; font-weight: 600; text-anchor: middle; }
svg .tick { font-size: 11px; fill: #444; text-anchor: middle; }
svg .label { font-size: 11px; fill: #444; text-anchor: middle; }
svg .end { text-anchor: end; } svg .start { text-anchor: start; }
svg .axis { stroke: #888; stroke-width: 1; }
svg .zero { stroke: #222; stroke-width: 1; stroke-dasharray: 3 3; }
"""
