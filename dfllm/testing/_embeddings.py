"""The fake provider's ``/v1/embeddings``, in OpenAI's shape, with deterministic vectors.

A request ``{"model", "input": str | [str, ...], "dimensions"?, "encoding_format"?}`` gets
``{"object": "list", "data": [{"object": "embedding", "index": i, "embedding": [...]}], "model",
"usage": {"prompt_tokens", "total_tokens"}}``; with ``encoding_format="base64"`` each embedding is
the base64 of its little-endian float32 values, as OpenAI sends it. Every value is a float32
(``float`` answers too), so both encodings decode to the same numbers.

Vectors: ``fake_embedding(text, dim, similarity=...)`` is exactly what a request for ``dim``
dimensions answers (the server's ``EmbeddingOptions.dimension`` when the request names none). A
vector is unit length and a shortened one is the full one cut and normalised again, as
text-embedding-3's ``dimensions`` does. ``similarity`` says which texts are near:

- ``"none"``: each text its own random direction (seeded by its sha256); only equal texts are equal.
- ``"normalised"``: texts equal once case-folded with punctuation and whitespace removed
  (``normalise_text``: "Apple iPhone-13" and "apple iphone 13") get the same direction plus a
  small text-specific one: cosine about 0.99. Others are unrelated.
- ``"words"``: the sum of one direction per normalised word, plus the same small one: the cosine
  of two texts grows with the words they share ("red apple" and "apple, red" about 0.99, "red
  apple" and "green apple" about 0.5).

Unrelated texts are random directions, whose cosine spreads about 1/sqrt(dim): 0.35 at the
default 8 dimensions, 0.06 at 256. Tests of nearest neighbours want 64 dimensions or more.

Refused with a 400 as OpenAI does: token arrays (the fake takes text only), no inputs, more than
``max_inputs`` (2048), an empty string, an input over ``max_input_tokens`` (8192) or a request
over ``max_request_tokens`` (300,000) in the fake's tokens (4 characters each), ``dimensions``
outside 1..``dimension``, an unknown ``encoding_format``. A scripted poison: an input containing
``bad_input_marker`` ("\\u0000BAD") is refused naming its index, so a client's search for the
one bad row of a batch can be tested.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from dfllm.testing._prompt_cache import text_tokens

Similarity = Literal["none", "normalised", "words"]
SIMILARITIES: tuple[Similarity, ...] = ("none", "normalised", "words")
_NUDGE = 0.1  # the text-specific part of a near-duplicate's vector: cosine about 1 / (1 + 0.1**2)


@dataclass(frozen=True)
class EmbeddingOptions:
    """How the fake embeds, and OpenAI's limits on a request (its numbers by default)."""

    dimension: int = 8  # the model's full dimension: what a request without ``dimensions`` gets
    similarity: Similarity = "none"
    max_inputs: int = 2048
    max_input_tokens: int = 8192
    max_request_tokens: int = 300_000
    bad_input_marker: str = "\u0000BAD"

    def __post_init__(self) -> None:
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {self.similarity!r}")
        if self.dimension < 1:
            raise ValueError(f"dimension must be at least 1, got {self.dimension}")


@dataclass
class EmbeddingRecord:
    """One ``/v1/embeddings`` request as the server saw it, and the status it answered."""

    index: int  # the ``RecordedRequest``'s
    model: Any
    inputs: tuple[Any, ...]  # ``input`` as a tuple (a lone string is one input), as sent
    dimensions: Any  # as sent; None when absent
    encoding_format: Any
    status: int | None = None  # None until answered, and for a dropped connection


def normalise_text(text: str) -> str:
    """Case-folded, with everything but letters and digits removed: what ``"normalised"`` compares."""
    return "".join(ch for ch in text.casefold() if ch.isalnum())


def fake_embedding(text: str, dim: int = 8, *, similarity: Similarity = "none") -> list[float]:
    """The vector the fake provider answers for ``text`` at ``dim`` dimensions (unit length, float32)."""
    own = _direction(text, dim)
    if similarity == "none":
        return _float32(_unit(own))
    if similarity == "normalised":
        shared = _direction("normalised\x00" + normalise_text(text), dim)
    else:
        words = [normalise_text(word) for word in text.split()]
        directions = [_direction("word\x00" + word, dim) for word in words if word]
        # Summed and scaled back to one draw's spread, so the nudge weighs the same as for "normalised".
        shared = own
        if directions:
            shared = [sum(column) / math.sqrt(len(directions)) for column in zip(*directions, strict=True)]
    # No normalising before the sum: then a shortened vector is the full one cut and normalised again.
    vector = [s + _NUDGE * o for s, o in zip(shared, own, strict=True)]
    return _float32(_unit(vector))


