"""Model-generated rejected answers for SFT data: batched `generate`, cached on disk.

The cache is one JSONL file per (model, generation settings) under `<cache>/generations/`, one
line per prompt: {"prompt": sha256 of the prompt messages, "answer": text}. Lines are appended
after every batch, so an interrupted run keeps its finished batches and a rerun costs nothing.
The model's identity is its resolved name plus, for a local folder, the names, sizes and
modification times of its files, so a retrained checkpoint in the same folder misses the cache.
"""

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from orpo_pipeline.cache import cache_root
from orpo_pipeline.formats.options import ConvertOptions
from orpo_pipeline.formats.rows import MessageDict

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class GenerationPlan(NamedTuple):
    """What a generation run will do, known before the model loads."""

    model: str
    """The resolved model name or path."""
    to_generate: int
    """Prompts without a cached answer."""
    cached: int
    """Prompts answered from the cache."""


class FirstBatch(NamedTuple):
    """How long the first batch took (it holds the longest prompts), and what is left."""

    seconds: float
    prompts: int
    remaining: int


def generate_answers(
    prompts: Sequence[list[MessageDict]],
    options: ConvertOptions,
    *,
    on_plan: Callable[[GenerationPlan], None] | None = None,
    on_first_batch: Callable[[FirstBatch], None] | None = None,
) -> list[str]:
    """One generated answer per prompt, from the cache where present, else from the model.

    `on_plan` hears what will run before the model loads; `on_first_batch` hears the first
    batch's time once its answers are cached, and may raise to stop the run there.
    """
    from orpo_pipeline.models import resolve_model

    model_name = resolve_model(options.model)
    cache_file = cache_path(model_name, options)
    cached = read_cache(cache_file)
    keys = [prompt_key(prompt) for prompt in prompts]
    missing = {key: prompt for key, prompt in zip(keys, prompts, strict=True) if key not in cached}
    if on_plan is not None:
        on_plan(GenerationPlan(model_name, len(missing), len(set(keys)) - len(missing)))
    if missing:
        from orpo_pipeline.models import load_model, load_tokenizer

        model = load_model(model_name)
        tokenizer = load_tokenizer(model_name)
        started = time.perf_counter()
        batches = generate_batches(model, tokenizer, missing, options)
        for index, (batch_keys, answers) in enumerate(batches):
            append_cache(cache_file, dict(zip(batch_keys, answers, strict=True)))
            cached.update(zip(batch_keys, answers, strict=True))
            if index == 0 and on_first_batch is not None:
                seconds = time.perf_counter() - started
                on_first_batch(FirstBatch(seconds, len(batch_keys), len(missing) - len(batch_keys)))
    return [cached[key] for key in keys]


def generate_batches(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    prompts: dict[str, list[MessageDict]],
    options: ConvertOptions,
) -> Iterator[tuple[list[str], list[str]]]:
    """Yield (keys, answers) per batch; prompts are sorted by length so batches pad little.

    Decoding is greedy when `options.temperature` is 0 (deterministic), else sampled with the
    torch generator seeded by `options.seed` at the start of each batch.
    """
    import torch
    from tqdm.auto import tqdm

    tokenizer.padding_side = "left"
    texts = {
        key: tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        for key, prompt in prompts.items()
    }
    order = sorted(texts, key=lambda key: len(texts[key]), reverse=True)
    sampling = (
        {"do_sample": True, "temperature": options.temperature}
        if options.temperature > 0
        else {"do_sample": False}
    )
    size = options.generation_batch_size
    with tqdm(total=len(order), desc="generating rejected answers", unit="prompt") as progress:
        for start in range(0, len(order), size):
            batch_keys = order[start : start + size]
            encoded = tokenizer(
                [texts[key] for key in batch_keys],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            )
            torch.manual_seed(options.seed)
            with torch.no_grad():
                output = model.generate(
                    **encoded,
                    max_new_tokens=options.max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    **sampling,
                )
            new_tokens = output[:, encoded["input_ids"].shape[1] :]
            answers = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            progress.update(len(batch_keys))
            yield batch_keys, [answer.strip() for answer in answers]


def prompt_key(prompt: list[MessageDict]) -> str:
    """Sha256 of the prompt messages."""
    payload = json.dumps(prompt, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def cache_path(model_name: str, options: ConvertOptions) -> Path:
    """The cache file for this model and these generation settings."""
    settings = {
        "model": model_fingerprint(model_name),
        "max_new_tokens": options.max_new_tokens,
        "temperature": options.temperature,
        "seed": options.seed if options.temperature > 0 else None,
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]
    root = options.cache_dir if options.cache_dir is not None else cache_root()
    return root / "generations" / f"{digest}.jsonl"


def model_fingerprint(model_name: str) -> list[Any]:
    """The resolved name, plus (file, size, mtime) of every file when it is a local folder."""
    path = Path(model_name)
    if not path.is_dir():
        return [model_name]
    files = sorted(item for item in path.rglob("*") if item.is_file())
    return [
        str(path.resolve()),
        *[[str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns] for f in files],
    ]


def read_cache(path: Path) -> dict[str, str]:
    """Cached answers by prompt key; a torn last line (interrupted write) is ignored."""
    if not path.exists():
        return {}
    cached = {}
    # errors="replace": a write torn inside a multi-byte character only spoils its own line.
    with path.open(encoding="utf-8", errors="replace") as stream:
        for line in stream:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            cached[entry["prompt"]] = entry["answer"]
    return cached


def append_cache(path: Path, answers: dict[str, str]) -> None:
    """Append one batch of answers to the cache file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(
        json.dumps({"prompt": key, "answer": answer}, ensure_ascii=False) + "\n"
        for key, answer in answers.items()
    )
    with path.open("a", encoding="utf-8") as stream:
        stream.write(lines)
