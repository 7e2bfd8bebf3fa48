"""``embed``: a vector per row, as one contiguous float32 column of a new frame.

The same plan -> run -> write-back as ``predict``, with the embedding task kind: rows' texts are
rendered from the template (or a bare column name), identical texts embedded once, many texts a
request (``embed_batch_size``), through the same limits, retries, cache and progress.
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

from typing_extensions import Unpack

from dfllm import frames
from dfllm._exceptions import ParameterError
from dfllm.config.options import PredictOptions
from dfllm.drive.eager import run_plan
from dfllm.engines.tasks import EmbedTask
from dfllm.plan import make_plan, write_back
from dfllm.prompt.template import Template
from dfllm.runtime.bulk import gc_paused
from dfllm.runtime.progress import RunStats
from dfllm.runtime.sync import run_sync

Frame = TypeVar("Frame")


def embed(df: Frame, engine: Any, model: str | None = None, template: str | Template | None = None,
          target: str | None = None, *, stats: RunStats | None = None, **options: Unpack[PredictOptions]) -> Frame:
    """A copy of ``df`` with a vector column ``target``: Polars ``Array(Float32, dim)``, in pandas an
    ``ArrowDtype(fixed_size_list<float32>[dim])`` column. ``template`` renders each row's text, or names
    a column whose text is embedded as it is. Options: ``dimensions``, ``embed_batch_size`` and the
    call options of ``predict`` (cache, rpm, tpm, retries, errors, progress). A lazy frame gives back
    a lazy frame of its kind."""
    lazy = frames.lazy_predict_for(df)
    if lazy is not None:
        return cast(Frame, lazy(df, engine, model, template, target, stats=stats, task=EmbedTask.kind, **options))
    return run_sync(aembed(df, engine, model, template, target, stats=stats, **options))


async def aembed(df: Frame, engine: Any, model: str | None = None, template: str | Template | None = None,
                 target: str | None = None, *, stats: RunStats | None = None,
                 **options: Unpack[PredictOptions]) -> Frame:
    """The async form of ``embed``."""
    if stats is not None and not isinstance(stats, RunStats):
        raise ParameterError(f"stats must be a dfllm.RunStats to receive the counters, got {stats!r}.")
    with gc_paused():
        plan = make_plan(df, engine, model, template, target, options, task=EmbedTask.kind)
    run_stats = stats if stats is not None else RunStats()
    outcomes = await run_plan(plan, run_stats)
    with gc_paused():
        result: Frame = write_back(plan, outcomes, run_stats)
    return result
