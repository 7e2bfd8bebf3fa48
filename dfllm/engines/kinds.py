"""Provider kinds: how an engine of a provider is built, and what it needs to be built.

``http``: the OpenAI-compatible engine on aiohttp, at the provider's (or the caller's) base URL.
``local``: llama.cpp in this process, on a GGUF file; no base URL, no key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from dfllm.config.engines import EngineConfig
    from dfllm.engines.base import Engine


class ProviderKind(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def needs_base_url(self) -> bool: ...

    @property
    def extra_params(self) -> frozenset[str]:
        """USING parameters this kind adds to the provider's own."""
        ...

    def connect(self, config: EngineConfig) -> Engine: ...

    def model_problems(self, model: str) -> list[str]: ...

    def model_identity(self, model: str) -> str: ...

    async def list_models(self, config: EngineConfig) -> list[dict[str, Any]]: ...

    async def describe(self, config: EngineConfig, model: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class HttpKind:
    name: str = "http"
    needs_base_url: bool = True
    extra_params: frozenset[str] = frozenset({"base_url"})

    def connect(self, config: EngineConfig) -> Engine:
        from dfllm.engines.http import OpenAICompatibleEngine

        return OpenAICompatibleEngine(config.base_url, config.headers, identity=config.identity,
                                      capabilities=config.capabilities,
                                      auth_hint=config.provider.auth_hint)

    def model_problems(self, model: str) -> list[str]:
        return []

    def model_identity(self, model: str) -> str:
        return model

    async def list_models(self, config: EngineConfig) -> list[dict[str, Any]]:
        payload = await self._get(config, "models")
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            from dfllm._exceptions import ResponseFormatError

            raise ResponseFormatError(f"{config.shown_base_url}/models did not return a model list.")
        return [e for e in data if isinstance(e, dict) and isinstance(e.get("id"), str)]

    async def describe(self, config: EngineConfig, model: str) -> dict[str, Any]:
        payload = await self._get(config, f"models/{model}")
        return dict(payload) if isinstance(payload, dict) else {"id": model, "record": payload}

    @staticmethod
    async def _get(config: EngineConfig, path: str) -> Any:
        from dfllm.engines.http import OpenAICompatibleEngine

        engine = OpenAICompatibleEngine(config.base_url, config.headers, auth_hint=config.provider.auth_hint)
        try:
            return await engine.get_json(path)
        finally:
            await engine.aclose()


@dataclass(frozen=True)
class LocalKind:
    name: str = "local"
    needs_base_url: bool = False
    extra_params: frozenset[str] = frozenset({"model_path"})

    def connect(self, config: EngineConfig) -> Engine:
        from dfllm.engines.local import LocalEngine

        return LocalEngine()

    def model_problems(self, model: str) -> list[str]:
        from dfllm.engines.local import model_problems

        return model_problems(model)

    def model_identity(self, model: str) -> str:
        from dfllm.engines.local import model_identity

        return model_identity(model)

    async def list_models(self, config: EngineConfig) -> list[dict[str, Any]]:
        from dfllm.engines.local import local_models

        return [{"id": m} for m in local_models()]

    async def describe(self, config: EngineConfig, model: str) -> dict[str, Any]:
        import asyncio

        from dfllm.engines.local import describe_local

        return await asyncio.to_thread(describe_local, model)


KINDS: dict[str, ProviderKind] = {k.name: k for k in (HttpKind(), LocalKind())}
