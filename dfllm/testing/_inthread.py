"""The fake provider on a background thread's event loop, for tests in the same process."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web

from dfllm.testing._behaviour import RecordedRequest
from dfllm.testing._embeddings import EmbeddingRecord
from dfllm.testing._server import FakeProviderApp


class FakeProvider:
    """Runs the fake provider in a background thread: ``with FakeProvider() as fake: fake.base_url``.

    Keyword arguments go to ``FakeProviderApp``. Records are on ``.app`` and mirrored here.
    """

    def __init__(self, **options: Any) -> None:
        self.app = FakeProviderApp(**options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="dfllm-fake-provider", daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.app.requests

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return self.app.chat_requests

    @property
    def embedding_requests(self) -> list[EmbeddingRecord]:
        return self.app.embedding_requests

    @property
    def peak_in_flight(self) -> int:
        return self.app.peak_in_flight

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the server's loop (to change its state safely mid-test)."""
        return self._loop.call_soon_threadsafe(fn)

    def __enter__(self) -> FakeProvider:
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> int:
        self._runner = web.AppRunner(self.app.build(), access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        return int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
