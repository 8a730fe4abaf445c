# The image has starlette; berth's own venv (which mypy checks with) does not.
# mypy: disable-error-code="import-not-found"
"""The OpenAI-compatible routes of berth's model server (server.py mounts them): a stand-in
for vLLM's, llama.cpp's or TEI's OpenAI API where berth's gateway is concerned. It generates
nothing real, but answers in OpenAI's shapes, for the real `openai` SDK, deterministically:

- `POST /v1/chat/completions` and `POST /v1/completions`: `max_tokens` tokens
  (`max_completion_tokens` too; 16 by default, at most MAX_TOKENS). Token 0 is the served
  name (SERVED_MODEL_NAME), token i > 0 is " i": so 4 tokens read "NAME 1 2 3", and a test
  sees which deployment answered. `"stream": true` sends them as SSE, one
  `chat.completion.chunk` (or `text_completion`) event per token, then `data: [DONE]`;
  `stream_options.include_usage` adds the usage chunk before it. Each token takes
  `berth_token_delay` seconds (a request field, OpenAI's SDKs send it with `extra_body`) or
  TOKEN_DELAY (environment; 0 by default): a test can hold a stream open as long as it likes.
- `POST /v1/embeddings`: one vector per input (a string, a list of strings, a list of token
  ids or a list of such lists), `dimensions` long (EMBEDDING_DIM by default, 8), made from
  the input's SHA-256 and the served name, of unit length; `encoding_format` "float" or
  "base64" (little-endian float32, what the SDK asks for unless told otherwise).
- `GET /v1/models`: this server's one model, SERVED_MODEL_NAME.
- Every answer's `model` is the `model` the request carried (as OpenAI does), so a test sees
  what reached the server (what a gateway's `rewrite_model` sent); with STRICT_MODEL=1 a
  request for another name is refused 404 `model_not_found`, as vLLM does. Each answer also
  carries `"berth": {"served_model", "hostname", "requested_model"}` (an extra field: the SDK
  keeps it in `model_extra`), and the header `x-served-model`.
- Before the model is loaded every route but /v1/models answers 503; errors are in OpenAI's
  shape `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import math
import os
import socket
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MAX_TOKENS = 4096  # a request asking more is refused: every generation here is bounded
MAX_TOKEN_DELAY = 60.0  # seconds per token, at most
MAX_DIMENSIONS = 4096
MAX_INPUTS = 2048

log = logging.getLogger("model-server")


@dataclass(frozen=True)
class Settings:
    served_model: str
    token_delay: float
    embedding_dim: int
    strict_model: bool
    hostname: str

    @classmethod
    def from_env(cls, default_name: str) -> Settings:
        return cls(
            served_model=os.environ.get("SERVED_MODEL_NAME") or default_name,
            token_delay=float(os.environ.get("TOKEN_DELAY", "0")),
            embedding_dim=int(os.environ.get("EMBEDDING_DIM", "8")),
            strict_model=os.environ.get("STRICT_MODEL") == "1",
            hostname=socket.gethostname(),
        )


class Refused(Exception):
    """A request answered with an OpenAI error: status, message, type, param, code."""

    def __init__(
        self, status: int, message: str, *, kind: str = "invalid_request_error",
        param: str | None = None, code: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = (
            status, message, kind, param, code,
        )  # fmt: skip

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass(frozen=True)
class Hooks:
    """What server.py lends: the load's event, its request counter, its queue gauge."""

    loaded: asyncio.Event
    count: Callable[[str, int], None]  # (route, status code)
    enter: Callable[[], None]  # a request waiting or in flight (model_queue_size + 1)
    leave: Callable[[], None]


def words(text: str) -> int:
    return len(text.split())


def prompt_tokens_of_messages(messages: Any) -> int:
    if not isinstance(messages, list) or not messages:
        raise Refused(400, "'messages' must be a non-empty list", param="messages")
    count = 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise Refused(400, f"messages[{i}] needs a 'role'", param=f"messages[{i}]")
        content = message.get("content")
        if isinstance(content, str):
            count += words(content)
        elif isinstance(content, list):  # content parts: count the text ones
            count += sum(
                words(part["text"])
                for part in content
                if isinstance(part, dict) and isinstance(part.get("text"), str)
            )
    return max(count, 1)


def prompt_tokens_of_prompt(prompt: Any) -> int:
    if isinstance(prompt, str):
        return max(words(prompt), 1)
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return max(sum(words(p) for p in prompt), 1)
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            return len(prompt)
    raise Refused(400, "'prompt' must be a string or a non-empty list of them", param="prompt")


