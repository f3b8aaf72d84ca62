"""Pairwise verdicts in both orders with stub judges: position bias becomes ties."""

import pytest

from orpo_pipeline.evaluation.config import EvalConfig
from orpo_pipeline.evaluation.run import pairwise_verdicts, scored_verdicts, win_rate_summary

TEMPLATE = "{conversation} [A] {response_a} [B] {response_b} [end]"
PROMPTS = [[{"role": "user", "content": f"question {i}"}] for i in range(4)]
CANDIDATE = ["a long answer here", "short", "a long answer again", "same"]
BASELINE = ["short", "a much longer answer", "tiny", "same"]


def answers(chat):
    text = chat[0]["content"]
    a = text.split("[A] ", 1)[1].split(" [B]", 1)[0]
    b = text.split("[B] ", 1)[1].split(" [end]", 1)[0]
    return a, b


def always_a(chats):
    """Pure position bias: 'A' whatever is shown there."""
    return [(-0.1, -2.5) for _ in chats]


def prefers_longer(chats):
    """Consistent in both orders: the longer answer wins; equal lengths give no preference."""
    out = []
    for chat in chats:
        a, b = answers(chat)
        out.append(
            (-1.0, -1.0) if len(a) == len(b) else (-0.2, -1.9) if len(a) > len(b) else (-1.9, -0.2)
        )
    return out


def test_a_judge_that_always_says_a_yields_only_ties():
    verdicts = pairwise_verdicts(TEMPLATE, PROMPTS, CANDIDATE, BASELINE, always_a)
    assert [v["outcome"] for v in verdicts] == [0.5] * 4
    assert {v["reason"] for v in verdicts} == {"order_disagreement"}
    assert {(v["verdict_candidate_first"], v["verdict_baseline_first"]) for v in verdicts} == {
        ("A", "A")
    }
    assert all(v["p_candidate"] == pytest.approx(0.5) for v in verdicts)
    summary = win_rate_summary([v["outcome"] for v in verdicts], [5, -10, 8, 0], EvalConfig())
    assert (summary["wins"], summary["ties"], summary["losses"]) == (0, 4, 0)
    assert summary["win_rate"] == summary["lc_win_rate"] == pytest.approx(0.5)
    assert summary["win_rate_ci"] == [0.5, 0.5]


def test_a_consistent_judge_is_read_in_both_orders():
    verdicts = pairwise_verdicts(TEMPLATE, PROMPTS, CANDIDATE, BASELINE, prefers_longer)
    assert [v["outcome"] for v in verdicts] == [1.0, 0.0, 1.0, 0.5]
    assert [v["reason"] for v in verdicts] == [None, None, None, "no_label_preferred"]
    assert verdicts[0]["verdict_candidate_first"] == "A"
    assert verdicts[0]["verdict_baseline_first"] == "B"
    summary = win_rate_summary([v["outcome"] for v in verdicts], [13, -15, 15, 0], EvalConfig())
    assert (summary["wins"], summary["ties"], summary["losses"]) == (2, 1, 1)
    assert summary["win_rate"] == pytest.approx(2.5 / 4)


def test_reward_model_verdicts_compare_scores():
    def by_length(items):
        return [float(len(text)) for _, text in items]

    verdicts = scored_verdicts(PROMPTS, CANDIDATE, BASELINE, by_length)
    assert [v["outcome"] for v in verdicts] == [1.0, 0.0, 1.0, 0.5]
    assert verdicts[3]["reason"] == "equal_scores"
