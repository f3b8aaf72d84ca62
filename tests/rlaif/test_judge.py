"""Judges: order-swapped pairwise verdicts, reward model, implicit reward, identities."""

import json
import math

import polars as pl
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from orpo_pipeline import judges
from orpo_pipeline.errors import ConfigError
from orpo_pipeline.formats.generate import chat_ids
from orpo_pipeline.models import load_tokenizer
from orpo_pipeline.records import PAIR_SCHEMA
from orpo_pipeline.stages.binarize import BinarizeConfig, binarize
from orpo_pipeline.stages.judge import (
    SHIPPED_JUDGE_PROMPT,
    JudgeConfig,
    build_judge,
    judge_frame,
)
from orpo_pipeline.stages.sample import RESPONSE
from tests.conftest import REPO
from tests.rlaif.conftest import JUDGE_PROMPT

PROMPT = [{"role": "user", "content": "tell me a fact about honey"}]


def sampled(responses):
    """A sampled frame: one row per list of (text, finish reason)."""
    return pl.DataFrame(
        {
            "prompt": [PROMPT] * len(responses),
            "_row": list(range(len(responses))),
            "source": ["test"] * len(responses),
            "responses": [
                [{"text": t, "finish_reason": f, "num_tokens": 1} for t, f in row]
                for row in responses
            ],
        },
        schema={
            "prompt": PAIR_SCHEMA["prompt"],
            "_row": pl.UInt32,
            "source": pl.String,
            "responses": pl.List(RESPONSE),
        },
    )


def answer_of(chat):
    """The (A, B) answers inside a judge chat built from JUDGE_PROMPT."""
    text = chat[0]["content"]
    a = text.split(" A ", 1)[1].split(" B ", 1)[0]
    b = text.split(" B ", 1)[1].rsplit(" answer A or B", 1)[0]
    return a, b


def always_a(chats):
    """A judge with pure position bias: it always says 'A', whichever answer is there."""
    return [(-0.1, -2.5) for _ in chats]


def prefers_longer(chats):
    """A consistent judge: the longer answer wins in either order."""
    out = []
    for chat in chats:
        a, b = answer_of(chat)
        out.append((-0.2, -1.9) if len(a) > len(b) else (-1.9, -0.2))
    return out


@pytest.fixture
def llm_config(judge_prompt):
    return JudgeConfig(judge="llm_judge", prompt_file=judge_prompt)


def test_order_dependent_verdicts_become_ties_with_the_reason(llm_config):
    frame = sampled([[("honey never spoils", "stop"), ("no", "stop"), ("bees", "stop")]])
    out = judge_frame(frame, llm_config, always_a, '{"judge": "stub"}')
    comparisons = out["comparisons"][0].to_list()
    assert len(comparisons) == 3  # every two of three responses
    for c in comparisons:
        assert (c["verdict_ab"], c["verdict_ba"], c["winner"]) == ("A", "A", None)
        assert c["reason"] == "order_disagreement"
        assert c["p_first_ab"] == pytest.approx(1 / (1 + math.exp(-2.4)))
        assert c["p_first_ba"] == pytest.approx(1 - c["p_first_ab"])
    assert out["scores"][0].to_list() == [0.5, 0.5, 0.5]
    pairs = binarize(out.lazy(), BinarizeConfig()).collect()
    assert pairs["_reason"].to_list() == ["judge_disagreed"]


def test_consistent_verdicts_pick_a_winner_and_rank_the_responses(llm_config):
    frame = sampled([[("no", "stop"), ("honey never spoils", "stop"), ("bees", "stop")]])
    out = judge_frame(frame, llm_config, prefers_longer, '{"judge": "stub"}')
    assert out["scores"][0].to_list() == [0.0, 1.0, 0.5]
    winners = [(c["first"], c["second"], c["winner"]) for c in out["comparisons"][0].to_list()]
    assert winners == [(0, 1, 1), (0, 2, 2), (1, 2, 1)]
    pair = binarize(out.lazy(), BinarizeConfig()).collect().row(0, named=True)
    assert (pair["chosen"][0]["content"], pair["rejected"][0]["content"]) == (
        "honey never spoils",
        "no",
    )
    assert pair["judgment"]["judge"] == '{"judge": "stub"}'


