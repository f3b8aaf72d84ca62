"""The three judges of AI feedback: a reward model, a chat model as pairwise judge, and a policy's
implicit reward against its reference.

A pairwise judge is asked about every two responses in both orders. Its verdict is read from the
next-token log-probabilities of the answer labels ('A', 'B'), never parsed from free text; when
the two orders disagree the comparison is a tie and keeps the reason. A small judge leans to one
label whatever the answers are; `calibrated` takes that position prior, measured on content-free
prompts, out of its log-odds before the orders are compared.
"""

import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from orpo_pipeline.errors import ConfigError
from orpo_pipeline.formats.generate import chat_ids, model_sha256
from orpo_pipeline.formats.rows import MessageDict
from orpo_pipeline.io import sha256_file

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

LABELS = ("A", "B")
TOP_LOGPROBS = 20
"""Alternatives an endpoint is asked for (the OpenAI API's maximum)."""

LabelLogprobs = Callable[[list[list[MessageDict]]], list[tuple[float, float]]]
"""Judge chats -> (log P('A'), log P('B')) of each chat's first answer token."""
Scorer = Callable[[Sequence[tuple[list[MessageDict], str]]], list[float]]
"""(prompt, response) items -> one score each, higher is better."""


class Comparison(NamedTuple):
    """Responses `first` and `second` judged in both orders.

    `verdict_ab` is the label picked with `first` shown as A, `verdict_ba` with `second` shown as
    A; `p_first_ab` and `p_first_ba` are the probability that `first` is better in each order
    (the two label probabilities renormalised). `winner` is None for a tie, with a `reason`.
    """

    first: int
    second: int
    verdict_ab: str | None
    verdict_ba: str | None
    p_first_ab: float
    p_first_ba: float
    winner: int | None
    reason: str | None


def render_conversation(prompt: list[MessageDict]) -> str:
    """The prompt as 'User: ...' / 'Assistant: ...' lines for a judge prompt."""
    names = {"user": "User", "assistant": "Assistant", "system": "System", "tool": "Tool"}
    return "\n\n".join(f"{names[m['role']]}: {m['content']}" for m in prompt)


def judge_chat(template: str, prompt: list[MessageDict], a: str, b: str) -> list[MessageDict]:
    """The judge's chat: the template with {conversation}, {response_a}, {response_b} filled in."""
    text = template.replace("{conversation}", render_conversation(prompt))
    text = text.replace("{response_a}", a).replace("{response_b}", b)
    return [{"role": "user", "content": text}]


CONTENT_FREE = ("N/A", "", "[MASK]")
"""Fillers that stand for the conversation and both answers when a judge's position prior is
measured (Zhao et al. 2021, "Calibrate Before Use")."""


def position_prior(template: str, ask: LabelLogprobs) -> float:
    """The judge's log-odds of 'A' over 'B' when there is nothing to judge: the mean, over the
    content-free fillers, of log P('A') - log P('B') with the filler as the conversation and as
    both answers."""
    chats = [judge_chat(template, [{"role": "user", "content": f}], f, f) for f in CONTENT_FREE]
    odds = [a - b for a, b in ask(chats)]
    if not all(math.isfinite(o) for o in odds):
        msg = (
            "the judge gave no log-probability for 'A' or 'B' on a content-free prompt, so its "
            "position prior cannot be measured; set `calibrate: false`"
        )
        raise ConfigError(msg)
    return sum(odds) / len(odds)


def calibrated(ask: LabelLogprobs, prior: float) -> LabelLogprobs:
    """The judge with its position prior taken out: each answer's log-odds of 'A' over 'B' is
    lowered by `prior` (only the difference of the pair it returns is read)."""

    def ask_calibrated(chats: list[list[MessageDict]]) -> list[tuple[float, float]]:
        return [(a - prior, b) for a, b in ask(chats)]

    return ask_calibrated


def _verdict(logprobs: tuple[float, float]) -> str | None:
    a, b = logprobs
    return None if a == b else LABELS[0] if a > b else LABELS[1]


