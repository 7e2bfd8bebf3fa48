"""Polars LazyFrame: ``lf.llm.predict(...)`` returns a LazyFrame; requests happen at collect.

The result is a Polars IO source (``register_io_source``) whose schema, input columns plus the
answer columns, is declared up front, so it composes with ``scan_parquet(...)`` and
``sink_parquet(...)`` and ``explain()`` sends nothing. Why an IO source rather than
``map_batches``: a source is one generator per collect, which gives the engine session, the
executor (its limits, learned rates, pause) and the cache one lifetime, opened at the first
batch and closed after the last, where ``map_batches`` calls an independent function per batch
with no end to hang the session's closing on.

Everything a caller can get wrong is checked when ``predict`` is called, before any request.
At collect, the input streams through in batches of ``batch_rows``; each batch's unique prompts
fan out concurrently. Filters on input columns are applied before predicting (no request for a
row that is filtered out, nor for one a conjunction's input terms drop); filters on answer columns
after. A query that reads no answer column (``.select("id")``,
``.filter(pl.col("id") < 5).select(pl.len())``) sends nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import polars as pl
from polars.io.plugins import register_io_source
from typing_extensions import Unpack

from dfllm._exceptions import ParameterError
from dfllm.config.options import PredictOptions
from dfllm.drive.stream import BackgroundRunner
from dfllm.engines.tasks import ChatTask, EmbedTask
from dfllm.frames import LazyKind, register_lazy
from dfllm.frames.accessor import Verbs, taken_by_other
from dfllm.plan import Plan, make_plan, write_back
from dfllm.prompt.template import Template
from dfllm.runtime.embedding import EmbedSpec
from dfllm.runtime.progress import RunStats

DEFAULT_BATCH_ROWS = 50_000


class LazyLLMAccessor(Verbs):
    """``lf.llm.predict(engine, model, template, target, **options)``: a LazyFrame with the answers.
    The verbs return LazyFrames too."""

    def __init__(self, lf: pl.LazyFrame) -> None:
        self._frame = lf

    def predict(self, engine: Any, model: str | None = None, template: str | Template | None = None,
                target: str | None = None, *, stats: RunStats | None = None,
                batch_rows: int = DEFAULT_BATCH_ROWS, **options: Unpack[PredictOptions]) -> pl.LazyFrame:
        """Like ``dfllm.predict``, lazily. ``stats`` receives the counters of every collect."""
        return predict_lazy(self._frame, engine, model, template, target, stats=stats, batch_rows=batch_rows,
                            **options)

    def embed(self, engine: Any, model: str | None = None, template: str | Template | None = None,
              target: str | None = None, *, stats: RunStats | None = None,
              batch_rows: int = DEFAULT_BATCH_ROWS, **options: Unpack[PredictOptions]) -> pl.LazyFrame:
        """Like ``dfllm.embed``, lazily (``dimensions=`` required: the schema is declared up front)."""
        return predict_lazy(self._frame, engine, model, template, target, stats=stats, batch_rows=batch_rows,
                            task=EmbedTask.kind, **options)


def predict_lazy(lf: pl.LazyFrame, engine: Any, model: str | None = None, template: str | Template | None = None,
                 target: str | None = None, *, stats: RunStats | None = None,
                 batch_rows: int = DEFAULT_BATCH_ROWS, task: str = ChatTask.kind,
                 **options: Unpack[PredictOptions]) -> pl.LazyFrame:
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows <= 0:
        raise ParameterError(f"batch_rows must be a positive number of rows, got {batch_rows!r}.")
    input_schema = lf.collect_schema()
    plan = make_plan(pl.DataFrame(schema=input_schema), engine, model, template, target, options, task=task)
    if isinstance(plan.spec, EmbedSpec) and plan.spec.dimensions is None:
        raise ParameterError("A LazyFrame declares its schema before anything is sent, so embed on it needs "
                             "dimensions= (the vectors' length, e.g. 1536 for text-embedding-3-small).")
    output_schema = write_back(plan, [], RunStats()).collect_schema()

    answers = frozenset(output_schema.names()) - frozenset(input_schema.names())

    def source(with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None,
               batch_size: int | None) -> Iterator[pl.DataFrame]:
        if not _answers_needed(answers, with_columns, predicate):
            return _inputs_only(lf, with_columns or [], predicate, n_rows, batch_rows)
        return _batches(lf, plan, stats, batch_rows, with_columns, predicate, n_rows)

    return register_io_source(source, schema=output_schema, validate_schema=True,
                              explain_name="dfllm.predict", explain_detail=f"target={plan.target!r}")


def _answers_needed(answers: frozenset[str], with_columns: list[str] | None, predicate: pl.Expr | None) -> bool:
    """Whether the query reads an answer column: a projection and filter on inputs alone need no request."""
    read = set(with_columns) if with_columns is not None else set(answers)
    if predicate is not None:
        read |= set(predicate.meta.root_names())
    return bool(read & answers)


def _inputs_only(lf: pl.LazyFrame, with_columns: list[str], predicate: pl.Expr | None, n_rows: int | None,
                 batch_rows: int) -> Iterator[pl.DataFrame]:
    if predicate is not None:
        lf = lf.filter(predicate)
    if n_rows is not None:
        lf = lf.head(n_rows)
    yield from lf.select(with_columns).collect_batches(chunk_size=batch_rows)


def _batches(lf: pl.LazyFrame, plan: Plan, stats: RunStats | None, batch_rows: int,
             with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None) -> Iterator[pl.DataFrame]:
    inputs = lf.collect_schema().names()
    assert plan.template is not None
    before, after = _split_on_inputs(predicate, set(inputs))
    if before is not None:
        lf = lf.filter(before)  # a row-wise prediction commutes with a filter on its inputs
    if n_rows is not None and after is None:
        lf = lf.head(n_rows)
    needed = set(with_columns or inputs) | set(plan.template.fields)
    if after is not None:
        needed |= set(after.meta.root_names())
    lf = lf.select([c for c in inputs if c in needed])
    runner = BackgroundRunner(plan, stats if stats is not None else RunStats())
    left = n_rows
    try:
        if plan.options.mode == "batch":  # jobs for every batch first; then each batch from the cache
            runner.submit_all(lambda: lf.collect_batches(chunk_size=batch_rows))
        for batch in lf.collect_batches(chunk_size=batch_rows):
            out = runner.predict(batch)
            if after is not None:
                out = out.filter(after)
            if with_columns is not None:
                out = out.select(with_columns)
            if left is not None:
                out, left = out.head(left), left - min(left, out.height)
            yield out
            if left == 0:
                return
    finally:
        runner.close()


def _split_on_inputs(predicate: pl.Expr | None, inputs: set[str]) -> tuple[pl.Expr | None, pl.Expr | None]:
    """``predicate`` as (the part on input columns alone, the rest): the terms of a conjunction that read
    only inputs filter rows before they are predicted, so ``(id < 3) & answer.is_not_null()`` asks 3 rows."""
    terms = _conjunction_terms(predicate) if predicate is not None else []
    on_inputs = [t for t in terms if set(t.meta.root_names()) <= inputs]
    rest = [t for t in terms if not set(t.meta.root_names()) <= inputs]
    return (pl.all_horizontal(on_inputs) if on_inputs else None), (pl.all_horizontal(rest) if rest else None)


def _conjunction_terms(predicate: pl.Expr) -> list[pl.Expr]:
    """The terms of ``a & b & ...`` (one term for any other expression)."""
    parts = predicate.meta.pop()
    if len(parts) == 2:
        right, left = parts
        if (left & right).meta.eq(predicate):
            return _conjunction_terms(left) + _conjunction_terms(right)
    return [predicate]


def _keep_yes(answered: pl.LazyFrame, target: str) -> pl.LazyFrame:
    added = [c for c in answered.collect_schema().names() if c == target or c.startswith(f"{target}_")]
    return answered.filter(pl.col(target) == "yes").drop(added)


register_lazy("polars-lazy", LazyKind(lambda df: isinstance(df, pl.LazyFrame), predict_lazy, _keep_yes))
if not taken_by_other(pl.LazyFrame):
    pl.api.register_lazyframe_namespace("llm")(LazyLLMAccessor)
