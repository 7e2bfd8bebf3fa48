"""The vector output: one embedding per row, written as one contiguous float32 column.

Each answer is a vector of float32 bytes (the engine's ``values``), cached as base64 text; it is
checked on arrival and on every cache read (the dimension is the same for every row, every
number finite) and written as Arrow's ``fixed_size_list<float32>[dim]``: pandas gets it as an
``ArrowDtype`` column, Polars as ``Array(Float32, dim)``, files as the Arrow type itself. A
million vectors are one buffer, not a million Python objects.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dfllm._exceptions import DfllmError, SchemaError
from dfllm.engines.base import Capabilities, Completion
from dfllm.engines.tasks import Message
from dfllm.frames import Column, ColumnType
from dfllm.outputs.base import Asked


@dataclass
class VectorOutput:
    """Vectors of ``dimensions`` numbers (None: whatever the model gives, the same for every row)."""

    dimensions: int | None = None
    checked = True
    _seen: int | None = field(default=None, init=False, repr=False)  # the dimension the first vector had

    def columns(self, target: str) -> list[str]:
        return [target]

    def ask(self, capabilities: Capabilities, system: str | None, params: dict[str, Any]) -> Asked:
        return Asked(None, {})

    def key_constraints(self) -> dict[str, Any]:
        return {"task": "embedding", "dimensions": self.dimensions}

    def check(self, completion: Completion) -> Completion | SchemaError:
        # A fresh answer carries its vector's bytes (the text is their base64): decoded again, they
        # cost a third of this check; a cached answer has only the text.
        given = completion.values[0] if completion.values and len(completion.values) == 1 else None
        if isinstance(given, bytes):
            vector = given
        else:
            try:
                vector = base64.b64decode(completion.text, validate=True)
            except (binascii.Error, ValueError):
                return _problem("is not a stored vector", completion)
        size = len(vector) // 4
        wanted = self.dimensions or self._seen
        if not vector or len(vector) % 4 or (wanted is not None and size != wanted):
            return _problem(f"has {size} numbers where {wanted} were expected", completion)
        import numpy as np

        if not np.isfinite(np.frombuffer(vector, dtype="<f4")).all():
            return _problem("holds a NaN or an infinity", completion)
        self._seen = size
        return completion if vector is given else completion._replace(values=(vector,))

    def repair(self, completion: Completion, problem: SchemaError) -> tuple[Message, ...] | None:
        return None

    def value(self, completion: Completion) -> tuple[Any, DfllmError | None]:
        values = completion.values
        return (values[0] if values else base64.b64decode(completion.text)), None

    def write(self, target: str, values: Sequence[Any]) -> dict[str, Column]:
        return {target: Column(vectors_array(values, self.dimensions or self._seen), ColumnType("vector"))}

    def completion_estimate(self, count_tokens: Callable[[str], int]) -> tuple[int, str] | None:
        return 0, "embeddings produce no text"


def stored(vector: bytes) -> str:
    """A vector as the cache keeps it: its float32 bytes in base64."""
    return base64.b64encode(vector).decode("ascii")


def vectors_array(values: Sequence[bytes | None], dimensions: int | None) -> Any:
    """One ``fixed_size_list<float32>[dim]`` Arrow array for the rows' vectors, null where a row has none."""
    import numpy as np
    import pyarrow as pa

    dim = dimensions or next((len(v) // 4 for v in values if v is not None), 1)
    zeros = bytes(4 * dim)
    flat = np.frombuffer(b"".join(zeros if v is None else v for v in values), dtype="<f4")
    mask = pa.array([v is None for v in values], pa.bool_())
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim, mask=mask)


def _problem(what: str, completion: Completion) -> SchemaError:
    return SchemaError(f"The embedding {what}.", raw=completion.text[:80], problem=what, repairable=False)
