"""Provider kinds: how an engine of a provider is built, and what it needs to be built.

``http``: the OpenAI-compatible engine on aiohttp, at the provider's (or the caller's) base URL.
``local``: llama.cpp in this process, on a GGUF file; no base URL, no key.

A kind is handed an ``Endpoint``, what it needs of an engine's configuration; ``EngineConfig.endpoint``
builds it, so kinds do not import ``config/engines`` (which imports them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from dfllm._exceptions import ResponseFormatError
from dfllm.config.secrets import Secret, shown_url
from dfllm.engines.base import NO_CAPABILITIES, Capabilities, Engine
from dfllm.engines.http import OpenAICompatibleEngine
from dfllm.engines.local import LocalEngine, describe_local, local_models, model_identity, model_problems


@dataclass(frozen=True)
class Endpoint:
    """Where and how an engine reaches its provider: all a kind reads from an engine's configuration."""

    base_url: str
    headers: Mapping[str, str | Secret] = field(default_factory=dict, repr=False)
    identity: str | None = None
    capabilities: Capabilities = NO_CAPABILITIES
    auth_hint: str | None = None
    # dfllm's option names -> llama.cpp's (``max_tokens``...), from the option table above the engines.
    local_names: Mapping[str, str] = field(default_factory=dict)

    @property
    def shown_base_url(self) -> str:
        """``base_url`` fit for a message: any part that looks like a key masked."""
        return shown_url(self.base_url)


class ProviderKind(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def needs_base_url(self) -> bool: ...

    @property
    def extra_params(self) -> frozenset[str]:
        """USING parameters this kind adds to the provider's own."""
        ...

    def connect(self, endpoint: Endpoint) -> Engine: ...

    def model_problems(self, model: str) -> list[str]: ...

    def model_identity(self, model: str) -> str: ...

    async def list_models(self, endpoint: Endpoint) -> list[dict[str, Any]]: ...

    async def describe(self, endpoint: Endpoint, model: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class HttpKind:
    name: str = "http"
    needs_base_url: bool = True
    extra_params: frozenset[str] = frozenset({"base_url"})

    def connect(self, endpoint: Endpoint) -> Engine:
        return _http_engine(endpoint)

    def model_problems(self, model: str) -> list[str]:
        return []

    def model_identity(self, model: str) -> str:
        return model

    async def list_models(self, endpoint: Endpoint) -> list[dict[str, Any]]:
        payload = await self._get(endpoint, "models")
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise ResponseFormatError(f"{endpoint.shown_base_url}/models did not return a model list.")
        return [e for e in data if isinstance(e, dict) and isinstance(e.get("id"), str)]

    async def describe(self, endpoint: Endpoint, model: str) -> dict[str, Any]:
        payload = await self._get(endpoint, f"models/{model}")
        return dict(payload) if isinstance(payload, dict) else {"id": model, "record": payload}

    @staticmethod
    async def _get(endpoint: Endpoint, path: str) -> Any:
        engine = _http_engine(endpoint)
        try:
            return await engine.get_json(path)
        finally:
            await engine.aclose()


@dataclass(frozen=True)
class LocalKind:
    """The llama.cpp engine (the optional ``dfllm[local]`` extra): llama.cpp itself loads when a model
    is, inside ``engines.local``."""

    name: str = "local"
    needs_base_url: bool = False
    extra_params: frozenset[str] = frozenset({"model_path"})

    def connect(self, endpoint: Endpoint) -> Engine:
        return LocalEngine(endpoint.local_names)

    def model_problems(self, model: str) -> list[str]:
        return model_problems(model)

    def model_identity(self, model: str) -> str:
        return model_identity(model)

    async def list_models(self, endpoint: Endpoint) -> list[dict[str, Any]]:
        return [{"id": m} for m in local_models()]

    async def describe(self, endpoint: Endpoint, model: str) -> dict[str, Any]:
        return await asyncio.to_thread(describe_local, model)


def _http_engine(endpoint: Endpoint) -> OpenAICompatibleEngine:
    return OpenAICompatibleEngine(endpoint.base_url, endpoint.headers, identity=endpoint.identity,
                                  capabilities=endpoint.capabilities, auth_hint=endpoint.auth_hint)


KINDS: dict[str, ProviderKind] = {k.name: k for k in (HttpKind(), LocalKind())}
