"""The built-in output kinds: free text, one of ``choices``, the fields of a ``schema``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from dfllm._exceptions import DfllmError, LabelError, SchemaError
from dfllm.engines.base import Capabilities, Completion
from dfllm.engines.tasks import Message
from dfllm.frames import Column, ColumnType
from dfllm.outputs.base import Asked, Output
from dfllm.outputs.choices import normalise_label
from dfllm.outputs.columns import schema_column_names, schema_columns
from dfllm.outputs.parse import parse_answer, validator
from dfllm.outputs.schema import OutputSchema
from dfllm.outputs.wire import ask_for_schema


class TextOutput:
    """The answer's text, as it came, in one string column named ``target``."""

    checked = False

    def columns(self, target: str) -> list[str]:
        return [target]

    def ask(self, capabilities: Capabilities, system: str | None, params: dict[str, Any]) -> Asked:
        return Asked(system, params)

    def key_constraints(self) -> dict[str, Any]:
        return {"choices": []}  # the keys plain-text calls have always had

    def check(self, completion: Completion) -> Completion | SchemaError:
        return completion

    def repair(self, completion: Completion, problem: SchemaError) -> tuple[Message, ...] | None:
        return None

    def value(self, completion: Completion) -> tuple[Any, DfllmError | None]:
        return completion.text, None

    def write(self, target: str, values: Sequence[Any]) -> dict[str, Column]:
        return {target: Column(list(values), ColumnType("string"))}

    def completion_estimate(self, count_tokens: Callable[[str], int]) -> tuple[int, str] | None:
        return None


@dataclass(frozen=True)
class ChoicesOutput(TextOutput):
    """One of ``labels``, in a category column. Engines that constrain decoding are sent the
    labels; other answers are normalised onto them at write-back, from the cached raw answer, so a
    label error is computed afresh rather than cached."""

    labels: tuple[str, ...]

    def ask(self, capabilities: Capabilities, system: str | None, params: dict[str, Any]) -> Asked:
        return Asked(system, params, choices=self.labels if capabilities.choices else ())

    def key_constraints(self) -> dict[str, Any]:
        return {"choices": list(self.labels)}

    def value(self, completion: Completion) -> tuple[Any, DfllmError | None]:
        try:
            return normalise_label(completion.text, self.labels), None
        except LabelError as exc:
            return None, exc

    def write(self, target: str, values: Sequence[Any]) -> dict[str, Column]:
        return {target: Column(list(values), ColumnType("category", categories=self.labels))}

    def completion_estimate(self, count_tokens: Callable[[str], int]) -> tuple[int, str] | None:
        return max(count_tokens(label) for label in self.labels) + 1, "the longest choice"


class SchemaOutput:
    """The fields of ``schema``: one typed column per field (``layout="fields"``) or one struct
    column (``"struct"``). Only answers that fit are accepted; one that does not is re-asked with
    the problem in the conversation."""

    checked = True

    def __init__(self, schema: OutputSchema, layout: Literal["fields", "struct"] = "fields") -> None:
        self.schema = schema
        self.layout = layout
        self._check = validator(schema)  # built once: it holds the schema's parser

    def columns(self, target: str) -> list[str]:
        return schema_column_names(target, self.schema, self.layout)

    def ask(self, capabilities: Capabilities, system: str | None, params: dict[str, Any]) -> Asked:
        return ask_for_schema(self.schema, capabilities, system, params)

    def key_constraints(self) -> dict[str, Any]:
        return {"choices": [], "schema": self.schema.wire}

    def check(self, completion: Completion) -> Completion | SchemaError:
        return self._check(completion)

    def repair(self, completion: Completion, problem: SchemaError) -> tuple[Message, ...] | None:
        return (Message.of_text("assistant", completion.text), Message.of_text(
            "user", f"That answer does not fit the required JSON schema: {problem.problem}. "
                    "Reply with only the corrected JSON object."))

    def value(self, completion: Completion) -> tuple[Any, DfllmError | None]:
        if completion.values is not None:  # parsed by the executor's check
            return completion.values, None
        try:  # an answer from an executor run without the check
            return parse_answer(completion.text, self.schema), None
        except SchemaError as exc:
            return None, exc

    def write(self, target: str, values: Sequence[Any]) -> dict[str, Column]:
        return schema_columns(target, self.schema, values, self.layout)

    def completion_estimate(self, count_tokens: Callable[[str], int]) -> tuple[int, str] | None:
        return None


class OutputOptions(Protocol):
    """The options that choose a call's output (``config.options.Options`` has them)."""

    @property
    def schema(self) -> OutputSchema | None: ...

    @property
    def choices(self) -> Sequence[str] | None: ...

    @property
    def schema_columns(self) -> Literal["fields", "struct"]: ...


def output_for(options: OutputOptions) -> Output:
    """The output kind of a call with ``options``."""
    if options.schema is not None:
        return SchemaOutput(options.schema, options.schema_columns)
    if options.choices:
        return ChoicesOutput(tuple(options.choices))
    return TextOutput()
