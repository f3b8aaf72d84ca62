"""Generation, the one place a causal LM writes text: batched, length-sorted, KV-cached, seeded.

- `decode_steps` is the decoding loop: left-padded batch, KV cache, each row sampled from its own
  `torch.Generator`, so a row's sample depends on its seed, not on the global RNG.
- `sample_responses` draws N responses per prompt for the `sample` stage: jobs are sorted by
  prompt length into batches, and every finished batch is stored as one shard file written
  atomically under `<cache>/samples/<key>/`, the key being the sha256 of the model's files and
  the sampling settings; within it each response is found by (prompt sha256, sample index).
  A rerun, or a rerun after `kill -9`, generates only what has no shard yet; because the
  missing jobs are always a suffix of the sorted order, the batches it forms are the ones the
  interrupted run would have formed, and the responses are identical.
- `generate_answers` is the SFT converter's rejected answers (one per prompt, same cache);
  `generate_replies` answers chats for `orpo-pipeline generate`.

vLLM serves as the engine when it is installed and a CUDA device is present (`engine: auto`);
the cache is the same, so either engine resumes the other's work.
"""

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from orpo_pipeline.cache import cache_root
from orpo_pipeline.formats.options import ConvertOptions
from orpo_pipeline.formats.rows import MessageDict
from orpo_pipeline.io import atomic_path

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Engine = Literal["auto", "transformers", "vllm"]
FinishReason = Literal["stop", "length"]


class GenerationPlan(NamedTuple):
    """What a generation run will do, known before the model loads."""

    model: str
    """The resolved model name or path."""
    to_generate: int
    """Responses without a cached sample."""
    cached: int
    """Responses answered from the cache."""


class FirstBatch(NamedTuple):
    """How long the first batch took (it holds the longest prompts), and what is left."""

    seconds: float
    prompts: int
    remaining: int


class Sampling(BaseModel):
    """How to draw a response; part of the cache key."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    max_new_tokens: int = Field(default=256, gt=0)
    """Longest response in tokens; a response cut there has finish reason 'length'."""
    temperature: float = Field(default=0.0, ge=0.0)
    """Sampling temperature; 0 decodes greedily (and ignores `top_p` and `seed`)."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus sampling: sample from the smallest token set holding this much probability."""
    seed: int = 0
    """Seed; each (prompt, sample index) draws from its own generator seeded from it."""


class Sample(NamedTuple):
    """One generated response."""

    text: str
    finish_reason: FinishReason
    num_tokens: int


class Step(NamedTuple):
    """One decoding step for a batch: the tokens picked and their log-probabilities."""

    tokens: "torch.Tensor"  # (B,) the chosen token of each row (pad for finished rows)
    logprobs: "torch.Tensor"  # (B, V) log-softmax of the raw logits (before temperature)
    finished: "torch.Tensor"  # (B,) True for rows that ended before or at this step


def _eos_ids(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase") -> list[int]:
    eos = model.generation_config.eos_token_id
    eos = eos if eos is not None else tokenizer.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos)


