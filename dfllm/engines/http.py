"""The OpenAI-compatible chat-completions engine, on aiohttp.

This module is the one boundary where aiohttp's exceptions and HTTP statuses become dfllm
errors. It moves one request at a time and decides nothing about retrying.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from time import time
from typing import Any

import aiohttp

from dfllm._exceptions import (
    AuthenticationError,
    BadRequestError,
    EngineError,
    RateLimitError,
    ResponseFormatError,
    ServerError,
    TransportError,
)
from dfllm.config.secrets import Secret
from dfllm.engines.base import NO_CAPABILITIES, Capabilities, Completion, RateLimitState, Request


class OpenAICompatibleEngine:
    """POSTs to ``{base_url}/chat/completions`` with the given headers.

    ``headers`` values may be ``Secret``: they are revealed only when the session is built.
    """

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str | Secret],
        *,
        identity: str | None = None,
        capabilities: Capabilities = NO_CAPABILITIES,
    ) -> None:
        self.identity = identity
        self.capabilities = capabilities
        self.max_concurrency: int | None = None
        self.base_url = base_url.rstrip("/")
        self._url = f"{self.base_url}/chat/completions"
        self._headers = dict(headers)
        self._secrets = [v for v in headers.values() if isinstance(v, Secret)]
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"OpenAICompatibleEngine(base_url={self.base_url!r})"

    def _session_now(self) -> aiohttp.ClientSession:
        # Built on first use so it belongs to the loop that runs the requests.
        if self._session is None:
            revealed = {k: v.reveal() if isinstance(v, Secret) else v for k, v in self._headers.items()}
            self._session = aiohttp.ClientSession(
                headers={"Content-Type": "application/json", **revealed},
                # No connection cap: the executor's worker pool bounds requests in flight.
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                json_serialize=json.dumps,
            )
        return self._session

    async def complete(self, request: Request) -> Completion:
        body = {"model": request.model, "messages": request.messages, **request.params}
        raw, headers = await self._send("POST", self._url, request.timeout_s, body)
        return _parse_completion(raw, headers, self.base_url)

    async def get_json(self, path: str, timeout_s: float = 60.0) -> Any:
        """GET ``{base_url}/{path}`` (model listing), with the same error mapping as ``complete``."""
        raw, _ = await self._send("GET", f"{self.base_url}/{path.lstrip('/')}", timeout_s)
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ResponseFormatError(f"GET {path} returned non-JSON: {raw[:200]!r}") from exc

    async def _send(self, method: str, url: str, timeout_s: float,
                    body: Any = None) -> tuple[bytes, Mapping[str, str]]:
        """One HTTP exchange; every aiohttp exception and error status becomes a dfllm error here."""
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with self._session_now().request(method, url, json=body, timeout=timeout) as resp:
                raw = await resp.read()
                status, headers = resp.status, resp.headers
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise TransportError(f"No answer from {self.base_url} within timeout_s={timeout_s}.") from exc
        except aiohttp.ClientError as exc:
            raise TransportError(self._scrub(f"{method} {url} failed: {exc!r}")) from exc
        if status >= 400:
            raise self._status_error(status, headers, raw)
        return raw, headers

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = secret.scrub(text)
        return text

    def _status_error(self, status: int, headers: Mapping[str, str], raw: bytes) -> EngineError:
        detail = self._scrub(_error_detail(raw))
        where = f"{self.base_url} answered HTTP {status}: {detail}"
        if status in (401, 403):
            return AuthenticationError(
                f"{where}. Check the API key given to create_engine (or its environment variable).",
                status=status,
            )
        if status == 429:
            return RateLimitError(where, status=status, retry_after=retry_after_s(headers))
        if status in (408, 409) or status >= 500:
            return ServerError(where, status=status, retry_after=retry_after_s(headers))
        return BadRequestError(f"{where}. The request was rejected as invalid; it is not retried.", status=status)


def _error_detail(raw: bytes) -> str:
    try:
        payload = json.loads(raw)
    except ValueError:
        return raw[:300].decode("utf-8", "replace") or "(empty body)"
    if isinstance(payload, dict):
        error = payload.get("error", payload)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:300]
        if isinstance(error, str):
            return error[:300]
    return str(payload)[:300]


def _parse_completion(raw: bytes, headers: Mapping[str, str], base_url: str) -> Completion:
    try:
        payload = json.loads(raw)
        message = payload["choices"][0]["message"]
        text = message.get("content") or ""
        usage = payload.get("usage") or {}
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise ResponseFormatError(
            f"{base_url} answered 2xx but the body is not a chat completion: {raw[:200]!r}"
        ) from exc
    return Completion(
        text=text,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        rate_limit=rate_limit_state(headers),
    )


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, then ``retry-after`` (secs or date)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration_s(text: str | None) -> float | None:
    """OpenAI's reset format: ``"1s"``, ``"6m0s"``, ``"20ms"``; a bare number is seconds."""
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    return sum(float(n) * _UNIT_S[u] for n, u in parts) if parts else None


def _int(text: str | None) -> int | None:
    try:
        return int(float(text)) if text is not None else None
    except ValueError:
        return None


def rate_limit_state(headers: Mapping[str, str]) -> RateLimitState | None:
    if "x-ratelimit-limit-requests" not in headers and "x-ratelimit-limit-tokens" not in headers:
        return None
    return RateLimitState(
        limit_requests=_int(headers.get("x-ratelimit-limit-requests")),
        remaining_requests=_int(headers.get("x-ratelimit-remaining-requests")),
        reset_requests_s=parse_duration_s(headers.get("x-ratelimit-reset-requests")),
        limit_tokens=_int(headers.get("x-ratelimit-limit-tokens")),
        remaining_tokens=_int(headers.get("x-ratelimit-remaining-tokens")),
        reset_tokens_s=parse_duration_s(headers.get("x-ratelimit-reset-tokens")),
    )
