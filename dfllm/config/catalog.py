"""What models an engine offers (``GET /models``, cached per engine) and what one model is."""

from __future__ import annotations

import copy
from typing import Any

from dfllm._exceptions import EngineError, ParameterError
from dfllm.config.engines import EngineConfig, resolve_engine
from dfllm.runtime.sync import run_sync

_listings: dict[str, list[dict[str, Any]]] = {}  # engine identity -> /models entries (plain data)


def list_models(engine: Any, *, refresh: bool = False) -> list[str]:
    """The model ids the engine's provider lists. Fetched once per engine and process."""
    config = _config(engine)
    if refresh or config.identity not in _listings:
        try:
            _listings[config.identity] = run_sync(config.kind.list_models(config.endpoint))
        except EngineError as exc:
            raise _listing_failed(config, exc) from None
    return [entry["id"] for entry in _listings[config.identity]]


def _listing_failed(config: EngineConfig, exc: EngineError) -> EngineError:
    """``exc`` (same class, status and wait), saying whose model list failed, and what to do
    where the provider is a gateway you run yourself (the open-source Portkey gateway's fails)."""
    message = f"Listing the models of engine {config.name!r} at {config.shown_base_url} failed: {exc}"
    hint = config.provider.models_hint
    if hint and config.base_url != config.provider.base_url:
        message = f"{message.rstrip('.')}. {hint}"
    failed = copy.copy(exc)
    failed.args = (message,)
    return failed


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
    return run_sync(config.kind.describe(config.endpoint, model_name))


def _config(engine: Any) -> EngineConfig:
    config = resolve_engine(engine)
    if not isinstance(config, EngineConfig):
        raise ParameterError(
            f"Model listing needs an engine created with dfllm.create_engine, got {type(config).__name__}."
        )
    return config
