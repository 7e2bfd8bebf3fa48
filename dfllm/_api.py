"""``predict`` / ``apredict``: orchestration only (plan -> run -> write back).

Everything a caller can get wrong is found by ``plan`` before the first request and reported at
once. ``run_plan`` hands the unique prompts to the executor; ``write_back`` puts the answers
into a new frame of the caller's library.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from typing_extensions import Unpack

from dfllm import frames
from dfllm._exceptions import BatchError, ConfigurationError, DfllmError, ParameterError, TemplateError
from dfllm.config import models
from dfllm.config.engines import EngineConfig, resolve_engine
from dfllm.config.options import Options, PredictOptions, build_options, completion_budget
from dfllm.engines.base import Completion, Engine, EngineInfo
from dfllm.frames import Column, ColumnType
from dfllm.outputs.base import Output
from dfllm.outputs.kinds import TextOutput, output_for
from dfllm.prompt.keys import RequestKeys
from dfllm.prompt.template import Template, UnsendableRow, surrogate_problem
from dfllm.runtime.bulk import gc_paused
from dfllm.runtime.executor import Executor, Outcome, RequestSpec, Work
from dfllm.runtime.progress import RunStats
from dfllm.runtime.sync import run_sync

Frame = TypeVar("Frame")

_last_run: RunStats | None = None
_last_run_lock = threading.Lock()


def last_run() -> RunStats | None:
    """Counters of the latest finished ``predict`` in this process (a notebook convenience).

    Concurrent callers should pass ``stats=RunStats()`` to ``predict`` instead: that object
    receives the counters of that call alone.
    """
    return _last_run


@dataclass
class Plan:
    """A validated prediction: what to send, once per unique prompt, and where answers go."""

    df: Any
    adapter: frames.FrameAdapter
    target: str
    options: Options
    config: EngineConfig | None
    engine: Engine | None
    info: EngineInfo
    spec: RequestSpec
    work: list[Work] = field(default_factory=list)
    row_work: list[int] = field(default_factory=list)  # row -> index into work, -1: all-null row, -2: unsendable
    unsendable: dict[int, str] = field(default_factory=dict)  # row -> why its cells cannot be sent
    template: Template | None = None
    keys: RequestKeys | None = None
    output: Output = field(default_factory=TextOutput)  # the kind of answer: asked, keyed, checked, written


def predict(df: Frame, engine: Any, model: str | None = None, template: str | Template | None = None,
            target: str | None = None, *, stats: RunStats | None = None,
            **options: Unpack[PredictOptions]) -> Frame:
    """Add a column of LLM answers to a copy of ``df``, one request per unique rendered prompt.

    ``engine``: a name from ``create_engine``, a provider name (key from its environment
    variable), an engine object, or a model from ``create_model`` (then model, template and
    target come from it). ``template`` fills ``{{column}}`` placeholders from each row.
    ``stats``: a ``RunStats`` to receive this call's counters. Options: see ``PredictOptions``.
    A lazy frame (a Dask DataFrame, a Polars LazyFrame) gives back a lazy frame of its kind:
    nothing is sent until it is computed.
    """
    lazy = frames.lazy_predict_for(df)
    if lazy is not None:
        return cast(Frame, lazy(df, engine, model, template, target, stats=stats, **options))
    return run_sync(apredict(df, engine, model, template, target, stats=stats, **options))


async def apredict(df: Frame, engine: Any, model: str | None = None, template: str | Template | None = None,
                   target: str | None = None, *, stats: RunStats | None = None,
                   **options: Unpack[PredictOptions]) -> Frame:
    """The async form of ``predict``."""
    if frames.lazy_predict_for(df) is not None:
        raise ParameterError(
            f"apredict answers eager frames; a {type(df).__module__}.{type(df).__name__} is lazy: call "
            "dfllm.predict on it (it returns a lazy frame, answered when computed)."
        )
    if stats is not None and not isinstance(stats, RunStats):
        raise ParameterError(f"stats must be a dfllm.RunStats to receive the counters, got {stats!r}.")
    with gc_paused():
        plan = make_plan(df, engine, model, template, target, options)
    run_stats = stats if stats is not None else RunStats()
    outcomes = await run_plan(plan, run_stats)
    with gc_paused():
        result: Frame = write_back(plan, outcomes, run_stats)
    return result


models.use_drivers(predict, apredict)


async def run_plan(plan: Plan, stats: RunStats) -> list[Outcome]:
    """Send the plan's unique prompts through the executor; fills ``stats``."""
    global _last_run
    stats.rows = len(plan.row_work)
    stats.unique_prompts = len(plan.work)
    stats.skipped_null_rows = plan.row_work.count(-1)
    opened = plan.config.connect() if plan.config is not None else None
    runner = opened or plan.engine
    assert runner is not None
    started = time.perf_counter()
    try:
        return await make_executor(plan, runner, stats).run(plan.work)
    finally:
        stats.elapsed_s = time.perf_counter() - started
        with _last_run_lock:
            _last_run = stats
        if opened is not None:
            await opened.aclose()


