"""The output seam: one object per kind of answer (text, choices, schema; room for vectors, scores).

An output names its columns, says what to ask an engine for given what the engine can do, says
what enters the cache key, checks each answer (the executor's verdict, and the re-ask when it
does not fit) and turns the answers into typed columns. Nothing else in the package asks which
kind of answer a call wants.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

from dfllm._exceptions import DfllmError, SchemaError
from dfllm.engines.base import Capabilities, Completion
from dfllm.engines.tasks import AnswerFormat, Message
from dfllm.frames import Column


class Asked(NamedTuple):
    """What every task of a call asks an engine for (``ChatTask``'s fields of the same names)."""

    system: str | None
    params: dict[str, Any]
    json_schema: dict[str, Any] | None = None
    answer_format: AnswerFormat = "text"
    choices: tuple[str, ...] = ()
    schema_name: str = "answer"


class Output(Protocol):
    """One kind of answer. ``checked``: whether ``check`` can refuse an answer (the executor skips
    checking, and its thread hop for long answers, for kinds that take every answer as it is)."""

    checked: bool

    def columns(self, target: str) -> list[str]:
        """The answer columns it adds (dfllm's usage and error columns come on top)."""
        ...

    def ask(self, capabilities: Capabilities, system: str | None, params: dict[str, Any]) -> Asked:
        """What to ask an engine with ``capabilities`` for, given the call's system prompt and params."""
        ...

    def key_constraints(self) -> dict[str, Any]:
        """What of this output enters every cache key (besides engine, model, system and params)."""
        ...

    def check(self, completion: Completion) -> Completion | SchemaError:
        """The answer (possibly with its typed ``values``) if it fits, else why not."""
        ...

    def repair(self, completion: Completion, problem: SchemaError) -> tuple[Message, ...] | None:
        """The turns that ask again after ``completion`` did not fit, or None: not repairable."""
        ...

    def value(self, completion: Completion) -> tuple[Any, DfllmError | None]:
        """A row's value at write-back, or the error that makes it a failed row."""
        ...

    def write(self, target: str, values: Sequence[Any]) -> dict[str, Column]:
        """Its typed columns, from one value per row (None for a row without an answer)."""
        ...

    def completion_estimate(self, count_tokens: Callable[[str], int]) -> tuple[int, str] | None:
        """Tokens an answer takes, and why, where this kind bounds it (``estimate`` uses it);
        None where only the call's params (``max_tokens``) or an assumption can say."""
        ...