def leaning(content_lean):
    """A judge whose log-odds of 'A' is 3 nats with nothing to judge (only fillers shown), plus
    `content_lean(a, b)` when there are real answers."""

    def ask(chats):
        out = []
        for chat in chats:
            a, b = answer_of(chat)
            filler = a == b and a.strip() in judges.CONTENT_FREE
            odds = 3.0 + (0.0 if filler else content_lean(a, b))
            out.append((-0.05, -0.05 - odds))
        return out

    return ask


def test_calibration_takes_the_position_prior_out_and_keeps_order_disagreements_as_ties(
    llm_config,
):
    frame = sampled([[("no", "stop"), ("honey never spoils", "stop"), ("bees", "stop")]])
    longer = leaning(lambda a, b: 1.0 if len(a) > len(b) else -1.0)
    raw = judge_frame(frame, llm_config, longer, "{}")["comparisons"][0].to_list()
    assert {c["reason"] for c in raw} == {"order_disagreement"}  # 'A' in every order

    prior = judges.position_prior(JUDGE_PROMPT, longer)
    assert prior == pytest.approx(3.0)
    out = judge_frame(frame, llm_config, judges.calibrated(longer, prior), "{}")
    assert out["scores"][0].to_list() == [0.0, 1.0, 0.5]
    first = out["comparisons"][0][0]
    assert first["p_first_ab"] == pytest.approx(1 / (1 + math.exp(1.0)))  # calibrated log-odds -1
    assert first["p_first_ba"] == pytest.approx(1 / (1 + math.exp(1.0)))

    # A judge that leans to 'A' more whenever there is content still disagrees with itself.
    content_bias = leaning(lambda a, b: 1.0)
    prior = judges.position_prior(JUDGE_PROMPT, content_bias)
    out = judge_frame(frame, llm_config, judges.calibrated(content_bias, prior), "{}")
    assert {c["reason"] for c in out["comparisons"][0].to_list()} == {"order_disagreement"}
    assert binarize(out.lazy(), BinarizeConfig()).collect()["_reason"].to_list() == [
        "judge_disagreed"
    ]


def test_a_judge_without_label_logprobs_cannot_be_calibrated():
    def one_token_answers(chats):
        return [(0.0, -math.inf) for _ in chats]

    with pytest.raises(ConfigError, match="calibrate: false"):
        judges.position_prior(JUDGE_PROMPT, one_token_answers)


def test_truncated_and_empty_responses_are_not_judged(llm_config):
    frame = sampled([[("no", "stop"), ("honey never", "length"), ("  ", "stop"), ("bees", "stop")]])
    asked = []

    def counting(chats):
        asked.extend(chats)
        return prefers_longer(chats)

    out = judge_frame(frame, llm_config, counting, "{}")
    assert len(asked) == 2  # one comparison, both orders
    assert out["scores"][0].to_list() == [0.0, None, None, 1.0]


def test_local_label_logprobs_match_a_direct_forward(tiny_lm, llm_config):
    labels = judges.LocalLabels(str(tiny_lm), batch_size=2)
    chats = [
        judges.judge_chat(JUDGE_PROMPT, PROMPT, a, b)
        for a, b in [
            ("no", "honey never spoils"),
            ("honey never spoils", "no"),
            ("bees", "yes maybe"),
        ]
    ]
    got = labels(chats)
    tokenizer = load_tokenizer(str(tiny_lm))
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    ids = [tokenizer.convert_tokens_to_ids(x) for x in ("A", "B")]
    for chat, (a, b) in zip(chats, got, strict=True):
        logits = model(torch.tensor([chat_ids(tokenizer, chat)])).logits[0, -1]
        expected = logits.log_softmax(-1)[ids].tolist()
        assert (a, b) == pytest.approx(expected, abs=1e-5)
    identity = labels.identity()
    assert identity["model"] == str(tiny_lm) and len(identity["sha256"]) == 64


