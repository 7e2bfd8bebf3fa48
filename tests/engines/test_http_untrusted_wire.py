"""A red-team pass over the HTTP boundary: servers on 127.0.0.1 that send what no provider
should (endless or oversized bodies, gzip bombs, trickling bodies, odd status lines, the key
echoed in encoded forms, broken Unicode). Each test asserts the run ends within its budget,
keeps the other rows' answers, names the bad row's cause, keeps no wrong answer, and shows
the key nowhere: not in a message, the result, the log, or the cache file."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dfllm
from dfllm.engines.tasks import Message
from dfllm.testing import Behaviour, FakeProvider, answer, per_prompt, redirect, respond
from tests.conftest import KEY

DF = pd.DataFrame({"text": ["one", "two"]})
MiB = 1024 * 1024


class Connection:
    """One client connection of ``RawServer``: counts what the handler sends."""

    def __init__(self, writer: asyncio.StreamWriter, stopped: asyncio.Event) -> None:
        self._writer = writer
        self._stopped = stopped
        self.sent = 0

    async def send(self, data: bytes) -> None:
        self._writer.write(data)
        self.sent += len(data)
        await self._writer.drain()

    async def stall(self) -> None:
        """Keep the connection open, sending nothing, until the server stops."""
        await self._stopped.wait()

    async def trickle(self, every_s: float) -> None:
        """One byte every ``every_s`` seconds until the server stops (a slow-loris body)."""
        while not self._stopped.is_set():
            await self.send(b" ")
            await asyncio.sleep(every_s)

    def close(self) -> None:
        self._writer.close()


Handler = Callable[[Connection], Awaitable[None]]


class RawServer:
    """A TCP server on 127.0.0.1 that writes raw HTTP bytes, for what aiohttp's server will not
    send (status lines of 101 or 999, HTTP/1.0 bodies read to close, endless streams).

    Row "two"'s request goes to ``bad``; every other request gets a normal completion. ``sent``
    records how many bytes each bad answer wrote before the client hung up or the test ended.
    """

    def __init__(self, bad: Handler) -> None:
        self._bad = bad
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent: list[int] = []
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        connection = Connection(writer, self._stopped)
        try:
            while not writer.is_closing():
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                               if line.startswith(b"content-length:")), 0)
                body = await reader.readexactly(length)
                if b"two" in body:
                    self.sent.append(0)
                    try:
                        await self._bad(connection)
                    finally:
                        self.sent[-1] = connection.sent
                    break
                await connection.send(_ok_response(b"fine"))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client hung up
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _start(self) -> None:
        self._stopped = asyncio.Event()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        self._stopped.set()
        self._server.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        await self._server.wait_closed()

    def __enter__(self) -> RawServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def _completion(text: str) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": text},
                                    "finish_reason": "stop"}]}).encode()


def _ok_response(text: bytes) -> bytes:
    body = _completion(text.decode())
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def _predict_raw(server: RawServer, **options: Any) -> tuple[pd.DataFrame, float]:
    dfllm.create_engine("t", "openai", api_key=KEY, base_url=server.base_url)
    started = time.monotonic()
    frame = DF.llm.predict("t", "m", "Say: {{text}}", "y", progress=False, errors="null", **options)
    return frame, time.monotonic() - started


# -- 1. bodies that never end or never fit --------------------------------------------------------

# Each server sends far more than any completion (but a bounded amount, so a client without a
# cap fills its memory only so far), then holds the connection open: only a cap on the body
# read ends the row before timeout_s.
SENT = 48 * MiB


async def _declared_huge(conn: Connection) -> None:
    await conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (200 * MiB))
    for _ in range(SENT // MiB):
        await conn.send(b" " * MiB)
    await conn.stall()


async def _chunked_stream(conn: Connection) -> None:
    await conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(SENT // MiB):
        await conn.send(b"%x\r\n%s\r\n" % (MiB, b" " * MiB))
    await conn.stall()


async def _read_to_close(conn: Connection) -> None:
    await conn.send(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n")
    for _ in range(SENT // MiB):
        await conn.send(b" " * MiB)
    await conn.stall()


async def _gzip_bomb(conn: Connection) -> None:
    bomb = gzip.compress(b" " * SENT)  # about 50 KB on the wire
    await conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(bomb), bomb))
    await conn.stall()


async def _gzip_bomb_declared(conn: Connection) -> None:
    # A Content-Length well under the cap, for a body that grows past it once decompressed: a
    # declared length is read whole in one call only when nothing decompresses it.
    bomb = gzip.compress(b" " * SENT)
    await conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(bomb), bomb))
    await conn.stall()


@pytest.mark.parametrize("bad", [_declared_huge, _chunked_stream, _read_to_close, _gzip_bomb, _gzip_bomb_declared],
                         ids=["content-length-200MB", "chunked-stream", "http1.0-read-to-close", "gzip-bomb",
                              "gzip-bomb-with-content-length"])
def test_a_body_too_large_for_an_answer_is_cut_at_the_cap_without_waiting_for_timeout(bad: Handler) -> None:
    with RawServer(bad) as server:
        result, took = _predict_raw(server, timeout_s=30, max_retries=2)
    assert result["y"][0] == "fine" and pd.isna(result["y"][1])
    message = result["y_error"][1]
    assert message.startswith("ResponseFormatError: ") and "MiB" in message
    assert took < 25  # ended by the cap, not by timeout_s (generous: a loaded 2-core machine)
    assert len(server.sent) == 1  # not retried: the same answer would come again
    assert server.sent[0] < SENT  # the client hung up before the server had sent it all


def test_a_body_that_trickles_forever_is_ended_by_timeout_s() -> None:
    async def trickle(conn: Connection) -> None:
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
        await conn.trickle(0.05)

    with RawServer(trickle) as server:
        result, took = _predict_raw(server, timeout_s=1, max_retries=0)
    assert result["y"][0] == "fine"
    assert result["y_error"][1].startswith("TransportError: ") and "timeout_s=1" in result["y_error"][1]
    assert took < 20


@pytest.mark.parametrize("code", [101, 999])
def test_a_status_that_is_neither_success_nor_error_is_never_an_answer(code: int) -> None:
    async def odd(conn: Connection) -> None:
        body = _completion("WRONG")
        await conn.send(b"HTTP/1.1 %d Odd\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                        % (code, len(body), body))
        conn.close()

    with RawServer(odd) as server:
        result, _ = _predict_raw(server, max_retries=0)
    assert list(result["y"][:1]) == ["fine"] and pd.isna(result["y"][1])
    assert f"HTTP {code}" in result["y_error"][1]


# -- 2. the key echoed in odd forms ---------------------------------------------------------------

# Keys made of base64 text carry '/', '+' and '=', which JSON and URL encoders escape.
ODD_KEY = "sk-b64/Zm9vYmFy+YmF6cXV4=="
ODD_BEARER = f"Bearer {ODD_KEY}"


def _unicode_escaped(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


def _lower_hex(quoted: str) -> str:
    return re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), quoted)


_USER_KEY_B64 = base64.b64encode(f"user:{KEY}".encode()).decode()
_ODD_QUOTED = _lower_hex(urllib.parse.quote(ODD_BEARER, safe=""))

# (key, what the server sends, how the key looks in it): the test looks for the key as the
# server wrote it, so an encoded echo counts as shown unless that encoding was scrubbed.
ECHOES = [
    pytest.param(KEY, respond(400, {"error": {"message": "x" * 285 + f" {KEY} was refused"}}), [],
                 id="across-the-300-char-cut"),
    pytest.param(KEY, redirect(302, "https://x.example/" + "a" * 170 + f"?k={KEY}"), [], id="location-across-200"),
    pytest.param(KEY, respond(400, {"error": {"message": f"bad auth {_USER_KEY_B64}"}}), [_USER_KEY_B64[8:36]],
                 id="base64-user-key"),
    pytest.param(KEY, respond(200, ('{"echo": "' + _unicode_escaped(f"Bearer {KEY}") + '"}').encode()),
                 [_unicode_escaped(KEY[:8]), _unicode_escaped(KEY[:8]).replace("\\", "\\\\")],
                 id="json-unicode-escaped-2xx"),
    pytest.param(KEY, respond(200, f"upstream saw Bearer {KEY}".encode("utf-16-le")),
                 [KEY[:8].encode("utf-16-le").decode(), repr(KEY[:8].encode("utf-16-le").decode())[1:-1]],
                 id="utf-16-body"),
    pytest.param(ODD_KEY, respond(200, json.dumps({"echo": ODD_BEARER}).replace("/", "\\/").encode()),
                 ["Zm9vYmFy"], id="json-slash-escaped-2xx"),
    pytest.param(ODD_KEY, respond(400, f"<p>{_ODD_QUOTED}</p>".encode()), ["Zm9vYmFy"],
                 id="percent-encoded-lowercase-hex"),
    pytest.param(KEY, answer(f"Your key is {KEY}."), [], id="in-the-answer-text"),
    pytest.param(KEY, answer(f"Your key is {KEY}", finish_reason="length"), [], id="in-a-cut-off-answer"),
]


def _every_text(error: BaseException | None) -> str:
    parts = []
    while error is not None:
        parts += [str(error), repr(error), repr(vars(error))]
        error = error.__cause__ or error.__context__
    return "\n".join(parts)


def _cache_bytes() -> bytes:
    return b"".join(p.read_bytes() for p in Path(os.environ["DFLLM_CACHE_DIR"]).rglob("*") if p.is_file())


def _assert_key_nowhere(forms: list[str], texts: list[str]) -> None:
    cached = _cache_bytes()
    for form in forms:
        for text in texts:
            assert form not in text, text
        assert form.encode() not in cached


@pytest.mark.parametrize(("key", "behaviour", "echoed"), ECHOES)
def test_a_key_echoed_in_any_encoding_is_never_shown(key: str, behaviour: Behaviour, echoed: list[str],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with FakeProvider(script=per_prompt({"two": [behaviour, behaviour]})) as fake:
        dfllm.create_engine("t", "openai", api_key=key, base_url=fake.base_url)
        result = DF.llm.predict("t", "m", "Say: {{text}}", "y", progress=False, errors="null", max_retries=0)
        texts = [result.to_csv(), caplog.text]
        try:
            DF.llm.predict("t", "m", "Say: {{text}}", "y", progress=False, max_retries=0)
        except dfllm.BatchError as error:
            texts += [_every_text(error), _every_text(error.errors[1])]
        assert fake.chat_requests[0].headers["Authorization"] == f"Bearer {key}"  # the server had it to echo
    assert result["y"][0] == "m says: Say: one"
    # A prefix of the key is a leak too: 8 characters are most of what an attacker needs.
    _assert_key_nowhere([key[:8], key[-8:], *echoed], texts)


def test_rate_limit_header_values_are_scrubbed_before_they_are_cut() -> None:
    from dfllm.config.secrets import Scrubber, Secret
    from dfllm.engines.http import rate_limit_state

    state = rate_limit_state({"x-ratelimit-reset-requests": "x" * 90 + KEY}, Scrubber([Secret(KEY)]))
    assert state is not None and KEY[:8] not in repr(state.headers)


# -- 3. broken Unicode and bad key text -----------------------------------------------------------

def test_a_lone_surrogate_from_the_provider_never_throws_the_result_away() -> None:
    broken_error = respond(400, b'{"error": {"message": "bad \\ud800 input"}}')
    broken_answer = respond(200, b'{"choices": [{"message": {"content": "smile \\ud83d"}, "finish_reason": "stop"}]}')
    frame = pd.DataFrame({"text": ["one", "two", "three"]})
    with FakeProvider(script=per_prompt({"two": [broken_error], "three": [broken_answer]})) as fake:
        dfllm.create_engine("t", "openai", api_key=KEY, base_url=fake.base_url)
        result = frame.llm.predict("t", "m", "Say: {{text}}", "y", progress=False, errors="null", max_retries=0)
        again = frame.llm.predict("t", "m", "Say: {{text}}", "y", progress=False, errors="null", max_retries=0)
        asked_again = [r.prompt for r in fake.chat_requests[3:]]
    assert result["y"][0] == "m says: Say: one"
    assert result["y_error"][1].startswith("BadRequestError: ") and "bad  input" in result["y_error"][1]
    # The broken half of an emoji becomes U+FFFD, as a UTF-8 decoder does; the answer is kept and cached.
    assert result["y"][2] == "smile \ufffd" and pd.isna(result["y_error"][2])
    assert asked_again == ["Say: two"] and again["y"][2] == "smile \ufffd"


@pytest.mark.parametrize("param", ["api_key", "virtual_key", "provider"])
def test_a_header_value_with_a_line_break_is_refused_before_any_request(param: str) -> None:
    using = {"base_url": "http://127.0.0.1:9/v1", param: "vk-0123456789abcdef\n"}
    with pytest.raises(dfllm.ParameterError) as info:
        dfllm.create_engine("t", "portkey", **using)
    message = str(info.value)
    assert param in message and "line break" in message and "0123456789" not in message


@pytest.mark.parametrize(("extra_body", "problem"), [({"x": {1, 2}}, "set"), ({"x": float("nan")}, "JSON")])
def test_a_body_that_is_not_json_is_refused_and_never_sent(extra_body: dict[str, Any], problem: str) -> None:
    from dfllm.engines.http import OpenAICompatibleEngine

    with FakeProvider() as fake:
        dfllm.create_engine("t", "openai", api_key=KEY, base_url=fake.base_url)
        with pytest.raises(dfllm.ParameterError, match="extra_body must be plain JSON"):
            DF.llm.predict("t", "m", "Say: {{text}}", "y", progress=False, errors="null", extra_body=extra_body)

        async def direct() -> None:  # the engine's own guard, for requests built elsewhere
            engine = OpenAICompatibleEngine(fake.base_url, {})
            try:
                await engine.complete(dfllm.Request("m", (Message.of_text("user", "x"),), dict(extra_body)))
            finally:
                await engine.aclose()

        with pytest.raises(dfllm.BadRequestError, match=problem):
            asyncio.run(direct())
        assert fake.chat_requests == []  # NaN would have gone out as the invalid JSON token NaN


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(codec=None, categories=None), max_size=12), st.text(max_size=8),
       st.dictionaries(st.sampled_from(["temperature", "seed", "stop"]), st.integers(0, 9) | st.text(max_size=3)))
def test_a_request_body_is_the_json_of_model_messages_and_params_whatever_the_text(
        prompt: str, system: str, params: dict[str, Any]) -> None:
    """Any prompt text (non-ASCII, controls, a lone surrogate) goes out as JSON that reads back as
    the same model, messages and params. (A high and a low surrogate side by side read back as the
    one character they make: JSON's escapes are UTF-16's.)"""
    from dfllm.engines.http import OpenAICompatibleEngine

    engine = OpenAICompatibleEngine("http://127.0.0.1:9/v1", {})
    messages = (Message.of_text("system", system), Message.of_text("user", prompt))
    body = engine.request_body(dfllm.Request("m", messages, params))
    sent = json.loads(body.decode("utf-8", "surrogatepass"))
    paired = prompt.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    assert sent == {"model": "m", "messages": [{"role": "system", "content": system},
                                               {"role": "user", "content": paired}], **params}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {1, 2}, b"bytes"])
def test_a_model_or_message_that_is_not_text_never_goes_out_as_invalid_json(value: Any) -> None:
    """A task built by hand with a non-string model or content is refused, not written as NaN or
    quietly turned into a list or a string."""
    from dfllm.engines.http import OpenAICompatibleEngine

    engine = OpenAICompatibleEngine("http://127.0.0.1:9/v1", {})
    for task in (dfllm.Request(value, (Message.of_text("user", "hi"),)),
                 dfllm.Request("m", (Message.of_text("user", value),))):
        with pytest.raises(dfllm.BadRequestError, match="cannot be sent as JSON"):
            engine.request_body(task)