def make_executor(plan: Plan, engine: Engine, stats: RunStats, *, options: Options | None = None,
                  gate: Any = None) -> Executor:
    """The executor for ``plan``'s calls: its options, cap, cacheability and output (the answers' check)."""
    options = options or plan.options
    return Executor(engine, options, stats, plan.spec, concurrency_cap=plan.info.max_concurrency,
                    cacheable=plan.info.identity is not None, output=plan.output, gate=gate)


def make_plan(df: Any, engine: Any, model: str | None, template: str | Template | None, target: str | None,
              call_options: Mapping[str, Any]) -> Plan:
    problems: list[ConfigurationError] = []
    engine, model, template, target, model_options = models.unpack(engine, model, template, target)
    layers: list[Mapping[str, Any]] = [model_options] if model_options is not None else []
    adapter = frames.adapter_for(df)
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
    elif (unsendable := surrogate_problem("model", model)) is not None:
        problems.append(ParameterError(unsendable))
    elif config is not None:
        problems += [ParameterError(p) for p in config.kind.model_problems(model)]
    columns = adapter.column_names(df)
    if not target or not isinstance(target, str):
        problems.append(ParameterError(
            f"target must be the name of the new answer column, e.g. 'sentiment', got {target!r}."))
    parsed: Template | None = None
    if template is None:
        problems.append(TemplateError(
            "template is required: a prompt with {{column}} placeholders, e.g. 'Summarise {{text}}'."))
    else:
        try:
            parsed = template if isinstance(template, Template) else Template(template)
            parsed.check_columns(columns)
        except ConfigurationError as exc:
            problems.append(exc)
    # A schema's columns are known only once it is valid; other clashes are reported with everything else.
    schema_unknown = bool(option_problems) and any(layer.get("schema") is not None for layer in layers)
    output = output_for(options)
    if isinstance(target, str) and target and not schema_unknown:
        problems += [ParameterError(p) for p in _column_problems(columns, _new_columns(target, options, output))]
    budget = completion_budget(options.params)
    if options.tpm is not None and budget is not None and budget > options.tpm:
        problems.append(ParameterError(
            f"A completion budget of {budget} tokens (max_tokens) can never fit under tpm={options.tpm:g}; "
            "raise tpm or lower max_tokens."
        ))
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise ConfigurationError([p for exc in problems for p in exc.problems])
    assert parsed is not None and model is not None and target is not None
    if config is not None:
        info = EngineInfo(config.identity + "|" + config.kind.model_identity(model),
                          config.capabilities, None)
    else:
        info = EngineInfo.of(engine_obj)
    asked = output.ask(info.capabilities, options.system, options.params)
    spec = RequestSpec(model, asked.params, asked.system, asked.choices, options.timeout_s, asked.json_schema,
                       asked.answer_format, asked.schema_name)
    keys = RequestKeys(info.identity or "", model, options.system, options.params, output.key_constraints())
    plan = Plan(df, adapter, target, options, config, engine_obj, info, spec, template=parsed, keys=keys,
                output=output)
    _render(plan, parsed, keys)
    return plan


