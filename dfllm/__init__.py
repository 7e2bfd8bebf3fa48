"""dfllm: LLM predictions on DataFrame rows.

``import dfllm`` registers ``df.llm`` on pandas, Polars and Dask frames (whichever are installed).
"""

from __future__ import annotations

import contextlib
import importlib.util

from dfllm._exceptions import (
    AuthenticationError,
    BadRequestError,
    BatchError,
    CacheError,
    ConfigurationError,
    DfllmError,
    EngineError,
    FineTuneError,
    IncompleteAnswerError,
    LabelError,
    MissingAPIKeyError,
    ParameterError,
    RateLimitError,
    RedirectError,
    RefusalError,
    ResponseFormatError,
    SchemaError,
    ServerError,
    TemplateError,
    TransportError,
    UnknownEngineError,
)
from dfllm._finetune import finetune
from dfllm.config.catalog import list_models
from dfllm.config.engines import EngineConfig, create_engine, drop_engine, list_engines
from dfllm.config.models import Model, create_model
from dfllm.config.options import PredictOptions
from dfllm.drive.eager import apredict, last_run, predict
from dfllm.drive.embed import aembed, embed
from dfllm.drive.estimate import Estimate, estimate
from dfllm.drive.jobs import BatchHandle, JobStatus, RecordedJob, batch_jobs, submit
from dfllm.drive.semantic import dedup, sem_join, sem_join_estimate, sim_join
from dfllm.drive.verbs import classify as _classify
from dfllm.drive.verbs import extract as _extract
from dfllm.drive.verbs import filter as _filter
from dfllm.engines.base import Capabilities, Completion, Engine, Request
from dfllm.engines.openai_batch import BatchJobError
from dfllm.engines.providers import Provider, register_provider
from dfllm.frames.accessor import Drivers as _Drivers
from dfllm.frames.accessor import use_drivers as _use_drivers
from dfllm.prompt.template import Template
from dfllm.runtime.progress import RunStats
from dfllm.runtime.stores import FsspecCache

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "BatchError",
    "BatchHandle",
    "BatchJobError",
    "CacheError",
    "Capabilities",
    "Completion",
    "ConfigurationError",
    "DfllmError",
    "Engine",
    "EngineConfig",
    "EngineError",
    "Estimate",
    "FineTuneError",
    "FsspecCache",
    "IncompleteAnswerError",
    "JobStatus",
    "LabelError",
    "MissingAPIKeyError",
    "Model",
    "ParameterError",
    "PredictOptions",
    "Provider",
    "RateLimitError",
    "RecordedJob",
    "RedirectError",
    "RefusalError",
    "Request",
    "ResponseFormatError",
    "RunStats",
    "SchemaError",
    "ServerError",
    "Template",
    "TemplateError",
    "TransportError",
    "UnknownEngineError",
    "aembed",
    "apredict",
    "batch_jobs",
    "create_engine",
    "create_model",
    "dedup",
    "drop_engine",
    "embed",
    "estimate",
    "finetune",
    "last_run",
    "list_engines",
    "list_models",
    "predict",
    "register_provider",
    "sem_join",
    "sem_join_estimate",
    "sim_join",
    "submit",
]

_use_drivers(_Drivers(predict, apredict, _classify, _extract, _filter, finetune, embed=embed,
                      sim_join=sim_join, dedup=dedup, sem_join=sem_join))

# The adapters and lazy drivers of each installed frame library; each registers its ``.llm`` accessor.
_FRAME_MODULES = {"pandas": ("dfllm.frames.pandas",), "polars": ("dfllm.frames.polars", "dfllm.drive.polars_lazy"),
                  "dask": ("dfllm.drive.dask",)}
for _frame_library, _modules in _FRAME_MODULES.items():
    if importlib.util.find_spec(_frame_library) is not None:
        with contextlib.suppress(ImportError):  # dask installed without its dataframe extra
            for _module in _modules:
                importlib.import_module(_module)