def _cache_field() -> str:
    """The key-value cache's name in a causal LM's call and output: `cache` in recent
    transformers, `past_key_values` in older 5.x releases (the declared minimum, 5.18)."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def decode_steps(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    prompt_ids: Sequence[Sequence[int]],
    sampling: Sampling,
    seeds: Sequence[int],
) -> Iterator[Step]:
    """Decode a batch step by step with the KV cache; stops when every row has ended.

    Rows are left-padded and their position ids count real tokens only, so a row decodes as
    it would alone (up to float rounding). A row ends at an eos token, which is yielded.
    """
    import torch
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    device, pad = model.device, tokenizer.pad_token_id
    width = max(len(ids) for ids in prompt_ids)
    input_ids = torch.full((len(prompt_ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for row, ids in enumerate(prompt_ids):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        mask[row, width - len(ids) :] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    greedy = sampling.temperature == 0
    warpers = LogitsProcessorList([TemperatureLogitsWarper(sampling.temperature or 1.0)])
    if sampling.top_p < 1:
        warpers.append(TopPLogitsWarper(sampling.top_p))
    generators = [torch.Generator(device).manual_seed(seed) for seed in seeds]
    eos = torch.tensor(_eos_ids(model, tokenizer), device=device)
    finished = torch.zeros(len(prompt_ids), dtype=torch.bool, device=device)
    past, cache_field = None, _cache_field()
    with torch.inference_mode():
        for _ in range(sampling.max_new_tokens):
            out = model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                **{cache_field: past},
                use_cache=True,
                logits_to_keep=1,  # the LM head on the last position only, not the whole prompt
            )
            past, logits = getattr(out, cache_field), out.logits[:, -1, :].float()
            if greedy:
                tokens = logits.argmax(-1)
            else:
                probs = warpers(input_ids, logits).softmax(-1)
                pairs = zip(probs, generators, strict=True)
                tokens = torch.cat([torch.multinomial(p, 1, generator=g) for p, g in pairs])
            tokens = torch.where(finished, pad, tokens)
            yield Step(tokens, logits.log_softmax(-1), finished | torch.isin(tokens, eos))
            finished |= torch.isin(tokens, eos)
            if finished.all():
                return
            input_ids = tokens[:, None]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1


def decode(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    prompt_ids: Sequence[Sequence[int]],
    sampling: Sampling,
    seeds: Sequence[int],
) -> list[Sample]:
    """One response per prompt (token ids), decoded to text without special tokens."""
    eos = set(_eos_ids(model, tokenizer))
    tokens: list[list[int]] = [[] for _ in prompt_ids]
    ended = [False] * len(prompt_ids)
    for step in decode_steps(model, tokenizer, prompt_ids, sampling, seeds):
        for row, token in enumerate(step.tokens.tolist()):
            if not ended[row]:
                ended[row] = token in eos
                if not ended[row]:
                    tokens[row].append(token)
    return [
        Sample(
            tokenizer.decode(ids, skip_special_tokens=True).strip(),
            "stop" if done else "length",
            len(ids),
        )
        for ids, done in zip(tokens, ended, strict=True)
    ]


def prompt_key(prompt: list[MessageDict]) -> str:
    """Sha256 of the prompt messages."""
    payload = json.dumps(prompt, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def job_seed(seed: int, key: str, index: int) -> int:
    """The seed of one (prompt, sample index): independent of batch, order and other prompts."""
    digest = hashlib.sha256(f"{seed}|{key}|{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def model_sha256(model_name: str) -> str:
    """Sha256 over the (relative path, sha256) of every file of a local model; for a hub id
    the files of its local snapshot, or the id itself when none is downloaded."""
    from orpo_pipeline.runs import describe_inputs

    path = Path(model_name)
    if not path.is_dir():
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            path = Path(snapshot_download(model_name, local_files_only=True))
        except LocalEntryNotFoundError:
            return hashlib.sha256(f"hub:{model_name}".encode()).hexdigest()
    files = describe_inputs([path], stat_cache=cache_root() / "hashes.json")
    listing = [[str(Path(f["path"]).relative_to(path)), f["sha256"]] for f in files]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


class SampleCache:
    """Finished responses as atomically written JSONL shards, one per generated batch."""

    def __init__(self, root: Path, model_digest: str, sampling: Sampling) -> None:
        settings = {"model": model_digest, "sampling": sampling.model_dump()}
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
        self.directory = root / "samples" / digest[:32]

    def load(self) -> dict[tuple[str, int], Sample]:
        """Every stored response by (prompt key, sample index)."""
        found = {}
        for shard in sorted(self.directory.glob("*.jsonl")):
            for line in shard.read_text(encoding="utf-8").splitlines():
                entry = json.loads(line)
                sample = Sample(entry["text"], entry["finish_reason"], entry["num_tokens"])
                found[entry["prompt"], entry["index"]] = sample
        return found

    def store(self, jobs: Sequence[tuple[str, int]], samples: Sequence[Sample]) -> None:
        """Write one batch as a shard named after its jobs; it appears whole or not at all."""
        lines = [
            json.dumps({"prompt": key, "index": index, **sample._asdict()}, ensure_ascii=False)
            for (key, index), sample in zip(jobs, samples, strict=True)
        ]
        name = hashlib.sha256(json.dumps(list(jobs)).encode()).hexdigest()[:32]
        with atomic_path(self.directory / f"{name}.jsonl") as temp:
            temp.write_text("\n".join(lines) + "\n", encoding="utf-8")


def sample_responses(
    prompts: Sequence[list[MessageDict]],
    model_name: str,
    sampling: Sampling,
    *,
    num_samples: int = 1,
    batch_size: int = 16,
    engine: Engine = "auto",
    cache_dir: Path | None = None,
    on_plan: Callable[[GenerationPlan], None] | None = None,
    on_first_batch: Callable[[FirstBatch], None] | None = None,
) -> list[list[Sample]]:
    """`num_samples` responses per prompt, from the cache where present, else generated.

    `on_plan` hears what will run before the model loads; `on_first_batch` hears the first
    batch's time once its samples are cached, and may raise to stop the run there.
    """
    from orpo_pipeline.models import resolve_model

    model_path = resolve_model(model_name)
    cache = SampleCache(cache_dir or cache_root(), model_sha256(model_path), sampling)
    keys = [prompt_key(prompt) for prompt in prompts]
    done = cache.load()
    by_key = dict(zip(keys, prompts, strict=True))
    missing = [(k, i) for k in by_key for i in range(num_samples) if (k, i) not in done]
    if on_plan is not None:
        wanted = len(by_key) * num_samples
        on_plan(GenerationPlan(model_path, len(missing), wanted - len(missing)))
    if missing:
        use_vllm = engine == "vllm" or (engine == "auto" and vllm_usable())
        run = _generate_vllm if use_vllm else _generate_transformers
        started = time.perf_counter()
        for index, (jobs, samples) in enumerate(
            run(model_path, by_key, missing, sampling, batch_size)
        ):
            cache.store(jobs, samples)
            done.update(zip(jobs, samples, strict=True))
            if index == 0 and on_first_batch is not None:
                seconds = time.perf_counter() - started
                on_first_batch(FirstBatch(seconds, len(jobs), len(missing) - len(jobs)))
    return [[done[key, index] for index in range(num_samples)] for key in keys]


def vllm_usable() -> bool:
    import importlib.util

    import torch

    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def _generate_transformers(
    model_path: str,
    prompts: dict[str, list[MessageDict]],
    jobs: list[tuple[str, int]],
    sampling: Sampling,
    batch_size: int,
) -> Iterator[tuple[list[tuple[str, int]], list[Sample]]]:
    """Yield (jobs, samples) batch by batch; jobs sorted longest prompt first, then by key."""
    from tqdm.auto import tqdm

    from orpo_pipeline.models import inference_device, load_model, load_tokenizer

    tokenizer = load_tokenizer(model_path)
    model = load_model(model_path).to(inference_device())
    ids = {key: chat_ids(tokenizer, prompt) for key, prompt in prompts.items()}
    order = sorted(jobs, key=lambda job: (-len(ids[job[0]]), job))
    with tqdm(total=len(order), desc=f"sampling {len(order)} responses", unit="resp") as bar:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            seeds = [job_seed(sampling.seed, key, index) for key, index in batch]
            samples = decode(model, tokenizer, [ids[key] for key, _ in batch], sampling, seeds)
            bar.update(len(batch))
            yield batch, samples


def _generate_vllm(
    model_path: str,
    prompts: dict[str, list[MessageDict]],
    jobs: list[tuple[str, int]],
    sampling: Sampling,
    batch_size: int,
) -> Iterator[tuple[list[tuple[str, int]], list[Sample]]]:
    """The same jobs through vLLM (one request per job, seeded per job), in shards of
    `batch_size * 8` so an interruption loses little."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_path, seed=sampling.seed)
    order = sorted(jobs)
    shard = batch_size * 8
    for start in range(0, len(order), shard):
        batch = order[start : start + shard]
        params = [
            SamplingParams(
                n=1,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                seed=job_seed(sampling.seed, key, index),
            )
            for key, index in batch
        ]
        outputs = llm.chat([prompts[key] for key, _ in batch], params, use_tqdm=True)
        samples = [
            Sample(
                o.outputs[0].text.strip(),
                "length" if o.outputs[0].finish_reason == "length" else "stop",
                len(o.outputs[0].token_ids),
            )
            for o in outputs
        ]
        yield batch, samples