def plan_batch(plan: Plan, df: Any) -> Plan:
    """The same validated call on ``df``, a further batch with the columns of ``plan``'s frame.

    Pipelines validate once (on the first batch, or an empty frame of the input's schema) and
    then render batch after batch with the engine, options and keys already resolved.
    """
    assert plan.template is not None and plan.keys is not None
    batch = dataclasses.replace(plan, df=df, adapter=frames.adapter_for(df), work=[], row_work=[], unsendable={})
    _render(batch, plan.template, plan.keys)
    return batch


def _new_columns(target: str, options: Options, output: Output) -> list[str]:
    names = output.columns(target)
    if options.usage_columns:
        names += [f"{target}_prompt_tokens", f"{target}_completion_tokens"]
    if options.errors == "null":
        names.append(f"{target}_error")
    return names


def _column_problems(existing: list[str], new: list[str]) -> list[str]:
    problems = []
    repeated = sorted({c for c in new if new.count(c) > 1})
    if repeated:
        problems.append(f"The result would name two columns {repeated}: rename the schema field that collides "
                        "with dfllm's own columns ({target}_error, {target}_prompt_tokens...).")
    duplicated = sorted({c for c in existing if existing.count(c) > 1})
    if duplicated:
        problems.append(f"The frame has duplicated column names {duplicated}; answers could not be placed "
                        "unambiguously. Rename the duplicates first.")
    clashes = [c for c in new if c in existing]
    if clashes:
        problems.append(
            f"The result would overwrite existing column(s) {clashes}. Choose another target, or drop or "
            "rename those columns first; dfllm never replaces a column of yours."
        )
    return problems


def _render(plan: Plan, template: Template, keys: RequestKeys) -> None:
    """Render every row once; identical prompts share one unit of work (sent once)."""
    df, adapter = plan.df, plan.adapter
    columns = {f: adapter.column_values(df, f) for f in template.fields}
    seen: dict[str, int] = {}
    row_work, work = plan.row_work, plan.work
    for prompt in template.render_columns(columns, adapter.n_rows(df)):
        if prompt is None:
            row_work.append(-1)
            continue
        if isinstance(prompt, UnsendableRow):
            plan.unsendable[len(row_work)] = prompt.problem
            row_work.append(-2)
            continue
        index = seen.get(prompt)
        if index is None:
            index = seen[prompt] = len(work)
            work.append(Work(keys.key(prompt), prompt))
        row_work.append(index)


def write_back(plan: Plan, outcomes: list[Outcome], stats: RunStats) -> Any:
    """The result frame; raises ``BatchError`` (holding it) when rows failed and errors='raise'."""
    options, target, output = plan.options, plan.target, plan.output
    answers_by_work: list[Any] = []
    errors_by_work: list[DfllmError | None] = []
    for outcome in outcomes:
        answer, error = output.value(outcome) if isinstance(outcome, Completion) else (None, outcome)
        answers_by_work.append(answer)
        errors_by_work.append(error)
    answers: list[Any] = []
    row_errors: dict[int, BaseException] = {}
    for row, index in enumerate(plan.row_work):
        if index < 0:
            answers.append(None)
            if index == -2:
                row_errors[row] = TemplateError(plan.unsendable[row])
            continue
        answers.append(answers_by_work[index])
        failure = errors_by_work[index]
        if failure is not None:
            row_errors[row] = failure
    stats.failed_rows = len(row_errors)
    for exc in row_errors.values():
        stats.errors[type(exc).__name__] = stats.errors.get(type(exc).__name__, 0) + 1
    columns = output.write(target, answers)
    if options.usage_columns:
        for name in ("prompt_tokens", "completion_tokens"):
            columns[f"{target}_{name}"] = Column([
                getattr(outcomes[i], name) if i >= 0 and isinstance(outcomes[i], Completion) else None
                for i in plan.row_work
            ], ColumnType("int"))
    if options.errors == "null":
        columns[f"{target}_error"] = Column([
            f"{type(row_errors[r]).__name__}: {row_errors[r]}" if r in row_errors else None
            for r in range(len(plan.row_work))
        ])
    frame = plan.adapter.with_columns(plan.df, columns)
    if row_errors and options.errors == "raise":
        raise BatchError(frame, row_errors, len(plan.row_work), stats=stats)
    return frame

