"""The fake provider: a real OpenAI-compatible HTTP server on 127.0.0.1.

It answers ``POST /v1/chat/completions`` (text or content parts with images: see ``_images``),
``POST /v1/embeddings`` (deterministic vectors: see ``_embeddings``) and ``GET /v1/models`` in
OpenAI's shape, plays a
per-request script (latency, 429 with Retry-After, 5xx, 401, malformed JSON, dropped
connections), answers a request with a JSON Schema ``response_format`` with a conforming
object, can enforce an RPM cap the client does not know, and records every request so tests
assert from the server's side.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from dfllm.testing._batches import BatchOptions, BatchRoutes
from dfllm.testing._behaviour import Behaviour, RecordedRequest, Script
from dfllm.testing._embeddings import EmbeddingOptions, EmbeddingRecord, embed, embedding_record
from dfllm.testing._files import FileStore
from dfllm.testing._finetune import FineTuneRoutes
from dfllm.testing._images import MAX_IMAGE_BYTES, content_text, refusal
from dfllm.testing._limits import HEADER_STYLES, HeaderStyle, Shape, answer_headers, make_cap, refusal_headers
from dfllm.testing._prompt_cache import PromptCache, text_tokens
from dfllm.testing._responders import (
    BODY_RESPONDERS,
    RESPONDERS,
    BodyResponder,
    Responder,
    conforming,
    requested_schema,
)

DEFAULT_MODELS = ("gpt-4o-mini", "mistral-7b", "mistralai/Mistral-7B-Instruct-v0.1", "claude-2.1")


class FakeProviderApp:
    """The server's state and handlers; ``FakeProvider`` runs it in a thread, ``__main__`` in a process."""

    def __init__(
        self,
        *,
        responder: str | Responder = "smart",
        latency_s: float = 0.0,
        script: Script | None = None,
        api_key: str | None = None,
        rpm: float | None = None,
        rpm_burst: float | None = None,
        rpm_shape: Shape = "bucket",
        rpm_window_s: float = 60.0,
        ratelimit_headers: bool | HeaderStyle = True,
        advertised_rpm_scale: float = 1.0,
        random_429: float = 0.0,
        random_seed: int | None = None,
        models: tuple[str, ...] = DEFAULT_MODELS,
        record: bool = True,
        batch: BatchOptions | None = None,
        prompt_cache_min_tokens: int | None = 32,
        images: bool = True,
        max_image_bytes: int = MAX_IMAGE_BYTES,
        embeddings: EmbeddingOptions | None = None,
    ) -> None:
        self.responder, self.body_responder = _responders(responder)
        self.images = images  # False: a text-only model, a request with an image part gets a 400
        self.max_image_bytes = max_image_bytes
        self.embeddings = embeddings or EmbeddingOptions()
        self.embedding_requests: list[EmbeddingRecord] = []  # when recording
        self.embedding_inputs = 0  # inputs of answered embedding requests, recording or not
        self.latency_s = latency_s
        self.script = script
        self.api_key = api_key
        self.rpm = rpm
        # The cap's shape (see _limits): a token bucket, or a sliding or fixed window of rpm_window_s.
        self._cap = make_cap(rpm_shape, rpm, rpm_burst, rpm_window_s) if rpm else None
        self.rpm_window_s = rpm_window_s
        self.ratelimit_headers = _header_style(ratelimit_headers)
        # A lying header: x-ratelimit-limit-requests says the cap * scale (other units, another
        # provider's numbers behind a gateway); remaining and reset stay the cap's truth.
        self.advertised_rpm_scale = advertised_rpm_scale
        # A provider's hiccups: this share of requests gets a 429 with Retry-After: 1 whatever
        # the cap, without x-ratelimit-* headers.
        self.random_429 = random_429
        self._random = random.Random(random_seed)
        self.models = models
        self.record = record
        self.requests: list[RecordedRequest] = []
        self.count = 0
        self.status_counts: dict[int, int] = {}
        self.responses: list[tuple[float, int]] = []  # (time.monotonic(), status), when recording
        self.in_flight = 0
        self.peak_in_flight = 0
        batch = batch or BatchOptions()
        self.files = FileStore(self, clock=batch.clock, record=record,
                               scripts=lambda: (self.finetune.script, self.batches.script))
        self.finetune = FineTuneRoutes(self, self.files)
        self.batches = BatchRoutes(self, self.files, batch)
        # usage.prompt_tokens_details.cached_tokens: a prompt's beginning sent before (see _prompt_cache).
        self.prompt_cache = PromptCache(prompt_cache_min_tokens)

    # -- records ------------------------------------------------------------------------
    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.count,
            "embedding_inputs": self.embedding_inputs,
            "statuses": {str(k): v for k, v in sorted(self.status_counts.items())},
            "peak_in_flight": self.peak_in_flight,
            **self.files.stats(),
            **self.batches.stats(),
        }

    def reset(self) -> None:
        self.requests.clear()
        self.responses.clear()
        self.embedding_requests.clear()
        self.embedding_inputs = 0
        self.count = 0
        self.status_counts.clear()
        self.peak_in_flight = self.in_flight
        self.prompt_cache.clear()

    def build(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_post("/v1/chat/completions", self._serve)
        app.router.add_post("/v1/embeddings", self._serve)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model:.+}", self._model)
        app.router.add_get("/_stats", self._stats)
        app.router.add_post("/_reset", self._reset)
        self.finetune.add_to(app.router)
        self.files.add_to(app.router)
        self.batches.add_to(app.router)
        app.on_cleanup.append(self._close_files)
        return app

    async def _close_files(self, _app: web.Application) -> None:
        self.batches.close()
        self.files.close()

    # -- handlers -------------------------------------------------------------------------
    async def _record(self, request: web.Request) -> RecordedRequest:
        body: Any = None
        if request.can_read_body and request.content_type == "application/json":
            try:
                body = await request.json()
            except ValueError:
                body = None
        recorded = RecordedRequest(
            index=self.count,
            method=request.method,
            path=request.path,
            headers=dict(request.headers),
            body=body,
            arrived_at=time.monotonic(),
        )
        self.count += 1
        if self.record:
            self.requests.append(recorded)
        return recorded

    def _respond(self, response: web.Response) -> web.Response:
        self.status_counts[response.status] = self.status_counts.get(response.status, 0) + 1
        if self.record:
            self.responses.append((time.monotonic(), response.status))
        return response

    def authorized(self, request: web.Request) -> bool:
        if self.api_key is None:
            return True
        given = {request.headers.get("Authorization", ""), request.headers.get("x-portkey-api-key", "")}
        return f"Bearer {self.api_key}" in given or self.api_key in given

    def unauthorized(self) -> web.Response:
        return self._respond(_error(401, "Incorrect API key provided.", "invalid_api_key"))

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        """A chat or embeddings request: the same auth, limits and script, then its own answer."""
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            recorded = await self._record(request)
            if not recorded.path.endswith("/embeddings"):
                return await self._answer(request, recorded)
            embedding = embedding_record(recorded.index, recorded.body)
            if self.record:
                self.embedding_requests.append(embedding)
            response = await self._answer(request, recorded)
            embedding.status = response.status
            if response.status == 200:
                self.embedding_inputs += len(embedding.inputs)
            return response
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request, recorded: RecordedRequest) -> web.StreamResponse:
        if not self.authorized(request):
            return self.unauthorized()
        limit_headers: dict[str, str] = {}
        if self.random_429 and self._random.random() < self.random_429:
            response = _error(429, "The server is overloaded, try again.", "rate_limit_exceeded")
            response.headers["retry-after"] = "1"
            return self._respond(response)
        if self._cap is not None:
            wait = self._cap.take()
            limit_headers = answer_headers(self.ratelimit_headers, self._cap, self.advertised_rpm_scale)
            if wait > 0:
                response = _error(429, "Rate limit reached for requests.", "rate_limit_exceeded")
                response.headers.update(limit_headers)
                response.headers.update(refusal_headers(self.ratelimit_headers, wait, self.rpm_window_s))
                return self._respond(response)
        behaviour = (self.script(recorded) if self.script else None) or Behaviour()
        delay = self.latency_s if behaviour.delay_s is None else behaviour.delay_s
        if delay:
            await asyncio.sleep(delay)
        if behaviour.kind == "drop":
            assert request.transport is not None
            request.transport.close()
            self.status_counts[499] = self.status_counts.get(499, 0) + 1  # nginx's "client closed"
            raise asyncio.CancelledError  # aiohttp drops the handler; the client sees a reset
        if behaviour.kind == "malformed":
            garbled = '{"data": [' if recorded.path.endswith("/embeddings") else '{"choices": ['
            return self._respond(web.Response(status=200, text=garbled, content_type="application/json"))
        if behaviour.kind == "body":
            raw = behaviour.body if isinstance(behaviour.body, bytes) else json.dumps(behaviour.body).encode()
            return self._respond(web.Response(status=behaviour.status, body=raw, headers=behaviour.headers,
                                              content_type="application/json"))
        if behaviour.kind == "echo_headers":
            return self._respond(_echo_headers(behaviour.status, recorded))
        if behaviour.kind == "status":
            response = _error(behaviour.status, f"Scripted failure {behaviour.status}.", "scripted")
            response.headers.update(behaviour.headers)
            return self._respond(response)
        code, answer = self.answer_request(recorded, f"chatcmpl-fake-{recorded.index}", behaviour.text)
        return self._respond(web.json_response(answer, status=code, headers=limit_headers))

    def answer_text(self, body: Mapping[str, Any], prompt: str, text: str | None) -> str:
        """What an answered chat request says: the script's ``text``, else a conforming object
        for a schema (as a schema-enforcing API does, whatever the responder), else the responder's."""
        if text is not None:
            return text
        if self.body_responder is not None:  # a schema's strings then carry what it read ("4x3 red")
            prompt = self.body_responder(body)
        schema = requested_schema(body)
        if schema is not None:
            return conforming(schema, prompt)
        return prompt if self.body_responder is not None else self.responder(str(body.get("model", "")), prompt)

    def answer_request(self, recorded: RecordedRequest, completion_id: str,
                       text: str | None) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) a request not failed by the script gets, online or as a batch line:
        embeddings, a 400 for an image part the model refuses, or the chat completion."""
        if recorded.path.endswith("/embeddings"):
            return embed(recorded.body, self.embeddings)
        body = recorded.body if isinstance(recorded.body, dict) else {}
        model = str(body.get("model", ""))
        refused = refusal(recorded.images, model=model, images=self.images, max_image_bytes=self.max_image_bytes)
        if refused is not None:
            message, param, code = refused
            return 400, {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
        messages = body.get("messages")
        messages = messages if isinstance(messages, list) else []
        answer = self.answer_text(body, recorded.prompt, text)
        images = sum(part.tokens() for part in recorded.images)
        return 200, _completion(completion_id, model, messages, answer, self.prompt_cache, images)

    async def _models(self, request: web.Request) -> web.Response:
        await self._record(request)
        if not self.authorized(request):
            return self.unauthorized()
        data = [_model_entry(m) for m in self.models]
        return self._respond(web.json_response({"object": "list", "data": data}))

    async def _model(self, request: web.Request) -> web.Response:
        await self._record(request)
        model = request.match_info["model"]
        if model not in self.models:
            return self._respond(_error(404, f"The model '{model}' does not exist.", "model_not_found"))
        return self._respond(web.json_response(_model_entry(model)))

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})


def _responders(responder: str | Responder) -> tuple[Responder, BodyResponder | None]:
    """(the prompt's responder, the body's): "image" answers from the request's images."""
    if isinstance(responder, str) and responder in BODY_RESPONDERS:
        return RESPONDERS["echo"], BODY_RESPONDERS[responder]  # the prompt's is never asked then
    return (RESPONDERS[responder] if isinstance(responder, str) else responder), None


