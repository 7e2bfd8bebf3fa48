"""Request keys: the cache identity of one request, a hash of everything that decides its answer."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from typing import Any


class RequestKeys:
    """Cache keys for one call: a hash of everything that decides an answer, never the key.

    What all rows share (engine identity, model, system prompt, sampling parameters, output
    constraints such as choices or a schema) is hashed once; each row adds only its prompt. The
    shared part is JSON, which escapes NUL, so the NUL separator keeps the two parts unambiguous.
    ``default=repr`` keeps values JSON cannot encode distinct rather than failing.
    """

    def __init__(self, identity: str, model: str, system: str | None, params: Mapping[str, Any],
                 constraints: Mapping[str, Any] | None = None) -> None:
        shared = json.dumps([identity, model, system, dict(params), dict(constraints or {})], sort_keys=True,
                            ensure_ascii=False, separators=(",", ":"), default=repr)
        self._shared = hashlib.blake2b(shared.encode() + b"\x00", digest_size=16)

    def key(self, prompt: str) -> Key:
        digest = self._shared.copy()
        digest.update(prompt.encode("utf-8", "surrogatepass"))
        halves: Key = _HALVES.unpack(digest.digest())
        return halves


Key = tuple[int, int]  # (rowid, tail): the 128-bit digest as two signed 64-bit halves
_HALVES = struct.Struct(">qq")