def _p_a(logprobs: tuple[float, float]) -> float:
    a, b = logprobs
    if a == b:
        return 0.5
    return 1 / (1 + math.exp(b - a)) if b - a < 700 else 0.0


def compare(
    template: str,
    items: Sequence[tuple[list[MessageDict], list[str | None]]],
    ask: LabelLogprobs,
) -> list[tuple[list[Comparison], list[float | None]]]:
    """Judge every two responses of each item (prompt, responses; None = not to be judged) in
    both orders with one call to `ask`; return each item's comparisons and per-response scores.

    A response's score is its share of wins, a tie counting half; unjudged responses score None.
    """
    plan = []
    for prompt, responses in items:
        judged = [i for i, r in enumerate(responses) if r is not None]
        for i, j in combinations(judged, 2):
            plan.append((prompt, responses[i], responses[j], i, j))
    chats = []
    for prompt, a, b, _, _ in plan:
        chats += [judge_chat(template, prompt, a, b), judge_chat(template, prompt, b, a)]
    answers = ask(chats) if chats else []
    results, cursor = [], 0
    for _, responses in items:
        judged = [i for i, r in enumerate(responses) if r is not None]
        comparisons = []
        for i, j in combinations(judged, 2):
            ab, ba = answers[cursor], answers[cursor + 1]
            cursor += 2
            comparisons.append(_comparison(i, j, ab, ba))
        results.append((comparisons, _win_shares(len(responses), judged, comparisons)))
    assert cursor == len(answers)
    return results


def _comparison(i: int, j: int, ab: tuple[float, float], ba: tuple[float, float]) -> Comparison:
    verdict_ab, verdict_ba = _verdict(ab), _verdict(ba)
    if verdict_ab is None or verdict_ba is None:
        winner, reason = None, "no_label_preferred"
    elif verdict_ab == verdict_ba:
        winner, reason = None, "order_disagreement"
    else:
        winner, reason = (i if verdict_ab == LABELS[0] else j), None
    return Comparison(i, j, verdict_ab, verdict_ba, _p_a(ab), 1 - _p_a(ba), winner, reason)


def _win_shares(n: int, judged: list[int], comparisons: list[Comparison]) -> list[float | None]:
    wins = dict.fromkeys(judged, 0.0)
    for c in comparisons:
        if c.winner is None:
            wins[c.first] += 0.5
            wins[c.second] += 0.5
        else:
            wins[c.winner] += 1.0
    rounds = max(len(judged) - 1, 1)
    return [wins[i] / rounds if i in wins else None for i in range(n)]


