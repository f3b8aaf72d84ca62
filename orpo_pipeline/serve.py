"""`orpo-pipeline serve`: an OpenAI-compatible chat-completions server for a local model.

`POST /v1/chat/completions` (with `logprobs`, `top_logprobs` and `stream`) and `GET /v1/models`.
Generation is `formats.generate.decode_steps`, the same loop as sampling, one request at a time.
Log-probabilities are those of the model's raw next-token distribution (before temperature and
top-p). Without a `seed` a request uses seed 0, so equal requests get equal answers.
"""

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orpo_pipeline.formats.generate import Sampling, chat_ids, decode_steps

if TYPE_CHECKING:
    from fastapi import FastAPI
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_HOST = "127.0.0.1"


class ChatMessage(BaseModel):
    """One message of the request."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str


class ChatRequest(BaseModel):
    """The chat-completions request fields this server honours; others are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


class Engine:
    """A loaded model and tokenizer, used by one request at a time."""

    def __init__(self, model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase") -> None:
        self.model, self.tokenizer = model, tokenizer
        self.lock = threading.Lock()

    def _token(self, token_id: int, logprob: float) -> dict[str, Any]:
        text = self.tokenizer.decode([token_id])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    def tokens(self, request: ChatRequest) -> Iterator[tuple[str, dict[str, Any] | None, str]]:
        """Yield (text delta, logprob entry or None, finish reason or '') per generated token."""
        import torch

        sampling = Sampling(
            max_new_tokens=request.max_completion_tokens or request.max_tokens or 256,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed or 0,
        )
        messages = [m.model_dump() for m in request.messages]
        ids = chat_ids(self.tokenizer, messages)
        generated: list[int] = []
        text = ""
        with self.lock:
            steps = decode_steps(self.model, self.tokenizer, [ids], sampling, [sampling.seed])
            for count, step in enumerate(steps, start=1):
                token = int(step.tokens[0])
                if step.finished[0]:
                    yield "", None, "stop"
                    return
                generated.append(token)
                full = self.tokenizer.decode(generated, skip_special_tokens=True)
                delta, text = full[len(text) :], full
                entry = None
                if request.logprobs:
                    logprobs = step.logprobs[0]
                    entry = self._token(token, float(logprobs[token]))
                    k = request.top_logprobs or 0
                    top = torch.topk(logprobs, k) if k else None
                    entry["top_logprobs"] = (
                        [self._token(int(i), float(v)) for v, i in zip(*top, strict=True)]
                        if top is not None
                        else []
                    )
                yield delta, entry, "length" if count == sampling.max_new_tokens else ""

    def usage(self, request: ChatRequest, completion_tokens: int) -> dict[str, int]:
        """Token counts of a request and its answer."""
        prompt = len(chat_ids(self.tokenizer, [m.model_dump() for m in request.messages]))
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
        }


def _completion(engine: Engine, request: ChatRequest, name: str) -> dict[str, Any]:
    parts, entries, finish = [], [], "length"
    for delta, entry, reason in engine.tokens(request):
        parts.append(delta)
        if entry is not None:
            entries.append(entry)
        finish = reason or finish
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(parts).strip()},
                "logprobs": {"content": entries} if request.logprobs else None,
                "finish_reason": finish,
            }
        ],
        "usage": engine.usage(request, len(entries) if request.logprobs else len(parts)),
    }


def _chunks(engine: Engine, request: ChatRequest, name: str) -> Iterator[str]:
    """Server-sent events: a role chunk, one chunk per token, a finish chunk, then [DONE]."""
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": name}
    head["object"] = "chat.completion.chunk"

    def event(delta: dict[str, Any], logprobs: Any = None, finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return f"data: {json.dumps(head | {'choices': [choice]})}\n\n"

    yield event({"role": "assistant", "content": ""})
    for delta, entry, reason in engine.tokens(request):
        if delta or entry is not None:
            yield event({"content": delta}, {"content": [entry]} if entry is not None else None)
        if reason:
            yield event({}, finish=reason)
    yield "data: [DONE]\n\n"


def create_app(engine: Engine, *, name: str, api_key: str | None = None) -> "FastAPI":
    """The FastAPI app serving `engine` as model `name`; with `api_key`, every request must
    send `Authorization: Bearer <api_key>`."""
    from fastapi import Depends, FastAPI, Header, HTTPException
    from fastapi.responses import StreamingResponse

    def authorize(authorization: str | None = Header(default=None)) -> None:
        if api_key is not None and authorization != f"Bearer {api_key}":
            raise HTTPException(status_code=401, detail="invalid or missing API key")

    app = FastAPI(title="orpo-pipeline serve", dependencies=[Depends(authorize)])

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        entry = {"id": name, "object": "model", "created": 0, "owned_by": "orpo-pipeline"}
        return {"object": "list", "data": [entry]}

    @app.post("/v1/chat/completions", response_model=None)
    def chat_completions(request: ChatRequest) -> dict[str, Any] | StreamingResponse:
        if request.model != name:
            raise HTTPException(status_code=404, detail=f"model {request.model!r} not served")
        if request.stream:
            return StreamingResponse(_chunks(engine, request, name), media_type="text/event-stream")
        return _completion(engine, request, name)

    return app


def serve(
    model_name: str,
    *,
    host: str = DEFAULT_HOST,
    port: int = 8000,
    name: str | None = None,
    api_key: str | None = None,
) -> None:
    """Load `model_name` and serve it until interrupted."""
    import uvicorn

    from orpo_pipeline.models import load_model, load_tokenizer

    engine = Engine(load_model(model_name), load_tokenizer(model_name))
    app = create_app(engine, name=name or model_name, api_key=api_key)
    uvicorn.run(app, host=host, port=port, log_level="warning")