def embed(body: Any, options: EmbeddingOptions) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of one embeddings request: the vectors, or OpenAI's 400."""
    if not isinstance(body, Mapping):
        return _refused("We could not parse the JSON body of your request.")
    inputs, problem = _inputs(body.get("input"), options)
    if problem is not None:
        return problem
    dim, encoding = body.get("dimensions"), body.get("encoding_format")
    if encoding not in (None, "float", "base64"):
        return _refused(f"Invalid value: '{encoding}'. Supported values are: 'float' and 'base64'.",
                        "encoding_format", "invalid_value")
    if dim is not None and (type(dim) is not int or not 1 <= dim <= options.dimension):
        return _refused(f"Invalid value for 'dimensions': {dim!r}. It must be an integer from 1 to "
                        f"{options.dimension} for this model.", "dimensions", "invalid_value")
    if not isinstance(body.get("model"), str) or not body["model"]:
        return _refused("You must provide a model parameter.", "model")
    tokens = [text_tokens(text) for text in inputs]
    problem = _limits(inputs, tokens, options)
    if problem is not None:
        return problem
    data = [{"object": "embedding", "index": i,
             "embedding": _encoded(fake_embedding(text, dim or options.dimension, similarity=options.similarity),
                                   encoding)} for i, text in enumerate(inputs)]
    usage = {"prompt_tokens": sum(tokens), "total_tokens": sum(tokens)}
    return 200, {"object": "list", "data": data, "model": body["model"], "usage": usage}


def embedding_record(index: int, body: Any) -> EmbeddingRecord:
    """What ``embedding_requests`` keeps of a request (its fields as sent, whatever their types)."""
    body = body if isinstance(body, Mapping) else {}
    given = body.get("input")
    inputs = tuple(given) if isinstance(given, list) else (given,) if given is not None else ()
    return EmbeddingRecord(index, body.get("model"), inputs, body.get("dimensions"), body.get("encoding_format"))


def _inputs(given: Any, options: EmbeddingOptions) -> tuple[list[str], tuple[int, dict[str, Any]] | None]:
    texts = [given] if isinstance(given, str) else given
    if isinstance(texts, list) and texts and all(isinstance(t, (int, list)) for t in texts):
        return [], _refused("This fake provider takes text inputs only: token arrays are not supported.", "input")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return [], _refused("'input' must be a string or an array of strings.", "input")
    if not texts:
        return [], _refused("'$.input' is invalid: it holds no inputs.", "input")
    if len(texts) > options.max_inputs:
        return [], _refused(f"Too many inputs: {len(texts)}. The maximum number of inputs is {options.max_inputs} "
                            "per request.", "input", "too_many_inputs")
    return texts, None


def _limits(inputs: list[str], tokens: list[int], options: EmbeddingOptions) -> tuple[int, dict[str, Any]] | None:
    for i, (text, count) in enumerate(zip(inputs, tokens, strict=True)):
        if not text:
            return _refused(f"'$.input' is invalid: input[{i}] is an empty string.", "input")
        if count > options.max_input_tokens:
            return _refused(f"This model's maximum context length is {options.max_input_tokens} tokens, however you "
                            f"requested {count} tokens in input[{i}]. Please reduce your input.", "input",
                            "context_length_exceeded")
        if options.bad_input_marker and options.bad_input_marker in text:
            return _refused(f"Invalid 'input[{i}]': this input could not be embedded.", "input", "invalid_input")
    if sum(tokens) > options.max_request_tokens:
        return _refused(f"Requested {sum(tokens)} tokens, max {options.max_request_tokens} tokens per request",
                        "input", "max_tokens_per_request")
    return None


def _refused(message: str, param: str | None = None, code: str | None = None) -> tuple[int, dict[str, Any]]:
    return 400, {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


def _direction(seed: str, dim: int) -> list[float]:
    """``dim`` normal draws seeded by ``seed``'s sha256: a longer vector starts with a shorter one."""
    draws = random.Random(hashlib.sha256(seed.encode("utf-8", "surrogatepass")).digest())
    return [draws.gauss(0.0, 1.0) for _ in range(dim)]


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector] if norm else vector


def _float32(vector: list[float]) -> list[float]:
    return list(struct.unpack(f"<{len(vector)}f", struct.pack(f"<{len(vector)}f", *vector)))


def _encoded(vector: list[float], encoding: Any) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector
