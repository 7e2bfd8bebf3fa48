"""How a schema is asked for on the wire, by what the engine can enforce.

- ``json_schema`` engines (OpenAI, vLLM, the local engine): OpenAI's strict
  ``response_format={"type": "json_schema", ...}`` (the keywords strict mode refuses told in the
  description), and ``Request.json_schema`` for engines that
  enforce it themselves (the local engine turns it into a llama.cpp grammar).
- ``json_mode`` engines: ``response_format={"type": "json_object", "schema": ...}`` (the
  form Anyscale and llama-cpp-python's server read; others ignore ``schema``), with the schema
  also described in the system prompt.
- Other engines: the schema described in the system prompt.

Every answer is validated the same way afterwards (``dfllm.outputs.parse``), whatever was sent.
"""

from __future__ import annotations

import json
import re
from typing import Any

from dfllm.engines.base import Capabilities
from dfllm.outputs.schema import OutputSchema


def instruction(schema: OutputSchema) -> str:
    """The schema, described for a model that is not constrained to it."""
    return ("Answer with only a JSON object, no other text, that matches this JSON Schema: "
            + json.dumps(schema.wire, separators=(",", ":")))


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


def request_parts(schema: OutputSchema, capabilities: Capabilities, system: str | None,
                  params: dict[str, Any]) -> tuple[str | None, dict[str, Any], dict[str, Any] | None]:
    """The system prompt, body params and ``Request.json_schema`` that ask ``capabilities`` for ``schema``."""
    if capabilities.json_schema:
        name = re.sub(r"[^a-zA-Z0-9_-]", "_", schema.name)[:64] or "answer"
        response_format = {"type": "json_schema",
                           "json_schema": {"name": name, "schema": strict_mode_schema(schema.wire), "strict": True}}
        return system, {**params, "response_format": response_format}, schema.wire
    described = f"{system}\n\n{instruction(schema)}" if system else instruction(schema)
    if capabilities.json_mode:
        return described, {**params, "response_format": {"type": "json_object", "schema": schema.wire}}, None
    return described, params, None
