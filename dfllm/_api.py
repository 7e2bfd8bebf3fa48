"""``predict`` / ``apredict``: validate -> render -> execute -> write back.

Everything a caller can get wrong is found before the first request and reported at once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dfllm import _frames
from dfllm._bulk import gc_paused
from dfllm._cache import RequestKeys
from dfllm._exceptions import (
    BatchError,
    ConfigurationError,
    DfllmError,
    LabelError,
    ParameterError,
    TemplateError,
)
from dfllm._executor import Executor, Outcome, RequestSpec, Work
from dfllm._labels import normalise_label
from dfllm._options import Options, build_options
from dfllm._progress import RunStats
from dfllm._registry import EngineConfig, resolve_engine
from dfllm._sync import run_sync
from dfllm._template import Template
from dfllm.engines._base import Completion, Engine

_last_run: RunStats | None = None


def last_run() -> RunStats | None:
    """Counters of the latest finished ``predict`` in this process: requests, cache hits, tokens..."""
    return _last_run


@dataclass
class _Plan:
    """A validated prediction: what to send, once per unique prompt, and where answers go."""

    df: Any
    target: str
    options: Options
    config: EngineConfig | None
    engine: Engine | None
    spec: RequestSpec
    work: list[Work] = field(default_factory=list)
    row_work: list[int] = field(default_factory=list)  # row -> index into work, -1: all-null row


def predict(df: Any, engine: Any, model: str | None = None, template: str | None = None,
            target: str | None = None, **options: Any) -> Any:
    """Add a column of LLM answers to a copy of ``df``, one request per unique rendered prompt.

    ``engine``: a name from ``create_engine``, a provider name (key from its environment
    variable), an engine object, or a model from ``create_model`` (then model, template and
    target come from it). ``template`` fills ``{{column}}`` placeholders from each row.
    Options: ``system``, ``max_tokens``, ``temperature`` and other sampling parameters,
    ``choices``, ``concurrency``, ``rpm``, ``tpm``, ``timeout_s``, ``max_retries``,
    ``max_retry_time_s``, ``errors`` ('raise' or 'null'), ``cache``, ``progress``, ``usage_columns``.
    """
    return run_sync(apredict(df, engine, model, template, target, **options))


async def apredict(df: Any, engine: Any, model: str | None = None, template: str | None = None,
                   target: str | None = None, **options: Any) -> Any:
    """The async form of ``predict``."""
    global _last_run
    with gc_paused():
        plan = _plan(df, engine, model, template, target, options)
    stats = RunStats(rows=len(plan.row_work), unique_prompts=len(plan.work),
                     skipped_null_rows=plan.row_work.count(-1))
    opened = plan.config.connect() if plan.config is not None else None
    runner = opened or plan.engine
    assert runner is not None
    started = time.perf_counter()
    try:
        cap = getattr(runner, "max_concurrency", None)
        executor = Executor(runner, plan.options, stats, plan.spec, concurrency_cap=cap)
        outcomes = await executor.run(plan.work)
    finally:
        stats.elapsed_s = time.perf_counter() - started
        _last_run = stats
        if opened is not None:
            await opened.aclose()
    with gc_paused():
        return _write_back(plan, outcomes, stats)


def _plan(df: Any, engine: Any, model: str | None, template: str | None, target: str | None,
          call_options: Mapping[str, Any]) -> _Plan:
    from dfllm._models import Model

    problems: list[ConfigurationError] = []
    layers: list[Mapping[str, Any]] = []
    if isinstance(engine, Model):
        model = model or engine.model_name
        template = template or engine.prompt_template
        target = target or engine.target
        layers.append(engine.options)
        engine = engine.engine

    _frames.frame_kind(df)
    config: EngineConfig | None = None
    engine_obj: Engine | None = None
    try:
        resolved = resolve_engine(engine)
        if isinstance(resolved, EngineConfig):
            config = resolved
            layers.insert(0, config.options)
        else:
            engine_obj = resolved
    except ConfigurationError as exc:
        problems.append(exc)
    layers.append(call_options)
    options, option_problems = build_options(layers)
    problems += [ParameterError(p) for p in option_problems]

    if model is None and config is not None:
        model = config.model_path or config.provider.default_model
    if not model or not isinstance(model, str):
        problems.append(ParameterError(
            f"model must be the provider's model id as a string, e.g. 'gpt-4o-mini', got {model!r}."))
    if config is not None and config.provider.local and isinstance(model, str):
        from dfllm.engines._local import model_problems

        problems += [ParameterError(p) for p in model_problems(model)]
    if not target or not isinstance(target, str):
        problems.append(ParameterError(
            f"target must be the name of the new answer column, e.g. 'sentiment', got {target!r}."))
    parsed: Template | None = None
    if template is None:
        problems.append(TemplateError(
            "template is required: a prompt with {{column}} placeholders, e.g. 'Summarise {{text}}'."))
    else:
        try:
            parsed = Template(template)
            parsed.check_columns(_frames.column_names(df))
        except ConfigurationError as exc:
            problems.append(exc)
    if options.tpm is not None and parsed is not None:
        budget = options.params.get("max_tokens") or 0
        if budget > options.tpm:
            problems.append(ParameterError(
                f"max_tokens={budget} can never fit under tpm={options.tpm:g}; raise tpm or lower max_tokens."
            ))
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise ConfigurationError([p for exc in problems for p in exc.problems])
    assert parsed is not None and model is not None and target is not None
    if config is not None:
        identity, constrains = config.identity, config.provider.local
    else:
        identity = getattr(engine_obj, "identity", type(engine_obj).__qualname__)
        constrains = bool(getattr(engine_obj, "supports_choices", False))
    # Only an engine that constrains decoding sends choices; others normalise answers after.
    choices = options.choices if (options.choices and constrains) else ()
    spec = RequestSpec(model, options.params, options.system, choices, options.timeout_s)
    plan = _Plan(df, target, options, config, engine_obj, spec)
    _render(plan, parsed, RequestKeys(identity, model, options.system, options.params, choices))
    return plan


def _render(plan: _Plan, template: Template, keys: RequestKeys) -> None:
    """Render every row once; identical prompts share one unit of work (sent once)."""
    columns = {f: _frames.column_values(plan.df, f) for f in template.fields}
    seen: dict[str, int] = {}
    row_work, work = plan.row_work, plan.work
    for prompt in template.render_columns(columns, _frames.n_rows(plan.df)):
        if prompt is None:
            row_work.append(-1)
            continue
        index = seen.get(prompt)
        if index is None:
            index = seen[prompt] = len(work)
            work.append(Work(keys.key(prompt), prompt))
        row_work.append(index)


def _write_back(plan: _Plan, outcomes: list[Outcome], stats: RunStats) -> Any:
    options, target = plan.options, plan.target
    answers_by_work: list[str | None] = []
    errors_by_work: list[DfllmError | None] = []
    for outcome in outcomes:
        answer, error = _answer(outcome, options)
        answers_by_work.append(answer)
        errors_by_work.append(error)
    answers: list[str | None] = []
    row_errors: dict[int, BaseException] = {}
    for row, index in enumerate(plan.row_work):
        if index < 0:
            answers.append(None)
            continue
        answers.append(answers_by_work[index])
        failure = errors_by_work[index]
        if failure is not None:
            row_errors[row] = failure
    stats.failed_rows = len(row_errors)
    for exc in row_errors.values():
        stats.errors[type(exc).__name__] = stats.errors.get(type(exc).__name__, 0) + 1
    columns: dict[str, list[Any]] = {target: answers}
    integer_columns: list[str] = []
    if options.usage_columns:
        for name in ("prompt_tokens", "completion_tokens"):
            column = f"{target}_{name}"
            integer_columns.append(column)
            columns[column] = [
                getattr(outcomes[i], name) if i >= 0 and isinstance(outcomes[i], Completion) else None
                for i in plan.row_work
            ]
    if options.errors == "null":
        columns[f"{target}_error"] = [
            f"{type(row_errors[r]).__name__}: {row_errors[r]}" if r in row_errors else None
            for r in range(len(plan.row_work))
        ]
    frame = _frames.with_columns(plan.df, columns, integer_columns)
    if row_errors and options.errors == "raise":
        raise BatchError(frame, row_errors, len(plan.row_work))
    return frame


def _answer(outcome: Outcome, options: Options) -> tuple[str | None, DfllmError | None]:
    if not isinstance(outcome, Completion):
        return None, outcome
    if not options.choices:
        return outcome.text, None
    try:
        return normalise_label(outcome.text, options.choices), None
    except LabelError as exc:
        return None, exc
