"""How a schema is asked for, by what the engine can enforce.

- ``json_schema`` engines (OpenAI, vLLM, the local engine): asked to enforce the schema
  (``ChatTask.answer_format="json_schema"``); the HTTP engine says it as OpenAI's strict
  ``response_format``, the local engine as a llama.cpp grammar.
- ``json_mode`` engines: asked for JSON only (``"json_object"``, the schema as a hint), with the
  schema also described in the system prompt.
- Other engines: the schema described in the system prompt.

Every answer is validated the same way afterwards (``dfllm.outputs.parse``), whatever was asked.
"""

from __future__ import annotations

import json
from typing import Any

from dfllm.engines.base import Capabilities
from dfllm.outputs.base import Asked
from dfllm.outputs.schema import OutputSchema


def instruction(schema: OutputSchema) -> str:
    """The schema, described for a model that is not constrained to it."""
    return ("Answer with only a JSON object, no other text, that matches this JSON Schema: "
            + json.dumps(schema.wire, separators=(",", ":")))


def ask_for_schema(schema: OutputSchema, capabilities: Capabilities, system: str | None,
                   params: dict[str, Any]) -> Asked:
    """What to ask ``capabilities`` for, so that answers fit ``schema``."""
    if capabilities.json_schema:
        return Asked(system, params, schema.wire, "json_schema", schema_name=schema.name)
    described = f"{system}\n\n{instruction(schema)}" if system else instruction(schema)
    if capabilities.json_mode:
        return Asked(described, params, schema.wire, "json_object", schema_name=schema.name)
    return Asked(described, params)
