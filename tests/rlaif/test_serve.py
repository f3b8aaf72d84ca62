"""`orpo-pipeline serve` as a real server on a free loopback port, started and stopped here."""

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest

from orpo_pipeline import judges
from orpo_pipeline.formats import ConvertOptions, convert_files
from orpo_pipeline.formats.generate import Sampling, chat_ids, decode
from orpo_pipeline.models import load_model, load_tokenizer

REPO = Path(__file__).resolve().parents[2]
HH = REPO / "data" / "hh-rlhf-harmless-base" / "test.jsonl.gz"
JUDGE_PROMPT = REPO / "pipelines" / "judge_prompt.txt"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_server(model: str, *extra: str) -> Iterator[str]:
    """Start `orpo-pipeline serve` on a free 127.0.0.1 port; yield its base URL; stop it."""
    port = free_port()
    command = [sys.executable, "-m", "orpo_pipeline", "serve", model, "--port", str(port), *extra]
    env = os.environ | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    process = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/v1/models", timeout=2):
                    break
            except urllib.error.HTTPError:
                break  # it answers (401 without the key)
            except OSError:
                pass
            assert time.monotonic() < deadline, "server did not start within 300 s"
            time.sleep(0.2)
        yield f"{base}/v1"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def tiny_server(tiny_lm) -> Iterator[str]:
    with running_server(str(tiny_lm), "--name", "tiny", "--api-key", "sesame") as url:
        yield url


MESSAGES = [{"role": "user", "content": "tell me a fact about honey"}]


def test_completion_equals_in_process_decoding_with_logprobs(tiny_server, tiny_lm):
    client = openai.OpenAI(base_url=tiny_server, api_key="sesame")
    response = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3
    )
    model, tokenizer = load_model(str(tiny_lm)), load_tokenizer(str(tiny_lm))
    ids = chat_ids(tokenizer, MESSAGES)
    (expected,) = decode(model, tokenizer, [ids], Sampling(max_new_tokens=8), seeds=[0])
    choice = response.choices[0]
    assert choice.message.content == expected.text
    assert choice.finish_reason == expected.finish_reason
    entries = choice.logprobs.content
    assert len(entries) == expected.num_tokens == response.usage.completion_tokens
    assert response.usage.prompt_tokens == len(ids)
    for entry in entries:
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.logprob  # greedy picks the top token
        assert entry.top_logprobs[0].token == entry.token
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_streaming_sends_the_same_answer_token_by_token(tiny_server):
    client = openai.OpenAI(base_url=tiny_server, api_key="sesame")
    settings = {"model": "tiny", "messages": MESSAGES, "max_tokens": 8, "temperature": 0.9}
    whole = client.chat.completions.create(**settings, seed=5).choices[0].message.content
    chunks = list(client.chat.completions.create(**settings, seed=5, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks).strip() == whole
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_api_key_and_model_name_are_checked(tiny_server):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=tiny_server, api_key="wrong").models.list()
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(base_url=tiny_server, api_key="sesame").chat.completions.create(
            model="other", messages=MESSAGES, max_tokens=2
        )


def shortest_hh_pairs(count: int) -> list[tuple[list[dict], str, str]]:
    """The `count` HH-RLHF pairs with the shortest texts (short judge contexts)."""
    pairs = convert_files([HH], ConvertOptions(format="hh_rlhf")).pairs
    rows = sorted(
        pairs.iter_rows(named=True),
        key=lambda r: (
            sum(len(m["content"]) for m in r["prompt"] + r["chosen"] + r["rejected"]),
            r["id"],
        ),
    )
    return [
        (r["prompt"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows[:count]
    ]


@pytest.mark.integration
def test_llm_judge_through_serve_equals_in_process_verdict_for_verdict(default_checkpoint):
    template = JUDGE_PROMPT.read_text()
    items = [(prompt, [a, b]) for prompt, a, b in shortest_hh_pairs(8)]
    local = judges.compare(template, items, judges.LocalLabels(str(default_checkpoint)))
    with running_server(str(default_checkpoint), "--name", "judge") as url:
        remote = judges.compare(template, items, judges.EndpointLabels(url, "judge"))
    assert len(local) == len(remote) == 8
    for (ours, _), (theirs, _) in zip(local, remote, strict=True):
        ((a,), (b,)) = ours, theirs
        assert (a.verdict_ab, a.verdict_ba, a.winner, a.reason) == (
            b.verdict_ab,
            b.verdict_ba,
            b.winner,
            b.reason,
        )
        assert a.p_first_ab == pytest.approx(b.p_first_ab, abs=1e-3)
        assert a.p_first_ba == pytest.approx(b.p_first_ba, abs=1e-3)
