"""``make_plan``: a call checked before any request (every problem at once), then its rows rendered."""

from __future__ import annotations

import dataclasses
from array import array
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dfllm import frames
from dfllm._exceptions import ConfigurationError, ParameterError
from dfllm.config import models
from dfllm.config.engines import EngineConfig, resolve_engine
from dfllm.config.options import Options, build_options
from dfllm.engines.base import Capabilities, Engine, EngineInfo
from dfllm.engines.tasks import ChatTask, EmbedTask
from dfllm.outputs.base import Output
from dfllm.outputs.kinds import output_for
from dfllm.outputs.vectors import VectorOutput
from dfllm.plan.base import Plan
from dfllm.plan.checks import (
    budget_problems,
    model_problems,
    new_column_problems,
    parse_template,
    raise_all,
    schema_unknown,
    target_problems,
)
from dfllm.plan.render import render_rows
from dfllm.prompt.images import ImageTable
from dfllm.prompt.keys import RequestKeys
from dfllm.prompt.template import Template
from dfllm.runtime.dispatch import WorkList
from dfllm.runtime.embedding import EmbedSpec
from dfllm.runtime.executor import RequestSpec


@dataclasses.dataclass
class _Resolved:
    """The engine argument resolved, and the option layers it brings (engine, model, call)."""

    config: EngineConfig | None
    engine: Engine | None
    layers: list[Mapping[str, Any]]


def make_plan(df: Any, engine: Any, model: str | None, template: str | Template | None, target: str | None,
              call_options: Mapping[str, Any], *, local_images: bool = True, task: str = ChatTask.kind) -> Plan:
    """The validated plan of a call on ``df``; a ``ConfigurationError`` lists every problem, before any request.

    ``task``: ``"chat"`` (an answer per row) or ``"embedding"`` (a vector per row; ``template`` may
    be a bare column name).

    ``local_images=False``: image cells that are local paths are refused unless the ``image_root``
    option names their folder (the command reads files only under ``--image-root``).
    """
    problems: list[ConfigurationError] = []
    engine, model, template, target, model_options = models.unpack(engine, model, template, target)
    adapter = frames.adapter_for(df)
    resolved = _resolve(engine, model_options, call_options, problems)
    options, option_problems = build_options(resolved.layers)
    problems += [ParameterError(p) for p in option_problems]
    if model is None and resolved.config is not None:
        model = resolved.config.model_path or resolved.config.provider.default_model
    problems += model_problems(model, resolved.config)
    columns = adapter.column_names(df)
    if task == EmbedTask.kind and isinstance(template, str) and template in columns:
        template = "{{" + template + "}}"  # a bare column name: its text, as it is
    problems += target_problems(target)
    parsed, template_problems = parse_template(template, columns)
    problems += template_problems
    output: Output = VectorOutput(options.dimensions) if task == EmbedTask.kind else output_for(options)
    problems += _embed_problems(options, parsed, task)
    problems += new_column_problems(target, columns, options, output,
                                    schema_unknown(option_problems, resolved.layers))
    problems += budget_problems(options)
    problems += _mode_problems(options, resolved)
    problems += _image_problems(parsed, resolved)
    raise_all(problems)
    assert parsed is not None and model is not None and target is not None
    plan = _plan(df, adapter, target, model, parsed, options, resolved, output, local_images)
    if task == EmbedTask.kind:
        plan.spec = EmbedSpec(model, options.dimensions, options.timeout_s, options.embed_batch_size)
        plan.keys = RequestKeys(plan.info.identity or "", model, None, {}, output.key_constraints())
    assert plan.keys is not None
    render_rows(plan, parsed, plan.keys)
    return plan


def plan_batch(plan: Plan, df: Any) -> Plan:
    """The same validated call on ``df``, a further batch with the columns of ``plan``'s frame.

    Pipelines validate once (on the first batch, or an empty frame of the input's schema) and
    then render batch after batch with the engine, options and keys already resolved.
    """
    assert plan.template is not None and plan.keys is not None
    batch = dataclasses.replace(plan, df=df, adapter=frames.adapter_for(df), work=WorkList(), row_work=array("q"),
                                unsendable={})
    render_rows(batch, plan.template, plan.keys)
    return batch