def chat_ids(tokenizer: "PreTrainedTokenizerBase", messages: list[MessageDict]) -> list[int]:
    """Token ids of a chat rendered with the generation prompt (no extra special tokens)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def generate_answers(
    prompts: Sequence[list[MessageDict]],
    options: ConvertOptions,
    *,
    on_plan: Callable[[GenerationPlan], None] | None = None,
    on_first_batch: Callable[[FirstBatch], None] | None = None,
) -> list[str]:
    """One generated answer per prompt (the SFT converter's rejected answers), cached."""
    sampling = Sampling(
        max_new_tokens=options.max_new_tokens, temperature=options.temperature, seed=options.seed
    )
    samples = sample_responses(
        prompts,
        options.model,
        sampling,
        batch_size=options.generation_batch_size,
        engine="transformers",
        cache_dir=options.cache_dir,
        on_plan=on_plan,
        on_first_batch=on_first_batch,
    )
    return [sample.text for (sample,) in samples]


def generate_replies(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    conversations: list[list[dict[str, str]]],
    sampling: Sampling,
) -> list[str]:
    """One assistant reply per conversation, uncached (`orpo-pipeline generate`)."""
    ids = [chat_ids(tokenizer, conversation) for conversation in conversations]
    seeds = [job_seed(sampling.seed, prompt_key(c), 0) for c in conversations]
    return [s.text for s in decode(model, tokenizer, ids, sampling, seeds)]