def _header_style(ratelimit_headers: bool | HeaderStyle) -> HeaderStyle:
    if ratelimit_headers is True or ratelimit_headers is False:
        ratelimit_headers = "openai" if ratelimit_headers else "none"
    if ratelimit_headers not in HEADER_STYLES:
        raise ValueError(f"ratelimit_headers must be True, False or one of {HEADER_STYLES}, "
                         f"got {ratelimit_headers!r}")
    return ratelimit_headers


def _model_entry(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 1700000000, "owned_by": "dfllm-fake"}


def _completion(completion_id: str, model: str, messages: list[Any], text: str,
                prompt_cache: PromptCache | None = None, image_tokens: int = 0) -> dict[str, Any]:
    prompt_tokens = image_tokens + sum(text_tokens(content_text(m.get("content"))) for m in messages
                                       if isinstance(m, dict))
    completion_tokens = text_tokens(text)
    cached_tokens = prompt_cache.serve(messages, prompt_tokens) if prompt_cache is not None else 0
    return (
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": 1700000000,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": cached_tokens},
            },
        }
    )


def _echo_headers(code: int, recorded: RecordedRequest) -> web.Response:
    """Every request header value, as sent and without an auth scheme, in the body's message
    (and outside JSON too, so a client quoting the raw body is caught as well)."""
    values = []
    for value in recorded.headers.values():
        values.append(value)
        values.append(value.split(" ", 1)[-1])
    echoed = " | ".join(values)
    if code >= 400:
        body = {"error": {"message": f"Bad credentials: {echoed}", "type": "echo", "param": None, "code": "echo"}}
        return web.json_response(body, status=code)
    return web.Response(status=code, text=f"<html>upstream said: {echoed}</html>", content_type="text/html")


def _error(code: int, message: str, kind: str) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": kind}}
    return web.json_response(body, status=code)
