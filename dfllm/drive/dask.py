"""Dask: ``ddf.llm.predict(...)`` returns a lazy Dask DataFrame; each partition is a pandas frame.

Building the graph validates everything on the frame's ``meta`` (an empty pandas frame) and
sends nothing; the output columns are declared up front from it. Each partition task plans,
runs on its worker's runtime (``dfllm.runtime.worker``) and writes back, as ``predict`` does.

What travels in the graph is an ``EngineSpec`` (provider, base URL, options, routing), never a
session or a key. The key reaches workers either from their own environment (the provider's
``key_env``) or through a Dask worker plugin registered by the client, which puts it in each
worker's memory; it is never in a task, a task name or the graph.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import dask.dataframe as dd
import pandas as pd
from dask.dataframe.extensions import register_dataframe_accessor
from typing_extensions import Unpack

from dfllm._exceptions import BatchError, MissingAPIKeyError, ParameterError
from dfllm.config.engines import EngineConfig
from dfllm.config.models import Model
from dfllm.config.options import PredictOptions
from dfllm.config.secrets import Secret, shown_url
from dfllm.drive.eager import make_executor
from dfllm.engines.providers import Provider
from dfllm.engines.tasks import ChatTask, EmbedTask
from dfllm.frames import LazyKind, register_lazy
from dfllm.frames.accessor import Verbs, taken_by_other
from dfllm.plan import Plan, make_plan, write_back
from dfllm.prompt.template import Template
from dfllm.runtime.embedding import EmbedSpec
from dfllm.runtime.executor import Outcome
from dfllm.runtime.progress import RunStats
from dfllm.runtime.stores import SharedStore, cache_location, open_store
from dfllm.runtime.worker import KEYS, worker_runtime


def _key_id(identity: str, secret: Secret) -> str:
    """Names a key without revealing it: a keyed hash, safe in a task and a plugin name."""
    digest = hashlib.blake2b(identity.encode() + b"\x00" + secret.reveal().encode(),
                             key=b"dfllm dask key id", digest_size=12)
    return digest.hexdigest()


@dataclass(frozen=True)
class EngineSpec:
    """What a worker needs to open an engine: everything in ``EngineConfig`` but the secrets."""

    name: str
    provider: Provider
    base_url: str
    options: Mapping[str, Any] = field(default_factory=dict)
    model_path: str | None = None
    routing: Mapping[str, str] = field(default_factory=dict)
    key_id: str | None = None
    structured_outputs: str | None = None
    cache_namespace: str | None = None

    def __repr__(self) -> str:
        # The spec travels in the task graph, where Dask shows reprs (dashboard, logs): a key pasted
        # into base_url's path is masked as it is in EngineConfig's repr.
        return f"EngineSpec(name={self.name!r}, provider={self.provider.name!r}, base_url={shown_url(self.base_url)!r})"

    @classmethod
    def of(cls, config: EngineConfig) -> EngineSpec:
        secret_routing = [h for h, v in config.routing.items() if isinstance(v, Secret)]
        extra = [h for h, v in config.headers.items()
                 if isinstance(v, Secret) and h != config.provider.auth_header and h not in config.routing]
        if secret_routing or extra:
            raise ParameterError(
                f"Engine {config.name!r} sends secret headers {sorted(secret_routing + extra)} besides its API "
                "key; on Dask only the provider's key can reach the workers. Use a Portkey config or "
                "provider header without secrets, or run dfllm.predict on each partition yourself."
            )
        key = config.headers.get(config.provider.auth_header)
        key_id = _key_id(config.identity, key) if isinstance(key, Secret) else None
        if isinstance(key, Secret):
            KEYS[key_id or ""] = key
        return cls(config.name, config.provider, config.base_url, dict(config.options), config.model_path,
                   {h: str(v) for h, v in config.routing.items()}, key_id, config.structured_outputs,
                   config.cache_namespace)

    def config(self) -> EngineConfig:
        """The engine's config in this process, with the key from ``KEYS`` or the environment."""
        headers: dict[str, str | Secret] = dict(self.routing)
        provider = self.provider
        key = KEYS.get(self.key_id) if self.key_id else None
        if key is None and provider.key_env and os.environ.get(provider.key_env):
            key = Secret(provider.auth_prefix + os.environ[provider.key_env])
        if key is not None:
            headers[provider.auth_header] = key
        elif self.key_id is not None or provider.key_required:
            raise MissingAPIKeyError(
                f"Engine {self.name!r} has no API key on this Dask worker. Set {provider.key_env or 'the key'} "
                "in the workers' environment, or build the graph with a distributed Client connected "
                "(dfllm then hands the key to each worker through a worker plugin)."
            )
        return EngineConfig(self.name, provider, self.base_url, headers, dict(self.options), self.model_path,
                            dict(self.routing), self.structured_outputs, self.cache_namespace)


