"""``Plan``: a validated call, its unique work and the row -> work map."""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Any

from dfllm import frames
from dfllm.config.engines import EngineConfig
from dfllm.config.options import Options
from dfllm.engines.base import Engine, EngineInfo
from dfllm.outputs.base import Output
from dfllm.outputs.kinds import TextOutput
from dfllm.prompt.keys import RequestKeys
from dfllm.prompt.template import Template
from dfllm.runtime.dispatch import WorkList
from dfllm.runtime.embedding import EmbedSpec
from dfllm.runtime.executor import RequestSpec

ALL_NULL = -1  # row_work marker: every field of the row is null, so no request
UNSENDABLE = -2  # row_work marker: the row's cells cannot be sent (see Plan.unsendable)


@dataclass
class Plan:
    """A validated prediction: what to send, once per unique prompt, and where answers go."""

    df: Any
    adapter: frames.FrameAdapter
    target: str
    options: Options
    config: EngineConfig | None
    engine: Engine | None
    info: EngineInfo
    spec: RequestSpec | EmbedSpec  # the task kind: a chat per row, or many rows' texts a request
    work: WorkList = field(default_factory=WorkList)  # unique prompts and their keys, packed
    # row -> index into work, or ALL_NULL / UNSENDABLE; 8 bytes a row, where a list of ints holds an object each
    row_work: array[int] = field(default_factory=lambda: array("q"))
    unsendable: dict[int, str] = field(default_factory=dict)  # row -> why its cells cannot be sent
    template: Template | None = None
    keys: RequestKeys | None = None
    output: Output = field(default_factory=TextOutput)  # the kind of answer: asked, keyed, checked, written
