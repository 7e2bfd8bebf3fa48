"""Protocol-neutral tasks: what an engine is asked to do, not how a wire says it.

The plan and the executor build tasks; each engine maps a task to its own wire (the HTTP engine to
OpenAI's ``/chat/completions`` body, the local engine to llama.cpp). A task kind is named by its
``kind``; an engine declares the kinds it takes (``Engine.task_kinds``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

AnswerFormat = Literal["text", "json_schema", "json_object"]


@dataclass(frozen=True, slots=True)
class TextPart:
    """A piece of a message's content that is text (room for image parts beside it)."""

    text: str


@dataclass(frozen=True, slots=True)
class Message:
    """One turn of a chat: its role (``system``, ``user``, ``assistant``) and its content parts."""

    role: str
    parts: tuple[TextPart, ...]

    @classmethod
    def of_text(cls, role: str, text: str) -> Message:
        return cls(role, (TextPart(text),))

    def text(self) -> str:
        """The message's text parts, joined."""
        parts = self.parts
        return parts[0].text if len(parts) == 1 else "".join(p.text for p in parts)

    def __getitem__(self, key: str) -> str:
        # The dict form messages had before tasks (``message["content"]``): custom engines written
        # against it keep working.
        if key == "role":
            return self.role
        if key == "content":
            return self.text()
        raise KeyError(key)


@dataclass(frozen=True, slots=True)
class ChatTask:
    """One chat completion to perform.

    ``params`` are the sampling parameters and extra body fields (``max_tokens``, ``temperature``,
    ``seed``...). ``choices``, when given, lets an engine that can constrain decoding do so.
    ``json_schema`` is the JSON Schema the answer must match and ``answer_format`` how the engine is
    asked to hold to it: ``"json_schema"`` (enforce it), ``"json_object"`` (only guarantee JSON;
    the schema is a hint) or ``"text"`` (nothing asked of the engine; ``json_schema`` is then None).
    ``schema_name`` names the schema for wires that want a name.
    """

    kind: ClassVar[str] = "chat"

    model: str
    messages: tuple[Message, ...]
    params: dict[str, Any] = field(default_factory=dict)
    choices: tuple[str, ...] = ()
    timeout_s: float = 60.0
    json_schema: dict[str, Any] | None = None
    answer_format: AnswerFormat = "text"
    schema_name: str = "answer"

    def openai_messages(self) -> list[dict[str, str]]:
        """The messages as OpenAI's text-only ``[{"role", "content"}]``."""
        return [{"role": m.role, "content": m.text()} for m in self.messages]


# The name engines have taken their argument by since before tasks (the README's custom engines).
Request = ChatTask
