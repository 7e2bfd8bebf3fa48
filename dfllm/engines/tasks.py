"""Protocol-neutral tasks: what an engine is asked to do, not how a wire says it.

The plan and the executor build tasks; each engine maps a task to its own wire (the HTTP engine to
OpenAI's ``/chat/completions`` body, the local engine to llama.cpp). A task kind is named by its
``kind``; an engine declares the kinds it takes (``Engine.task_kinds``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from dfllm._exceptions import ParameterError

AnswerFormat = Literal["text", "json_schema", "json_object"]


@dataclass(frozen=True, slots=True)
class TextPart:
    """A piece of a message's content that is text (room for image parts beside it)."""

    text: str


class Message(dict[str, Any]):
    """One turn of a chat: ``{"role": ..., "content": ...}``, a dict as messages were before tasks.

    Custom engines written against the dict form (``json.dumps(request.messages)``,
    ``m.get("content")``, ``dict(m)``, ``m == {"role": "user", "content": "hi"}``) keep working;
    ``role``, ``parts`` and ``text()`` read it as parts. A text-only message's content is a string.
    """

    __slots__ = ()

    def __init__(self, role: str, parts: Iterable[TextPart]) -> None:
        super().__init__(role=role, content="".join(part.text for part in parts))

    @classmethod
    def of_text(cls, role: str, text: str) -> Message:
        message = dict.__new__(cls)
        dict.__init__(message, role=role, content=text)
        return message

    @classmethod
    def of(cls, message: Mapping[str, Any]) -> Message:
        """A message from its dict form; content a string or OpenAI's text parts."""
        if isinstance(message, Message):
            return message
        role, content = (message.get("role"), message.get("content")) if isinstance(message, Mapping) else (None, None)
        if isinstance(content, list) and all(
                isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            content = "".join(p["text"] for p in content)
        if not isinstance(role, str) or not isinstance(content, str):
            raise ParameterError(
                f"a message must be {{'role': str, 'content': str}}, got {message!r:.200}; "
                "give each message a role and text content")
        return cls.of_text(role, content)

    @property
    def role(self) -> str:
        return str(self["role"])

    @property
    def parts(self) -> tuple[TextPart, ...]:
        return (TextPart(self.text()),)

    def text(self) -> str:
        """The message's text."""
        return str(self["content"])


class Messages(list[Message]):
    """A task's messages: a list, and ``+`` takes any iterable of messages or their dict forms."""

    __slots__ = ()

    def __add__(self, other: Iterable[Message | Mapping[str, Any]]) -> Messages:  # type: ignore[override]
        return Messages([*self, *map(Message.of, other)])


def _messages(messages: Iterable[Message | Mapping[str, Any]]) -> Messages:
    if type(messages) is Messages:
        return messages
    return Messages(map(Message.of, messages))


@dataclass(frozen=True, slots=True, init=False)
class ChatTask:
    """One chat completion to perform.

    ``messages`` is a list of ``Message`` (dicts ``{"role", "content"}``); plain dicts given to the
    constructor become ``Message``. ``params`` are the sampling parameters and extra body fields
    (``max_tokens``, ``temperature``, ``seed``...), nothing else. ``choices``, when given, lets an
    engine that can constrain decoding do so.
    ``json_schema`` is the JSON Schema the answer must match. The effective ``answer_format`` says
    how the engine is asked to hold to it: ``"json_schema"`` (enforce it: a strict response_format,
    a grammar), ``"json_object"`` (JSON mode: only JSON is guaranteed, the schema is a hint) or
    ``"text"`` (nothing asked of the engine: the schema is described in the prompt). Left None, it
    is ``"json_schema"`` when a schema is given and ``"text"`` otherwise (as before answer formats),
    and the attribute holds the effective format.
    ``schema_name`` names the schema for wires that want a name.
    """

    kind: ClassVar[str] = "chat"

    model: str
    messages: Messages
    params: dict[str, Any] = field(default_factory=dict)
    choices: tuple[str, ...] = ()
    timeout_s: float = 60.0
    json_schema: dict[str, Any] | None = None
    answer_format: AnswerFormat = "text"
    schema_name: str = "answer"

    def __init__(self, model: str, messages: Iterable[Message | Mapping[str, Any]],
                 params: dict[str, Any] | None = None, choices: tuple[str, ...] = (), timeout_s: float = 60.0,
                 json_schema: dict[str, Any] | None = None, answer_format: AnswerFormat | None = None,
                 schema_name: str = "answer") -> None:
        setattr_ = object.__setattr__
        setattr_(self, "model", model)
        setattr_(self, "messages", _messages(messages))
        setattr_(self, "params", {} if params is None else params)
        setattr_(self, "choices", choices)
        setattr_(self, "timeout_s", timeout_s)
        setattr_(self, "json_schema", json_schema)
        if answer_format is None:  # the effective format: what a schema alone asked for before formats
            answer_format = "text" if json_schema is None else "json_schema"
        setattr_(self, "answer_format", answer_format)
        setattr_(self, "schema_name", schema_name)

    def openai_messages(self) -> list[dict[str, str]]:
        """The messages as OpenAI's text-only ``[{"role", "content"}]``."""
        return [{"role": m.role, "content": m.text()} for m in self.messages]


# The name engines have taken their argument by since before tasks (the README's custom engines).
Request = ChatTask
