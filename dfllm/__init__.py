"""dfllm: LLM predictions on DataFrame rows.

``import dfllm`` registers ``df.llm`` on pandas and Polars frames (whichever are installed).
"""

from __future__ import annotations

import importlib.util

from dfllm._api import apredict, last_run, predict
from dfllm._catalog import list_models
from dfllm._exceptions import (
    AuthenticationError,
    BadRequestError,
    BatchError,
    ConfigurationError,
    DfllmError,
    EngineError,
    FineTuneError,
    LabelError,
    MissingAPIKeyError,
    ParameterError,
    RateLimitError,
    ResponseFormatError,
    ServerError,
    TemplateError,
    TransportError,
    UnknownEngineError,
)
from dfllm._finetune import finetune
from dfllm._models import Model, create_model
from dfllm._progress import RunStats
from dfllm._registry import EngineConfig, create_engine, drop_engine, list_engines
from dfllm._template import Template
from dfllm.engines import Completion, Engine, Provider, Request

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "BatchError",
    "Completion",
    "ConfigurationError",
    "DfllmError",
    "Engine",
    "EngineConfig",
    "EngineError",
    "FineTuneError",
    "LabelError",
    "MissingAPIKeyError",
    "Model",
    "ParameterError",
    "Provider",
    "RateLimitError",
    "Request",
    "ResponseFormatError",
    "RunStats",
    "ServerError",
    "Template",
    "TemplateError",
    "TransportError",
    "UnknownEngineError",
    "apredict",
    "create_engine",
    "create_model",
    "drop_engine",
    "finetune",
    "last_run",
    "list_engines",
    "list_models",
    "predict",
]

for _frame_library in ("pandas", "polars"):
    if importlib.util.find_spec(_frame_library) is not None:
        importlib.import_module(f"dfllm.{_frame_library}")