def _left_padded(
    tokenizer: "PreTrainedTokenizerBase", ids: Sequence[Sequence[int]], device: "torch.device"
) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
    """Input ids, attention mask and position ids of left-padded rows, on `device`."""
    import torch

    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for r, row in enumerate(ids):
        input_ids[r, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[r, width - len(row) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return input_ids.to(device), mask.to(device), positions.to(device)


def _batches(order: list[int], size: int, description: str) -> Iterator[list[int]]:
    """Consecutive slices of `order`, with a progress bar (rate and time left) over items."""
    from tqdm.auto import tqdm

    with tqdm(total=len(order), desc=description, unit="seq") as bar:
        for start in range(0, len(order), size):
            yield order[start : start + size]
            bar.update(min(size, len(order) - start))


class LocalLabels:
    """Label log-probabilities from a local chat model, in length-sorted batches."""

    def __init__(self, model_name: str, *, batch_size: int = 8) -> None:
        from orpo_pipeline.models import (
            inference_device,
            load_model,
            load_tokenizer,
            resolve_model,
        )

        self.path = resolve_model(model_name)
        self.tokenizer = load_tokenizer(self.path)
        self.model = load_model(self.path).to(inference_device())
        self.batch_size = batch_size
        self.label_ids = [self._single_token(label) for label in LABELS]

    def _single_token(self, label: str) -> int:
        ids = self.tokenizer(label, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            msg = f"judge model {self.path}: label {label!r} is {len(ids)} tokens, not one"
            raise ConfigError(msg)
        return ids[0]

    def identity(self) -> dict[str, Any]:
        """The judge's name and the sha256 of its files."""
        return {"model": self.path, "sha256": model_sha256(self.path)}

    def __call__(self, chats: list[list[MessageDict]]) -> list[tuple[float, float]]:
        """(log P('A'), log P('B')) of the first answer token of each chat."""
        import torch

        ids = [chat_ids(self.tokenizer, chat) for chat in chats]
        order = sorted(range(len(ids)), key=lambda k: -len(ids[k]))
        out: list[tuple[float, float]] = [(0.0, 0.0)] * len(ids)
        for batch in _batches(order, self.batch_size, f"judging {len(ids)} prompts"):
            input_ids, mask, positions = _left_padded(
                self.tokenizer, [ids[k] for k in batch], self.model.device
            )
            with torch.inference_mode():
                logits = self.model(
                    input_ids=input_ids,
                    attention_mask=mask,
                    position_ids=positions,
                    logits_to_keep=1,  # the LM head on the answer position only
                ).logits[:, -1, :]
            logprobs = logits.float().log_softmax(-1)[:, self.label_ids].tolist()
            for k, (a, b) in zip(batch, logprobs, strict=True):
                out[k] = (a, b)
        return out


class EndpointLabels:
    """Label log-probabilities from an OpenAI-compatible chat endpoint.

    Asks for one token at temperature 0 with its top log-probabilities; a label missing from
    them counts as -inf. A server that returns no log-probabilities is read from the one-token
    answer itself (log-probability 0 for the label it names).
    """

    def __init__(
        self, base_url: str, model: str, *, api_key: str | None = None, concurrency: int = 4
    ) -> None:
        from openai import OpenAI

        self.base_url, self.model, self.concurrency = base_url, model, concurrency
        self.client = OpenAI(base_url=base_url, api_key=api_key or "unused", max_retries=2)

    def identity(self) -> dict[str, Any]:
        """The endpoint and the model name it serves."""
        return {"endpoint": self.base_url, "model": self.model}

    def _ask(self, chat: list[MessageDict]) -> tuple[float, float]:
        response = self.client.chat.completions.create(
            model=self.model,
            messages=chat,
            max_tokens=1,
            temperature=0.0,
            logprobs=True,
            top_logprobs=TOP_LOGPROBS,
        )
        choice = response.choices[0]
        if choice.logprobs is None or not choice.logprobs.content:
            answer = (choice.message.content or "").strip()
            return tuple(0.0 if answer == label else -math.inf for label in LABELS)
        top = {t.token: t.logprob for t in choice.logprobs.content[0].top_logprobs}
        return tuple(top.get(label, -math.inf) for label in LABELS)

    def __call__(self, chats: list[list[MessageDict]]) -> list[tuple[float, float]]:
        """(log P('A'), log P('B')) of each chat, `concurrency` requests at a time."""
        from tqdm.auto import tqdm

        with ThreadPoolExecutor(self.concurrency) as pool:
            answers = pool.map(self._ask, chats)
            return list(tqdm(answers, total=len(chats), desc=f"judging {len(chats)} prompts"))


def endpoint_api_key(variable: str) -> str | None:
    """The API key from the environment variable the config names, if set."""
    return os.environ.get(variable)


def prompt_identity(path: Path) -> dict[str, str]:
    """The judge prompt file and its sha256."""
    return {"prompt_file": str(path), "prompt_sha256": sha256_file(path)}


def _conversation_ids(
    tokenizer: "PreTrainedTokenizerBase", prompt: list[MessageDict], response: str
) -> tuple[list[int], int]:
    """Token ids of prompt + response as a chat, and where the response starts."""
    head = chat_ids(tokenizer, prompt)
    chat = [*prompt, {"role": "assistant", "content": response}]
    text = tokenizer.apply_chat_template(chat, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if ids[: len(head)] != head:
        msg = "the chat template renders the prompt differently once an answer follows it"
        raise ConfigError(msg)
    return ids, len(head)


class RewardModel:
    """Scalar scores from an `AutoModelForSequenceClassification` reward model."""

    def __init__(self, model_name: str, *, batch_size: int = 8) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        from orpo_pipeline.models import inference_device, load_tokenizer, resolve_model

        self.path = resolve_model(model_name)
        self.tokenizer = load_tokenizer(self.path)
        self.model = (
            AutoModelForSequenceClassification.from_pretrained(self.path, dtype=torch.float32)
            .eval()
            .to(inference_device())
        )
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size = batch_size

    def identity(self) -> dict[str, Any]:
        """The reward model's name and the sha256 of its files."""
        return {"model": self.path, "sha256": model_sha256(self.path)}

    def __call__(self, items: Sequence[tuple[list[MessageDict], str]]) -> list[float]:
        """The score (first logit) of each (prompt, response)."""
        import torch

        ids = [_conversation_ids(self.tokenizer, p, r)[0] for p, r in items]
        scores = [0.0] * len(ids)
        order = sorted(range(len(ids)), key=lambda k: -len(ids[k]))
        for batch in _batches(order, self.batch_size, f"scoring {len(ids)} responses"):
            input_ids, mask, positions = _left_padded(
                self.tokenizer, [ids[k] for k in batch], self.model.device
            )
            with torch.inference_mode():
                logits = self.model(
                    input_ids=input_ids, attention_mask=mask, position_ids=positions
                ).logits
            for k, value in zip(batch, logits[:, 0].float().tolist(), strict=True):
                scores[k] = value
        return scores


def response_logps(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    items: Sequence[tuple[list[MessageDict], str]],
    *,
    batch_size: int = 8,
) -> list[float]:
    """Summed log-probability of each response given its prompt."""
    import torch

    encoded = [_conversation_ids(tokenizer, p, r) for p, r in items]
    out = [0.0] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda k: -len(encoded[k][0]))
    for batch in _batches(order, batch_size, f"scoring {len(encoded)} responses"):
        rows = [encoded[k][0] for k in batch]
        input_ids, mask, positions = _left_padded(tokenizer, rows, model.device)
        with torch.inference_mode():
            logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits
        token_logps = logits[:, :-1].float().log_softmax(-1).gather(-1, input_ids[:, 1:, None])
        token_logps = token_logps[..., 0]  # (B, T-1): log P(token t+1 | tokens <= t)
        width = input_ids.shape[1]
        for r, k in enumerate(batch):
            ids, start_at = encoded[k]
            first = width - len(ids) + start_at  # position of the first response token
            out[k] = token_logps[r, first - 1 :].sum().item()
    return out


class ImplicitReward:
    """DPO's implicit reward: beta * (log pi(y|x) - log pi_ref(y|x)), summed over y's tokens."""

    def __init__(
        self, policy: str, reference: str, *, beta: float = 0.1, batch_size: int = 8
    ) -> None:
        from orpo_pipeline.models import (
            inference_device,
            load_model,
            load_tokenizer,
            resolve_model,
        )

        self.paths = (resolve_model(policy), resolve_model(reference))
        self.tokenizer = load_tokenizer(self.paths[0])
        self.policy, self.reference = (load_model(p).to(inference_device()) for p in self.paths)
        self.beta, self.batch_size = beta, batch_size

    def identity(self) -> dict[str, Any]:
        """Both models' names and file sha256, and beta."""
        policy, reference = self.paths
        return {
            "model": policy,
            "sha256": model_sha256(policy),
            "reference": reference,
            "reference_sha256": model_sha256(reference),
            "beta": self.beta,
        }

    def __call__(self, items: Sequence[tuple[list[MessageDict], str]]) -> list[float]:
        """The implicit reward of each (prompt, response)."""
        size = self.batch_size
        policy = response_logps(self.policy, self.tokenizer, items, batch_size=size)
        reference = response_logps(self.reference, self.tokenizer, items, batch_size=size)
        return [self.beta * (p - r) for p, r in zip(policy, reference, strict=True)]