def test_the_built_llm_judge_is_calibrated_by_default(tiny_lm, judge_prompt):
    template = judge_prompt.read_text(encoding="utf-8")
    chats = [judges.judge_chat(template, PROMPT, "no", "honey never spoils")]
    labels = judges.LocalLabels(str(tiny_lm))
    (raw_a, raw_b), prior = labels(chats)[0], judges.position_prior(template, labels)

    judge, identity = build_judge(JudgeConfig(model=str(tiny_lm), prompt_file=judge_prompt))
    assert identity["position_prior"] == pytest.approx(prior, abs=1e-6)
    ((a, b),) = judge(chats)
    assert a - b == pytest.approx(raw_a - raw_b - prior, abs=1e-5)

    config = JudgeConfig(model=str(tiny_lm), prompt_file=judge_prompt, calibrate=False)
    judge, identity = build_judge(config)
    assert "position_prior" not in identity
    assert judge(chats)[0] == pytest.approx((raw_a, raw_b), abs=1e-6)


def test_reward_model_scores_equal_the_classifier_logit(tiny_rm):
    config = JudgeConfig(judge="reward_model", model=str(tiny_rm), batch_size=2)
    frame = sampled([[("no", "stop"), ("honey never spoils", "stop"), ("x", "length")]] * 2)
    judge, identity = build_judge(config)
    out = judge_frame(frame, config, judge, json.dumps(identity))
    tokenizer = load_tokenizer(str(tiny_rm))
    model = AutoModelForSequenceClassification.from_pretrained(tiny_rm)
    for text, score in zip(
        ["no", "honey never spoils"], out["scores"][0].to_list()[:2], strict=True
    ):
        chat = [*PROMPT, {"role": "assistant", "content": text}]
        ids = tokenizer.apply_chat_template(chat, tokenize=False)
        encoded = tokenizer(ids, add_special_tokens=False, return_tensors="pt")
        assert score == pytest.approx(model(**encoded).logits[0, 0].item(), abs=1e-5)
    assert out["scores"][0][2] is None
    assert out["scores"][0].to_list()[:2] == pytest.approx(out["scores"][1].to_list()[:2], abs=1e-6)
    assert json.loads(out["judge"][0])["judge"] == "reward_model"
    assert out["comparisons"][0].to_list() == []


def test_implicit_reward_is_beta_times_the_log_ratio(tiny_lm, tiny_lm_other):
    config = JudgeConfig(
        judge="implicit_reward", model=str(tiny_lm_other), reference=str(tiny_lm), beta=0.5
    )
    frame = sampled([[("no", "stop"), ("honey never spoils", "stop")]])
    judge, identity = build_judge(config)
    out = judge_frame(frame, config, judge, json.dumps(identity))
    tokenizer = load_tokenizer(str(tiny_lm))
    policy = AutoModelForCausalLM.from_pretrained(tiny_lm_other)
    reference = AutoModelForCausalLM.from_pretrained(tiny_lm)

    def logp(model, text):
        head = chat_ids(tokenizer, PROMPT)
        chat = [*PROMPT, {"role": "assistant", "content": text}]
        ids = tokenizer(
            tokenizer.apply_chat_template(chat, tokenize=False), add_special_tokens=False
        )["input_ids"]
        logps = model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
        return sum(logps[t - 1, ids[t]].item() for t in range(len(head), len(ids)))

    for text, score in zip(["no", "honey never spoils"], out["scores"][0].to_list(), strict=True):
        expected = 0.5 * (logp(policy, text) - logp(reference, text))
        assert score == pytest.approx(expected, abs=1e-4)
    same = JudgeConfig(judge="implicit_reward", model=str(tiny_lm), reference=str(tiny_lm))
    judge, identity = build_judge(same)
    scores = judge_frame(frame, same, judge, "{}")["scores"][0].to_list()
    assert scores == [0.0, 0.0]  # a policy equal to its reference has no preference


def test_config_checks_name_the_field():
    with pytest.raises(ValueError, match="reference"):
        JudgeConfig(judge="implicit_reward")
    with pytest.raises(ValueError, match="endpoint"):
        JudgeConfig(judge="reward_model", endpoint="http://127.0.0.1:1/v1")


def test_the_default_judge_prompt_ships_in_the_package_and_pipelines_links_to_it():
    assert JudgeConfig().prompt_path == SHIPPED_JUDGE_PROMPT
    assert (REPO / "pipelines" / "judge_prompt.txt").resolve() == SHIPPED_JUDGE_PROMPT.resolve()
    template = SHIPPED_JUDGE_PROMPT.read_text(encoding="utf-8")
    assert all(f"{{{name}}}" in template for name in ("conversation", "response_a", "response_b"))
