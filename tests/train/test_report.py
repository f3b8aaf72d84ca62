"""`report.html`: self-contained curves of the logged metrics and the eval before and after."""

import json
import re

from orpo_pipeline.train.loop import train
from orpo_pipeline.train.report import CURVES, SUMMARY_METRICS, TOP, render_report, write_report


def figure(page: str, metric: str) -> str:
    match = re.search(rf'<figure data-metric="{re.escape(metric)}">(.*?)</figure>', page)
    assert match, f"no chart for {metric}"
    return match.group(1)


def points(chart: str, series: str) -> list[tuple[int, str]]:
    """(step, value as printed) of the hoverable points of one series."""
    return [
        (int(step), value)
        for step, value in re.findall(rf"<title>{series} step (\d+): ([^<]+)</title>", chart)
    ]


def test_train_writes_a_self_contained_report_with_every_curve_and_the_eval_table(make_config):
    result = train(make_config(max_steps=4, eval_every_steps=2, num_sample_generations=0))
    run = result.run_dir
    page = (run / "report.html").read_text()
    for banned in ("<script", "http:", "https:", "src=", "href=", "@import"):
        assert banned not in page  # nothing is fetched when the file is opened

    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_lines = [line for line in lines if "loss" in line]
    eval_lines = [line for line in lines if "eval_loss" in line]
    assert [line["step"] for line in eval_lines] == [0, 2, 4]
    for metric, _ in CURVES:
        chart = figure(page, metric)
        assert points(chart, "train") == [(m["step"], f"{m[metric]:.6g}") for m in train_lines]
        if metric != "tokens_per_second":
            expected = [(m["step"], f"{m[f'eval_{metric}']:.6g}") for m in eval_lines]
            assert points(chart, "eval") == expected
        assert chart.count("<polyline") == (1 if metric == "tokens_per_second" else 2)

    before, after = result.eval_before, result.eval_after
    for name in SUMMARY_METRICS:
        row = re.search(rf"<tr><td>{re.escape(name)}</td>(.*?)</tr>", page).group(1)
        delta = after[f"eval_{name}"] - before[f"eval_{name}"]
        assert re.findall(r"<td>([^<]+)</td>", row) == [
            f"{before[f'eval_{name}']:.4f}",
            f"{after[f'eval_{name}']:.4f}",
            f"{delta:+.4f}",
        ]
    assert f"beta: {make_config().beta}" in page  # the config

    (run / "report.html").unlink()
    assert write_report(run) == run / "report.html"  # regenerated from the run directory alone
    assert (run / "report.html").read_text() == page


def test_curves_scale_to_the_plot_and_skip_non_finite_values():
    records = [
        {"step": 1, "loss": 2.0},
        {"step": 2, "loss": float("nan")},
        {"step": 3, "loss": 1.0},
        {"step": 4, "loss": 3.0},
    ]
    page = render_report(records, title="t", config_yaml="beta: 0.1\n")
    chart = figure(page, "loss")
    assert points(chart, "train") == [(1, "2"), (3, "1"), (4, "3")]
    ys = [float(y) for y in re.findall(r'cy="([\d.]+)"', chart)]
    assert ys[2] == TOP  # the largest value at the top, the smallest at the bottom
    assert ys[1] == max(ys) and ys[1] > ys[0] > ys[2]
    assert 'data-metric="nll_loss"' not in page  # nothing logged, no empty chart
    assert "No evaluation in this run." in page
