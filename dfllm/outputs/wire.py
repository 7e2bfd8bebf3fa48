"""How a schema is asked for on the wire, by what the engine can enforce.

- ``json_schema`` engines (OpenAI, vLLM, the local engine): OpenAI's strict
  ``response_format={"type": "json_schema", ...}``, and ``Request.json_schema`` for engines that
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


def request_parts(schema: OutputSchema, capabilities: Capabilities, system: str | None,
                  params: dict[str, Any]) -> tuple[str | None, dict[str, Any], dict[str, Any] | None]:
    """The system prompt, body params and ``Request.json_schema`` that ask ``capabilities`` for ``schema``."""
    if capabilities.json_schema:
        name = re.sub(r"[^a-zA-Z0-9_-]", "_", schema.name)[:64] or "answer"
        response_format = {"type": "json_schema",
                           "json_schema": {"name": name, "schema": schema.wire, "strict": True}}
        return system, {**params, "response_format": response_format}, schema.wire
    described = f"{system}\n\n{instruction(schema)}" if system else instruction(schema)
    if capabilities.json_mode:
        return described, {**params, "response_format": {"type": "json_object", "schema": schema.wire}}, None
    return described, params, None
