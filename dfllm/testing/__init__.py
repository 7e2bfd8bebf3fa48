"""Test helpers: the fake OpenAI-compatible provider, in-thread or as its own process.

```python
from dfllm.testing import FakeProvider, status, sequence
with FakeProvider(script=sequence([status(429, retry_after=0.05)])) as fake:
    dfllm.create_engine("t", "openai", api_key="x", base_url=fake.base_url)
    ...
    assert len(fake.chat_requests) == 3
```

Images: ``FakeProvider(responder="image")`` answers ``"4x3 red"`` per image of a request and
records each as an ``ImagePart`` (``fake.chat_requests[0].images``); ``images=False`` is a text-only
model. Embeddings: ``/v1/embeddings`` answers ``fake_embedding(text, dim)``, with
``EmbeddingOptions`` (dimension, which texts are near, OpenAI's limits, a poisoned input), and
records ``fake.embedding_requests``.
"""

from dfllm.testing._batches import (
    BatchCreateRecord,
    BatchFate,
    BatchOptions,
    PollRecord,
    cancel_job,
    expire_job,
    fail_job,
    fail_lines,
    on_route,
)
from dfllm.testing._behaviour import (
    Behaviour,
    RecordedRequest,
    always,
    answer,
    drop,
    echo_headers,
    every,
    malformed,
    ok,
    per_prompt,
    redirect,
    respond,
    sequence,
    status,
)
from dfllm.testing._embeddings import EmbeddingOptions, EmbeddingRecord, fake_embedding, normalise_text
from dfllm.testing._files import DownloadRecord, UploadRecord
from dfllm.testing._images import ImagePart, image_tokens
from dfllm.testing._inthread import FakeProvider
from dfllm.testing._limits import HEADER_STYLES, SHAPES, answer_headers, make_cap, refusal_headers
from dfllm.testing._mock import FakeClock, MockEngine
from dfllm.testing._process import FakeProviderProcess
from dfllm.testing._server import DEFAULT_MODELS, FakeProviderApp

__all__ = [
    "DEFAULT_MODELS",
    "HEADER_STYLES",
    "SHAPES",
    "BatchCreateRecord",
    "BatchFate",
    "BatchOptions",
    "Behaviour",
    "DownloadRecord",
    "EmbeddingOptions",
    "EmbeddingRecord",
    "FakeClock",
    "FakeProvider",
    "FakeProviderApp",
    "FakeProviderProcess",
    "ImagePart",
    "MockEngine",
    "PollRecord",
    "RecordedRequest",
    "UploadRecord",
    "always",
    "answer",
    "answer_headers",
    "cancel_job",
    "drop",
    "echo_headers",
    "every",
    "expire_job",
    "fail_job",
    "fail_lines",
    "fake_embedding",
    "image_tokens",
    "make_cap",
    "malformed",
    "normalise_text",
    "ok",
    "on_route",
    "per_prompt",
    "redirect",
    "refusal_headers",
    "respond",
    "sequence",
    "status",
]
