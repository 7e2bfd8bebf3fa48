"""What ``make_plan`` checks before any request; each function returns its problems, to be raised together."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dfllm._exceptions import ConfigurationError, ParameterError, TemplateError
from dfllm.config.engines import EngineConfig
from dfllm.config.options import Options, completion_budget
from dfllm.engines.base import USAGE_FIELDS
from dfllm.outputs.base import Output
from dfllm.prompt.template import Template, lone_surrogate, surrogate_problem


def model_problems(model: Any, config: EngineConfig | None) -> list[ConfigurationError]:
    if not model or not isinstance(model, str):
        return [ParameterError(
            f"model must be the provider's model id as a string, e.g. 'gpt-4o-mini', got {model!r}.")]
    if (unsendable := surrogate_problem("model", model)) is not None:
        return [ParameterError(unsendable)]
    if config is not None:
        return [ParameterError(p) for p in config.kind.model_problems(model)]
    return []


def target_problems(target: Any) -> list[ConfigurationError]:
    if not target or not isinstance(target, str):
        return [ParameterError(
            f"target must be the name of the new answer column, e.g. 'sentiment', got {target!r}.")]
    # No frame library can write a column name UTF-8 cannot carry: refuse it before anything is paid for.
    if (where := lone_surrogate(target)) is not None:
        return [ParameterError(
            f"target holds a lone surrogate {where}, which is not valid Unicode and cannot name a column "
            "(a command-line argument that is not UTF-8 reads this way). Give the column name as UTF-8 text.")]
    return []


def parse_template(template: str | Template | None, columns: list[str]) -> tuple[Template | None,
                                                                                  list[ConfigurationError]]:
    """The parsed template, checked against the frame's columns, or its problem."""
    if template is None:
        return None, [TemplateError(
            "template is required: a prompt with {{column}} placeholders, e.g. 'Summarise {{text}}'.")]
    try:
        parsed = template if isinstance(template, Template) else Template(template)
        parsed.check_columns(columns)
    except ConfigurationError as exc:
        return None, [exc]
    return parsed, []


def new_column_problems(target: Any, columns: list[str], options: Options, output: Output,
                        schema_unknown: bool) -> list[ConfigurationError]:
    """Clashes of the answer columns with each other and with the frame's."""
    # A schema's columns are known only once it is valid; other clashes are reported with everything else.
    if not isinstance(target, str) or not target or schema_unknown:
        return []
    return [ParameterError(p) for p in _column_problems(columns, new_columns(target, options, output))]


def budget_problems(options: Options) -> list[ConfigurationError]:
    budget = completion_budget(options.params)
    if options.tpm is not None and budget is not None and budget > options.tpm:
        return [ParameterError(
            f"A completion budget of {budget} tokens (max_tokens) can never fit under tpm={options.tpm:g}; "
            "raise tpm or lower max_tokens."
        )]
    return []


def schema_unknown(option_problems: list[str], layers: list[Mapping[str, Any]]) -> bool:
    """Whether a schema was given but could not be read (so its columns are unknown)."""
    return bool(option_problems) and any(layer.get("schema") is not None for layer in layers)


def raise_all(problems: list[ConfigurationError]) -> None:
    """Raise every problem at once: the one error itself, or a ``ConfigurationError`` listing them all."""
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise ConfigurationError([p for exc in problems for p in exc.problems])


def new_columns(target: str, options: Options, output: Output) -> list[str]:
    names = output.columns(target)
    if options.usage_columns:
        names += [f"{target}_{name}" for name in USAGE_FIELDS]
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