@dataclass(frozen=True)
class PartitionCall:
    """Everything one partition task needs; the same object for every partition of one call."""

    engine: EngineSpec
    model: str
    template: str
    target: str
    options: Mapping[str, Any]
    budget: str  # the rate budget shared across the cluster (account and model)
    coordinated: bool  # a coordinator runs on the scheduler
    share: float  # the fraction of rpm/tpm this worker may use when no coordinator runs
    workers: int
    call_id: str
    task: str = ChatTask.kind

    def __dask_tokenize__(self) -> str:
        return self.call_id


def predict(ddf: dd.DataFrame, engine: Any, model: str | None = None, template: str | Template | None = None,
            target: str | None = None, *, stats: RunStats | None = None, task: str = ChatTask.kind,
            **options: Unpack[PredictOptions]) -> dd.DataFrame:
    """The lazy form of ``dfllm.predict`` (and of ``embed``, ``task="embedding"``) for a Dask DataFrame:
    nothing is sent until computed."""
    if stats is not None:
        raise ParameterError("stats= cannot be filled on Dask: each partition's counters stay on its worker. "
                             "Leave it out; the server's records or the result's error column tell what happened.")
    cache = options.get("cache")
    if getattr(cache, "storage_options", None):
        raise ParameterError(
            "On Dask, a FsspecCache with storage options would put them (credentials, often) into every "
            "task of the graph. Give the workers their credentials the way fsspec reads them (environment "
            "variables, config files, instance roles) and pass FsspecCache(url) or the URL alone."
        )
    call_options: dict[str, Any] = dict(options)
    if isinstance(engine, Model):
        call_options = {**engine.options, **call_options}
    meta_frame = ddf._meta
    plan = make_plan(meta_frame, engine, model, template, target, call_options, task=task)  # no request
    _declared_dimensions(plan)
    if plan.options.mode == "batch":
        # A job per partition would each wait up to a day on a worker, holding its slot, and a
        # partition retried by Dask would submit again: batch jobs are a driver-side flow.
        raise ParameterError(
            "mode='batch' is not supported on Dask frames. Write the frame to Parquet (ddf.to_parquet) and run "
            "`dfllm predict in.parquet out.parquet --mode batch ...`, or compute it to pandas and call "
            "dfllm.predict(df, ..., mode='batch'); nothing was sent.")
    if plan.config is None:
        raise ParameterError(
            "On Dask, engine must be an engine name, a provider name or a model from create_model: its "
            "configuration travels to the workers. An engine object (a live session) cannot."
        )
    meta = write_back(plan, [], RunStats())
    spec = EngineSpec.of(plan.config)
    budget = hashlib.blake2b(f"{plan.info.identity}|{plan.spec.model}".encode(), digest_size=12).hexdigest()
    coordinated, share, workers = _connect_cluster(spec, plan.options.rpm or plan.options.tpm)
    call_options["cache"] = cache_location(plan.options.cache)
    call_options["progress"] = False
    if isinstance(engine, Model):
        template = template or engine.prompt_template
    text = template.text if isinstance(template, Template) else str(template)
    call = PartitionCall(spec, plan.spec.model, text, plan.target, call_options, budget,
                         coordinated, share, workers, uuid.uuid4().hex, task)
    result: dd.DataFrame = ddf.map_partitions(_predict_partition, call, meta=meta)  # type: ignore[no-untyped-call]
    return result


def _declared_dimensions(plan: Plan) -> None:
    """A lazy frame declares its columns before anything is sent: a vector column needs its length."""
    if isinstance(plan.spec, EmbedSpec) and plan.spec.dimensions is None:
        raise ParameterError("A lazy frame declares its columns before anything is sent, so embed on it needs "
                             "dimensions= (the vectors' length, e.g. 1536 for text-embedding-3-small).")


def _connect_cluster(spec: EngineSpec, limited: float | None) -> tuple[bool, float, int]:
    """Start the coordinator and hand the key to workers, when a distributed client is connected.

    Returns (coordinated, static share, workers). Without a client, tasks run in this process
    and share one runtime, so no coordination is needed.
    """
    try:
        from distributed import default_client
    except ImportError:
        return False, 1.0, 1
    try:
        client = default_client()  # type: ignore[no-untyped-call]
    except ValueError:
        return False, 1.0, 1
    if spec.key_id is not None:
        from dfllm.runtime.coordinator import KeyPlugin

        client.register_plugin(KeyPlugin(spec.key_id, KEYS[spec.key_id]), name=f"dfllm-key-{spec.key_id}")
    workers = max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})))
    from dfllm.runtime.coordinator import RateCoordinator

    try:
        client.register_plugin(RateCoordinator())
    except Exception as exc:
        warnings.warn(
            f"dfllm could not start its rate coordinator on the Dask scheduler ({type(exc).__name__}: {exc}); "
            f"is dfllm installed there? Each of the {workers} workers now keeps an even static share "
            f"(1/{workers}) of rpm and tpm, and a Retry-After seen by one worker does not pause the others."
            if limited else
            f"dfllm could not start its rate coordinator on the Dask scheduler ({type(exc).__name__}: {exc}); "
            "is dfllm installed there? Each worker learns the provider's limits on its own and a Retry-After "
            "seen by one worker does not pause the others.",
            UserWarning, stacklevel=4,
        )
        return False, 1.0 / workers, workers
    return True, 1.0, workers


