"""What models an engine offers (``GET /models``, cached per engine) and what one model is."""

from __future__ import annotations

from typing import Any

from dfllm._exceptions import BadRequestError, ParameterError
from dfllm._registry import EngineConfig, resolve_engine
from dfllm._sync import run_sync

_listings: dict[str, list[dict[str, Any]]] = {}  # engine identity -> /models entries (plain data)


def list_models(engine: Any, *, refresh: bool = False) -> list[str]:
    """The model ids the engine's provider lists. Fetched once per engine and process."""
    return [entry["id"] for entry in _listing(_config(engine), refresh=refresh)]


def describe_model(engine: Any, model_name: str | None) -> dict[str, Any]:
    """The provider's record of one model; for Anyscale, its HuggingFace model card link."""
    config = _config(engine)
    if not model_name:
        raise ParameterError("describe needs a model name.")
    if config.provider.model_card_url:
        return {
            "id": model_name,
            "provider": config.provider.name,
            "model_card": config.provider.model_card_url.format(model=model_name),
        }
    if config.provider.local:
        from dfllm.engines._local import describe_local

        return describe_local(model_name)
    return dict(run_sync(_get(config, f"models/{model_name}")))


def _config(engine: Any) -> EngineConfig:
    config = resolve_engine(engine)
    if not isinstance(config, EngineConfig):
        raise ParameterError(
            f"Model listing needs an engine created with dfllm.create_engine, got {type(config).__name__}."
        )
    return config


def _listing(config: EngineConfig, *, refresh: bool) -> list[dict[str, Any]]:
    if config.provider.local:
        from dfllm.engines._local import local_models

        return [{"id": m} for m in local_models()]
    if refresh or config.identity not in _listings:
        payload = run_sync(_get(config, "models"))
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise BadRequestError(f"{config.base_url}/models did not return a model list: {str(payload)[:200]}")
        _listings[config.identity] = [e for e in data if isinstance(e, dict) and "id" in e]
    return _listings[config.identity]


async def _get(config: EngineConfig, path: str) -> Any:
    from dfllm.engines._openai import OpenAICompatibleEngine

    engine = OpenAICompatibleEngine(config.base_url, config.headers)
    try:
        return await engine.get_json(path)
    finally:
        await engine.aclose()
