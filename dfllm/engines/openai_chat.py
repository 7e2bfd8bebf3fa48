"""OpenAI's chat dialect: how a ``ChatTask`` is said in a ``/chat/completions`` body.

What to ask (a schema enforced, JSON only, or free text) is decided above, by the output; how
OpenAI-compatible servers are told is here, with the HTTP engine:

- ``answer_format="json_schema"``: the strict ``response_format={"type": "json_schema", ...}``, the
  keywords strict mode refuses told in the description instead.
- ``answer_format="json_object"``: ``response_format={"type": "json_object", "schema": ...}`` (the
  form Anyscale and llama-cpp-python's server read; others ignore ``schema``).
"""

from __future__ import annotations

import json
import re
from typing import Any

from dfllm.engines.tasks import ChatTask

# Keywords OpenAI's strict mode refuses with a 400 ("Invalid schema"): they are kept in the
# description there, still enforced by dfllm's own validation (and sent whole to a local grammar).
_NOT_IN_STRICT_MODE = ("minLength", "maxLength", "uniqueItems")


def strict_mode_schema(node: Any) -> Any:
    """``node`` in the subset of JSON Schema OpenAI's strict mode takes: the keywords it refuses are
    told in the description instead."""
    if isinstance(node, list):
        return [strict_mode_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict_mode_schema(v) for k, v in node.items() if k not in ("properties", *_NOT_IN_STRICT_MODE)}
    if isinstance(node.get("properties"), dict):  # field names, not keywords: a field may be called minLength
        out["properties"] = {name: strict_mode_schema(v) for name, v in node["properties"].items()}
    told = [f"{k}: {json.dumps(node[k])}" for k in _NOT_IN_STRICT_MODE if k in node]
    if told:
        out["description"] = "; ".join([*([str(out["description"])] if "description" in out else []), *told])
    return out


def response_format(task: ChatTask) -> dict[str, Any] | None:
    """The ``response_format`` that asks for ``task``'s answer format, or None for free text."""
    if task.json_schema is None or task.answer_format == "text":
        return None
    if task.answer_format == "json_object":
        return {"type": "json_object", "schema": task.json_schema}
    name = re.sub(r"[^a-zA-Z0-9_-]", "_", task.schema_name)[:64] or "answer"
    return {"type": "json_schema",
            "json_schema": {"name": name, "schema": strict_mode_schema(task.json_schema), "strict": True}}


def body_params(task: ChatTask) -> dict[str, Any]:
    """The body's fields besides model and messages: the task's params, then its response_format."""
    wanted = response_format(task)
    return task.params if wanted is None else {**task.params, "response_format": wanted}