def _resolve(engine: Any, model_options: Mapping[str, Any] | None, call_options: Mapping[str, Any],
             problems: list[ConfigurationError]) -> _Resolved:
    """A created engine's config (its options the lowest layer) or an engine object; its problem if neither."""
    resolved = _Resolved(None, None, [model_options] if model_options is not None else [])
    try:
        found = resolve_engine(engine)
        if isinstance(found, EngineConfig):
            resolved.config = found
            resolved.layers.insert(0, found.options)
        else:
            resolved.engine = found
    except ConfigurationError as exc:
        problems.append(exc)
    resolved.layers.append(call_options)
    return resolved


def _embed_problems(options: Options, template: Template | None, task: str) -> list[ConfigurationError]:
    """What an embedding call cannot take: what shapes an answer (system, choices, a schema), images, batch jobs."""
    if task != EmbedTask.kind:
        return []
    given = [name for name in ("system", "choices", "schema") if getattr(options, name) is not None]
    problems: list[ConfigurationError] = [ParameterError(
        f"embed makes vectors, not answers: {', '.join(given)} do(es) not apply. Drop them, or use predict.")] \
        if given else []
    if options.mode == "batch":
        problems.append(ParameterError("embed does not run as a batch job yet: drop mode='batch'."))
    if template is not None and template.image_fields:
        problems.append(ParameterError("embed takes text only: the template has image placeholders."))
    return problems


def _capabilities(resolved: _Resolved) -> tuple[Capabilities, str]:
    """What the call's engine declares it can do, and how a message names it."""
    config = resolved.config
    if config is not None:
        return config.capabilities, f"engine {config.name!r} (provider {config.provider.name!r})"
    if resolved.engine is None:
        return Capabilities(), "engine"
    return EngineInfo.of(resolved.engine).capabilities, f"engine object {type(resolved.engine).__name__}"


def _image_problems(template: Template | None, resolved: _Resolved) -> list[ConfigurationError]:
    """Image placeholders need an engine that declares it takes images."""
    if template is None or not template.image_fields or (resolved.config is None and resolved.engine is None):
        return []
    capabilities, named = _capabilities(resolved)
    if capabilities.images:
        return []
    shown = ", ".join("{{image:" + f + "}}" for f in template.image_fields)
    return [ParameterError(
        f"The template puts images ({shown}), and the {named} takes none (the bundled local model reads "
        "text only). Use an engine whose model reads images, e.g. provider 'openai' with gpt-4o-mini, or "
        "an OpenAI-compatible server running a vision model.")]


def _mode_problems(options: Options, resolved: _Resolved) -> list[ConfigurationError]:
    """mode='batch' needs an engine that declares the Batch API, and a SQLite cache to keep its jobs in."""
    if options.mode != "batch":
        return []
    problems: list[ConfigurationError] = []
    capabilities, named = _capabilities(resolved)
    if not capabilities.batch_jobs:
        problems.append(ParameterError(
            f"mode='batch' needs a provider with OpenAI's Batch API, and the {named} has none. Use "
            "mode='online', or an engine of provider 'openai' or 'openai_compatible' (a server with /v1/batches)."))
    if options.cache_path() is None:
        problems.append(ParameterError(
            f"mode='batch' keeps its jobs in the SQLite cache, so that a re-run collects them instead of paying "
            f"again; cache={options.cache!r} has none. Give cache=True (the default) or a file path."))
    return problems


def _plan(df: Any, adapter: frames.FrameAdapter, target: str, model: str, template: Template, options: Options,
          resolved: _Resolved, output: Output, local_images: bool = True) -> Plan:
    """The plan, no rows rendered yet: the engine's identity, what to ask it for, and the cache keys."""
    config = resolved.config
    if config is not None:
        info = EngineInfo(config.identity + "|" + config.kind.model_identity(model), config.capabilities, None)
    else:
        info = EngineInfo.of(resolved.engine)
    asked = output.ask(info.capabilities, options.system, options.params)
    images, constraints = None, output.key_constraints()
    if template.image_fields:  # what is sent of each image decides its answer too
        root = Path(options.image_root).expanduser() if options.image_root is not None else None
        images = ImageTable(root=root, paths=local_images)
        constraints = {**constraints, "image_detail": options.image_detail, "max_image_side": options.max_image_side}
    spec = RequestSpec(model, asked.params, asked.system, asked.choices, options.timeout_s, asked.json_schema,
                       asked.answer_format, asked.schema_name, images, options.image_detail, options.max_image_side)
    keys = RequestKeys(info.identity or "", model, options.system, options.params, constraints)
    return Plan(df, adapter, target, options, config, resolved.engine, info, spec, template=template, keys=keys,
                output=output)