def number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        raise Refused(400, f"'{name}' must be a number from {low:g} to {high:g}", param=name)
    return float(value)


class OpenAiApi:
    """The routes, over one Settings and server.py's hooks."""

    def __init__(self, settings: Settings, hooks: Hooks) -> None:
        self.settings = settings
        self.hooks = hooks
        self.created = int(time.time())

    def routes(self) -> list[Route]:
        return [
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
        ]

    # -- the common part --------------------------------------------------------------

    def headers(self) -> dict[str, str]:
        return {"x-served-model": self.settings.served_model}

    def refuse(self, route: str, refused: Refused) -> JSONResponse:
        self.hooks.count(route, refused.status)
        log.info("%s: %d %s (at %.3f)", route, refused.status, refused.message, time.time())
        return JSONResponse(refused.body(), status_code=refused.status, headers=self.headers())

    async def request_body(self, request: Request) -> dict[str, Any]:
        if not self.hooks.loaded.is_set():
            raise Refused(503, "model not ready yet", kind="server_error", code="not_ready")
        try:
            body = json.loads(await request.body())
        except ValueError:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise Refused(400, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise Refused(400, "the body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise Refused(400, "you must provide a model parameter", param="model")
        if self.settings.strict_model and model != self.settings.served_model:
            raise Refused(
                404,
                f"The model `{model}` does not exist.",
                param="model",
                code="model_not_found",
            )
        return body

    def stamp(self, body: dict[str, Any]) -> dict[str, str]:
        return {
            "served_model": self.settings.served_model,
            "hostname": self.settings.hostname,
            "requested_model": str(body["model"]),
        }

    def tokens(self, count: int) -> list[str]:
        return [self.settings.served_model if i == 0 else f" {i}" for i in range(count)]

    def generation(self, body: dict[str, Any]) -> tuple[int, float, bool, bool]:
        """(tokens, delay per token, stream, include_usage) of a completion request."""
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        count = int(number({"max_tokens": limit}, "max_tokens", 16, 1, MAX_TOKENS))
        if limit is not None and count != limit:
            raise Refused(400, "'max_tokens' must be a whole number", param="max_tokens")
        default_delay = self.settings.token_delay
        delay = number(body, "berth_token_delay", default_delay, 0, MAX_TOKEN_DELAY)
        if body.get("n", 1) != 1:
            raise Refused(400, "only n = 1 is served here", param="n")
        stream = body.get("stream") is True
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        return count, delay, stream, include_usage

    # -- the routes -------------------------------------------------------------------

    async def models(self, request: Request) -> JSONResponse:
        self.hooks.count("v1_models", 200)
        listing = {
            "object": "list",
            "data": [
                {
                    "id": self.settings.served_model,
                    "object": "model",
                    "created": self.created,
                    "owned_by": "berth-model-server",
                }
            ],
        }
        return JSONResponse(listing, headers=self.headers())

    async def chat(self, request: Request) -> Response:
        return await self.complete(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self.complete(request, chat=False)

    async def complete(self, request: Request, *, chat: bool) -> Response:
        route = "v1_chat" if chat else "v1_completions"
        self.hooks.enter()
        try:
            body = await self.request_body(request)
            if chat:
                prompt = prompt_tokens_of_messages(body.get("messages"))
            else:
                prompt = prompt_tokens_of_prompt(body.get("prompt"))
            count, delay, stream, include_usage = self.generation(body)
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": count,
                "total_tokens": prompt + count,
            }
            head = {
                "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
                "created": int(time.time()),
                "model": body["model"],
                "system_fingerprint": f"berth-model-server-{self.settings.hostname}",
                "berth": self.stamp(body),
            }
            finish = "length" if "max_tokens" in body or "max_completion_tokens" in body else "stop"
            log.info(
                "%s model=%s tokens=%d delay=%.3f stream=%s (at %.3f)",
                route, body["model"], count, delay, stream, time.time(),
            )  # fmt: skip
            if stream:
                self.hooks.count(route, 200)  # the stream counts itself in while it runs
                events = self.stream(head, count, delay, finish, usage, include_usage, chat=chat)
                return StreamingResponse(
                    events,
                    media_type="text/event-stream",
                    headers={**self.headers(), "cache-control": "no-cache"},
                )
            if delay > 0:
                await asyncio.sleep(delay * count)
            text = "".join(self.tokens(count))
            if chat:
                choice: dict[str, Any] = {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            else:
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            kind = "chat.completion" if chat else "text_completion"
            self.hooks.count(route, 200)
            answer = {**head, "object": kind, "choices": [choice], "usage": usage}
            return JSONResponse(answer, headers=self.headers())
        except Refused as refused:
            return self.refuse(route, refused)
        finally:
            self.hooks.leave()

    async def stream(
        self,
        head: dict[str, Any],
        count: int,
        delay: float,
        finish: str,
        usage: dict[str, int],
        include_usage: bool,
        *,
        chat: bool,
    ) -> AsyncIterator[bytes]:
        kind = "chat.completion.chunk" if chat else "text_completion"
        extra = {"usage": None} if include_usage else {}

        def event(choices: list[dict[str, Any]], **more: Any) -> bytes:
            chunk = {**head, "object": kind, "choices": choices, **extra, **more}
            return f"data: {json.dumps(chunk)}\n\n".encode()

        def choice(text: str, finish_reason: str | None, role: bool = False) -> dict[str, Any]:
            if not chat:
                return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
            delta: dict[str, str] = {"role": "assistant"} if role else {}
            if text or role:
                delta["content"] = text
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

        self.hooks.enter()  # here, not before: a stream never started never leaves
        try:
            if chat:
                yield event([choice("", None, role=True)])
            for token in self.tokens(count):
                if delay > 0:
                    await asyncio.sleep(delay)
                yield event([choice(token, None)])
            yield event([choice("", finish)])
            if include_usage:
                yield event([], usage=usage)
            yield b"data: [DONE]\n\n"
            log.info("stream of %d tokens ended (at %.3f)", count, time.time())
        finally:
            self.hooks.leave()

    async def embeddings(self, request: Request) -> Response:
        route = "v1_embeddings"
        self.hooks.enter()
        try:
            body = await self.request_body(request)
            inputs = embedding_inputs(body.get("input"))
            default_dim = self.settings.embedding_dim
            dim = int(number(body, "dimensions", default_dim, 1, MAX_DIMENSIONS))
            encoding = body.get("encoding_format", "float")
            if encoding not in ("float", "base64"):
                raise Refused(
                    400, "'encoding_format' must be 'float' or 'base64'", param="encoding_format"
                )
            data = []
            for i, item in enumerate(inputs):
                vector = self.vector(item, dim)
                value: Any = vector
                if encoding == "base64":
                    value = base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode()
                data.append({"object": "embedding", "index": i, "embedding": value})
            tokens = sum(max(words(i), 1) if isinstance(i, str) else len(i) for i in inputs)
            log.info(
                "embeddings model=%s inputs=%d (at %.3f)", body["model"], len(inputs), time.time()
            )
            self.hooks.count(route, 200)
            answer = {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "berth": self.stamp(body),
            }
            return JSONResponse(answer, headers=self.headers())
        except Refused as refused:
            return self.refuse(route, refused)
        finally:
            self.hooks.leave()

    def vector(self, item: str | list[int], dim: int) -> list[float]:
        """Unit length, from SHA-256 of the served name and the input: the same input gives
        the same vector on every replica of this model, another model gives another."""
        seed = f"{self.settings.served_model}\0{json.dumps(item)}".encode()
        raw: list[float] = []
        block = 0
        while len(raw) < dim:
            digest = hashlib.sha256(seed + block.to_bytes(4, "big")).digest()
            raw.extend(b / 127.5 - 1.0 for b in digest)
            block += 1
        raw = raw[:dim]
        norm = math.sqrt(sum(x * x for x in raw)) or 1.0
        return [x / norm for x in raw]


def embedding_inputs(value: Any) -> list[str | list[int]]:
    """OpenAI's `input`: a string, a list of strings, a list of token ids, or of such lists."""

    def ids(item: Any) -> bool:
        return (
            isinstance(item, list)
            and bool(item)
            and all(isinstance(t, int) and not isinstance(t, bool) for t in item)
        )

    if isinstance(value, str) and value:
        return [value]
    if isinstance(value, list) and 0 < len(value) <= MAX_INPUTS:
        if all(isinstance(v, str) and v for v in value):
            return list(value)
        if ids(value):
            return [value]
        if all(ids(v) for v in value):
            return list(value)
    raise Refused(
        400,
        f"'input' must be a non-empty string, or a list of 1 to {MAX_INPUTS} strings or "
        "token-id lists",
        param="input",
    )