def _predict_partition(part: pd.DataFrame, call: PartitionCall) -> pd.DataFrame:
    plan = make_plan(part, call.engine.config(), call.model, call.template, call.target, call.options,
                     task=call.task)
    rpm = plan.options.rpm * call.share if plan.options.rpm else None
    tpm = plan.options.tpm * call.share if plan.options.tpm else None
    plan.options = replace(plan.options, rpm=rpm, tpm=tpm)
    gate_call = _scheduler_call() if call.coordinated else None
    runtime = worker_runtime()
    outcomes = runtime.submit(_answer(runtime, call, plan, gate_call))
    try:
        result: pd.DataFrame = write_back(plan, outcomes, RunStats())
    except BatchError as exc:
        # err.partial holds this partition only: say so, and where the other answers are.
        raise BatchError(exc.partial, exc.errors, len(plan.row_work), stats=exc.stats, scope=(
            "in one Dask partition; err.partial holds that partition. Answers that arrived, in every "
            "partition, are cached: computing again costs nothing for them. Pass errors='null' to get "
            "every row with an error column instead")) from None
    return result


def _scheduler_call() -> Any:
    """An async ``call(op, **fields)`` to the scheduler, usable from the runtime's loop.

    The RPC itself runs on the worker's own loop (its connections belong there); the runtime's
    loop only waits for the answer.
    """
    from distributed import get_worker  # only with a client: import dfllm never loads distributed

    worker = get_worker()

    async def call(op: str, **fields: Any) -> Any:
        future = asyncio.run_coroutine_threadsafe(getattr(worker.scheduler, op)(**fields),
                                                  worker.loop.asyncio_loop)  # type: ignore[attr-defined]
        return await asyncio.wrap_future(future)

    call.worker_address = worker.address  # type: ignore[attr-defined]
    return call


async def _answer(runtime: Any, call: PartitionCall, plan: Plan, gate_call: Any) -> list[Outcome]:
    assert plan.config is not None
    # One open cache per worker, lent to every call's executor; flushed as each partition ends,
    # so an answer is on disk before its task reports done.
    location = plan.options.cache
    store = runtime.shared(("store", location), lambda: open_store(location)) if location is not False else None
    plan.options = replace(plan.options, cache=SharedStore(store) if store is not None else False)
    engine = runtime.engine((plan.info.identity, call.engine.key_id), plan.config.connect)
    gate = None
    if gate_call is not None:
        from dfllm.runtime.coordinator import ClusterGate

        # One gate per budget and limits: a gate leases at its first call's rpm/tpm, so a later
        # call with other limits (or none) on the same worker must not reuse it.
        limits = (plan.options.rpm, plan.options.tpm)
        gate = runtime.shared(("gate", call.budget, limits), lambda: ClusterGate(
            call.budget, gate_call.worker_address, gate_call, rpm=plan.options.rpm, tpm=plan.options.tpm,
            workers=call.workers))
    executor = await runtime.executor(call.call_id, lambda: make_executor(plan, engine, RunStats(), gate=gate))
    outcomes: list[Outcome] = await executor.run(plan.work)
    if store is not None:
        await asyncio.to_thread(store.flush)
    return outcomes


def is_dask_frame(df: object) -> bool:
    return isinstance(df, dd.DataFrame)


class DaskAccessor(Verbs):
    """``ddf.llm.predict(engine, model, template, target, **options)``: a lazy Dask DataFrame.
    The verbs return lazy Dask DataFrames too."""

    def __init__(self, ddf: dd.DataFrame) -> None:
        self._frame = ddf

    def predict(self, engine: Any, model: str | None = None, template: str | Template | None = None,
                target: str | None = None, **options: Unpack[PredictOptions]) -> dd.DataFrame:
        return predict(self._frame, engine, model, template, target, **options)

    def embed(self, engine: Any, model: str | None = None, template: str | Template | None = None,
              target: str | None = None, **options: Unpack[PredictOptions]) -> dd.DataFrame:
        """A lazy vector column (``dimensions=`` required: the columns are declared up front)."""
        return predict(self._frame, engine, model, template, target, task=EmbedTask.kind, **options)


def _keep_yes(answered: dd.DataFrame, target: str) -> dd.DataFrame:
    kept = answered[answered[target] == "yes"]
    added = [c for c in answered.columns if c == target or c.startswith(f"{target}_")]
    result: dd.DataFrame = kept.drop(columns=added)
    return result


register_lazy("dask", LazyKind(is_dask_frame, predict, _keep_yes))
if not taken_by_other(dd.DataFrame):
    register_dataframe_accessor("llm")(DaskAccessor)  # type: ignore[no-untyped-call]
