"""Protocol-neutral tasks: what an engine is asked to do, not how a wire says it.

The plan and the executor build tasks; each engine maps a task to its own wire (the HTTP engine to
OpenAI's ``/chat/completions`` body, the local engine to llama.cpp). A task kind is named by its
``kind``; an engine declares the kinds it takes (``Engine.task_kinds``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

from dfllm._exceptions import ParameterError
from dfllm.prompt.images import ImageRef, load

AnswerFormat = Literal["text", "json_schema", "json_object"]


@dataclass(frozen=True, slots=True)
class TextPart:
    """A piece of a message's content that is text."""

    text: str

    def wire(self) -> dict[str, Any]:
        return {"type": "text", "text": self.text}


@dataclass(frozen=True, slots=True)
class ImagePart:
    """A piece of a message's content that is an image: the cell's image as planned (``image``),
    read and encoded only when the task is sent (``loaded``), at ``detail`` (``"low"``,
    ``"high"`` or ``"auto"``), downscaled to ``max_side`` pixels when given."""

    image: ImageRef
    detail: str = "auto"
    max_side: int | None = None
    url: str | None = None  # the data: (or http) URL, once loaded

    def loaded(self) -> ImagePart:
        return self if self.url is not None else replace(self, url=load(self.image, max_side=self.max_side))

    def wire(self) -> dict[str, Any]:
        """OpenAI's image content part (the image read now if it was not loaded before)."""
        return {"type": "image_url", "image_url": {"url": self.loaded().url, "detail": self.detail}}


Part = TextPart | ImagePart


class Message(dict[str, Any]):
    """One turn of a chat: ``{"role": ..., "content": ...}``, a dict as messages were before tasks.

    Custom engines written against the dict form (``json.dumps(request.messages)``,
    ``m.get("content")``, ``dict(m)``, ``m == {"role": "user", "content": "hi"}``) keep working;
    ``role``, ``parts`` and ``text()`` read it as parts. A text-only message's content is a string.
    """

    __slots__ = ()

    def __init__(self, role: str, parts: Iterable[Part]) -> None:
        parts = tuple(parts)
        if all(isinstance(part, TextPart) for part in parts):
            super().__init__(role=role, content="".join(part.text for part in parts))  # type: ignore[union-attr]
        else:  # a message with images keeps its parts; the wire form is made when it is sent
            super().__init__(role=role, content=list(parts))

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
    def parts(self) -> tuple[Part, ...]:
        content = self["content"]
        return tuple(content) if isinstance(content, list) else (TextPart(str(content)),)

    @property
    def has_images(self) -> bool:
        return isinstance(self["content"], list)

    def text(self) -> str:
        """The message's text (its text parts, joined)."""
        content = self["content"]
        if isinstance(content, list):
            return "".join(part.text for part in content if isinstance(part, TextPart))
        return str(content)

    def wire(self) -> dict[str, Any]:
        """OpenAI's form: text content as a string, content with images as a list of parts."""
        content = self["content"]
        return {"role": self.role, "content": [part.wire() for part in content] if isinstance(content, list)
                else content}

    def loaded(self) -> Message:
        """The message with its images read and encoded (what a worker thread does before sending)."""
        return Message(self.role, (p.loaded() if isinstance(p, ImagePart) else p for p in self.parts)) \
            if self.has_images else self


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

    def openai_messages(self) -> list[dict[str, Any]]:
        """The messages as OpenAI's ``[{"role", "content"}]``: content text, or a list of parts with images."""
        return [m.wire() for m in self.messages]

    @property
    def has_images(self) -> bool:
        return any(m.has_images for m in self.messages)

    def loaded(self) -> ChatTask:
        """The task with every image read and encoded: done off the event loop before sending."""
        if not self.has_images:
            return self
        task = copy.copy(self)
        object.__setattr__(task, "messages", Messages(m.loaded() for m in self.messages))
        return task


# The name engines have taken their argument by since before tasks (the README's custom engines).
Request = ChatTask


@dataclass(frozen=True, slots=True)
class EmbedTask:
    """Vectors for several texts at once (``/embeddings`` takes a list): one task, many rows.
    ``dimensions``: OpenAI's shortened embeddings (None: the model's own size)."""

    kind: ClassVar[str] = "embedding"

    model: str
    inputs: tuple[str, ...]
    dimensions: int | None = None
    timeout_s: float = 60.0
