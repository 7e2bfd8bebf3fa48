"""Deterministic answers for the fake provider, chosen by name so a separate process can use them."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from dfllm.testing._images import describe_images

Responder = Callable[[str, str], str]  # (model, prompt) -> answer

_POSITIVE = {"love", "great", "good", "excellent", "amazing", "happy", "wonderful", "best", "like"}
_NEGATIVE = {"awful", "hate", "terrible", "bad", "worst", "horrible", "sad", "broken", "poor"}


def echo(model: str, prompt: str) -> str:
    return prompt


def sentiment(model: str, prompt: str) -> str:
    """A lexicon classifier, so sentiment examples give the answers a person expects."""
    words = set(re.findall(r"[a-z]+", prompt.lower().split(":")[-1]))
    score = len(words & _POSITIVE) - len(words & _NEGATIVE)
    return "positive" if score > 0 else "negative" if score < 0 else "neutral"


def geography(model: str, prompt: str) -> str:
    if "stockholm" in prompt.lower():
        return (
            "Stockholm is the capital and largest city of Sweden. It is located on Sweden's "
            "south-central east coast, where Lake Mälaren meets the Baltic Sea."
        )
    return f"I do not know about: {prompt}"


def smart(model: str, prompt: str) -> str:
    """Sentiment for sentiment prompts, geography for Stockholm, otherwise an echo."""
    if "sentiment" in prompt.lower():
        return sentiment(model, prompt)
    if "stockholm" in prompt.lower():
        return geography(model, prompt)
    return f"{model} says: {prompt}"


RESPONDERS: dict[str, Responder] = {"echo": echo, "sentiment": sentiment, "smart": smart}

BodyResponder = Callable[[Mapping[str, Any]], str]  # (the request's JSON body) -> answer
# Responders that read more than the prompt's text: "image" describes each image of the last user
# message ("4x3 red; url https://..."), so a test sees which picture reached which request.
BODY_RESPONDERS: dict[str, BodyResponder] = {"image": describe_images}


def requested_schema(body: Any) -> Mapping[str, Any] | None:
    """The JSON Schema a chat request asks its answer to match (OpenAI's or the json_object form)."""
    response_format = body.get("response_format") if isinstance(body, Mapping) else None
    if not isinstance(response_format, Mapping):
        return None
    schema = response_format.get("schema")
    if response_format.get("type") == "json_schema" and isinstance(response_format.get("json_schema"), Mapping):
        schema = response_format["json_schema"].get("schema")
    return schema if isinstance(schema, Mapping) else None


def conforming(schema: Mapping[str, Any], prompt: str) -> str:
    """A JSON object that matches ``schema``, varying with the prompt (what a schema-enforcing API sends)."""
    return json.dumps(_value(schema, prompt), separators=(",", ":"))


def _value(schema: Any, prompt: str) -> Any:
    if not isinstance(schema, Mapping):
        return None
    if schema.get("enum"):
        return schema["enum"][len(prompt) % len(schema["enum"])]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [s for s in schema[key] if isinstance(s, Mapping) and s.get("type") != "null"]
            return _value(options[0], prompt) if options else None
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        return {k: _value(v, prompt) for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [_value(schema.get("items", {"type": "string"}), prompt)]
    if kind == "string":
        return {"date": "2024-01-31", "date-time": "2024-01-31T12:00:00Z"}.get(schema.get("format", ""), prompt[-40:])
    if kind == "integer":
        return len(prompt)
    if kind == "number":
        return len(prompt) / 4
    if kind == "boolean":
        return len(prompt) % 2 == 0
    return None
