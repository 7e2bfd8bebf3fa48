"""A provider that sends everything wrong: answers that are not answers, absurd headers, echoed
keys, redirects. Each case runs against a real server on 127.0.0.1 and is judged from its records."""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dfllm
from dfllm.engines.http import parse_duration_s, rate_limit_state, retry_after, retry_after_s
from dfllm.testing import (
    Behaviour,
    FakeProvider,
    RecordedRequest,
    answer,
    echo_headers,
    redirect,
    respond,
    sequence,
    status,
)
from tests.conftest import KEY

DF = pd.DataFrame({"text": ["one", "two"]})


def _predict(engine: str, **options: Any) -> pd.DataFrame:
    frame: pd.DataFrame = DF.llm.predict(engine, "m", "Say: {{text}}", "y", max_retries=0, progress=False,
                                         **options)
    return frame


def _only_for_two(behaviour: Behaviour, *, once: bool = True) -> Any:
    """Misbehave on the prompt of row "two" only (the first time it is asked, when ``once``)."""
    used: list[int] = []

    def script(request: RecordedRequest) -> Behaviour | None:
        if "two" in request.prompt and not (once and used):
            used.append(1)
            return behaviour
        return None

    return script


# -- 1. answers that are not answers ------------------------------------------------------------

NOT_ANSWERS = [
    pytest.param(answer(None, refusal="I can't help with that."), dfllm.RefusalError, "refused", id="refusal"),
    pytest.param(answer(None, finish_reason="content_filter"), dfllm.RefusalError, "content_filter",
                 id="content-filter-null"),
    pytest.param(answer("partial", finish_reason="content_filter"), dfllm.RefusalError, "content_filter",
                 id="content-filter-text"),
    pytest.param(answer(None, finish_reason="tool_calls", tool_calls=[{"id": "c", "type": "function"}]),
                 dfllm.IncompleteAnswerError, "tool calls", id="tool-calls"),
    pytest.param(answer(None), dfllm.IncompleteAnswerError, "content is null", id="null-content"),
    pytest.param(answer("The capital of", finish_reason="length"), dfllm.IncompleteAnswerError, "max_tokens",
                 id="truncated"),
    pytest.param(answer(42), dfllm.ResponseFormatError, "int, not text", id="number"),
    pytest.param(answer(["a", "b"]), dfllm.ResponseFormatError, "list, not text", id="list"),
    pytest.param(answer({"text": "x"}), dfllm.ResponseFormatError, "dict, not text", id="dict"),
    pytest.param(respond(200, {"id": "x", "object": "chat.completion"}), dfllm.ResponseFormatError,
                 "no choices", id="no-choices"),
    pytest.param(respond(200, {"choices": []}), dfllm.ResponseFormatError, "no choices", id="empty-choices"),
    pytest.param(respond(200, {"choices": ["text"]}), dfllm.ResponseFormatError, "no choices", id="bad-choice"),
    pytest.param(respond(200, [1, 2]), dfllm.ResponseFormatError, "no choices", id="json-list"),
    pytest.param(respond(200, b"[" * 100_000), dfllm.ResponseFormatError, "not JSON", id="deep-nesting"),
]


@pytest.mark.parametrize(("behaviour", "error", "reason"), NOT_ANSWERS)
def test_an_answer_that_is_not_an_answer_is_a_row_error_never_cached(
        behaviour: Behaviour, error: type[Exception], reason: str) -> None:
    with FakeProvider(script=_only_for_two(behaviour)) as fake:
        dfllm.create_engine("t", "openai", api_key=KEY, base_url=fake.base_url)
        result = _predict("t", errors="null")
        assert result["y"][0] == "m says: Say: one"
        assert result["y"][1] is None or pd.isna(result["y"][1])
        assert result["y_error"][1].startswith(f"{error.__name__}: ") and reason in result["y_error"][1]
        assert len(fake.chat_requests) == 2  # not retried
        # Not cached: the next run asks again for row two only, and now gets an answer.
        again = _predict("t", errors="null")
        assert [r.prompt for r in fake.chat_requests[2:]] == ["Say: two"]
        assert again["y"][1] == "m says: Say: two"


def test_not_an_answer_appears_in_batch_error_with_its_reason(fake: FakeProvider, engine: str) -> None:
    fake.app.script = _only_for_two(answer("cut", finish_reason="length"))
    with pytest.raises(dfllm.BatchError) as info:
        _predict(engine)
    assert "IncompleteAnswerError" in str(info.value) and "finish_reason 'length'" in str(info.value)
    assert isinstance(info.value.errors[1], dfllm.IncompleteAnswerError)
    assert info.value.errors[1].text == "cut" and "'cut'" in str(info.value.errors[1])
    assert not info.value.errors[1].retryable
    assert info.value.partial["y"][0] == "m says: Say: one"


@pytest.mark.parametrize("usage", [
    {"prompt_tokens": "lots", "completion_tokens": -5},
    {"prompt_tokens": None, "completion_tokens": 1e300},
    {"prompt_tokens": float("inf"), "completion_tokens": True},
    "usage",
    None,
    [1, 2],
])
def test_garbage_usage_never_discards_a_valid_answer(fake: FakeProvider, engine: str, usage: Any) -> None:
    fake.app.script = sequence([answer("fine", usage=usage)] * 2)
    result = _predict(engine, usage_columns=True)
    assert list(result["y"]) == ["fine", "fine"]
    assert list(result["y_prompt_tokens"]) == [0, 0] and list(result["y_completion_tokens"]) == [0, 0]


@pytest.mark.parametrize(("details", "cached"), [
    ({"cached_tokens": "lots"}, 0),
    ({"cached_tokens": -5}, 0),
    ({"cached_tokens": True}, 0),
    ({"cached_tokens": float("nan")}, 0),
    ({"cached_tokens": 1e300}, 0),
    ({"cached_tokens": None}, 0),
    ({}, 0),
    ([64], 0),
    ("cached", 0),
    ({"cached_tokens": 10**6}, 7),  # more than the whole prompt: held to the prompt
    ({"cached_tokens": 4.0}, 4),
])
def test_garbage_cached_tokens_are_zero_or_held_to_the_prompt(fake: FakeProvider, engine: str, details: Any,
                                                              cached: int) -> None:
    usage = {"prompt_tokens": 7, "completion_tokens": 1, "prompt_tokens_details": details}
    fake.app.script = sequence([answer("fine", usage=usage)] * 2)
    result = _predict(engine, usage_columns=True)
    assert list(result["y"]) == ["fine", "fine"]
    assert list(result["y_cached_tokens"]) == [cached, cached] and list(result["y_prompt_tokens"]) == [7, 7]
    run = dfllm.last_run()
    assert run is not None and run.cached_prompt_tokens == 2 * cached


USAGE_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=8),
                         st.lists(st.integers(), max_size=2))


@settings(max_examples=300, deadline=None)
@given(USAGE_VALUES, st.one_of(USAGE_VALUES, st.dictionaries(st.sampled_from(["cached_tokens", "audio_tokens"]),
                                                             USAGE_VALUES, max_size=2)))
def test_cached_tokens_from_any_usage_are_a_count_within_the_prompt(prompt: Any, details: Any) -> None:
    from dfllm.engines.http import parse_completion

    usage = {"prompt_tokens": prompt, "completion_tokens": 1, "prompt_tokens_details": details}
    body = json.dumps({"choices": [{"message": {"content": "hi"}}], "usage": usage}).encode()
    completion = parse_completion(body, {}, "http://x")
    assert type(completion.cached_tokens) is int
    assert 0 <= completion.cached_tokens <= completion.prompt_tokens <= 2**53


def test_completion_carries_its_finish_reason() -> None:
    from dfllm.engines.http import parse_completion

    body = b'{"choices":[{"message":{"content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3}}'
    completion = parse_completion(body, {}, "http://x")
    assert completion.finish_reason == "stop" and completion.text == "hi" and completion.prompt_tokens == 3


def test_a_completion_holds_each_field_in_its_place() -> None:
    from dfllm.engines.base import Completion, RateLimitState
    from dfllm.engines.http import parse_completion

    usage = {"prompt_tokens": 9, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 2}}
    body = json.dumps({"choices": [{"message": {"content": "hi"}, "finish_reason": "eos"}], "usage": usage})
    completion = parse_completion(body.encode(), {"x-ratelimit-limit-requests": "60"}, "http://x")
    assert completion == Completion(text="hi", prompt_tokens=9, completion_tokens=4, finish_reason="eos",
                                    cached_tokens=2, rate_limit=RateLimitState(
                                        limit_requests=60, headers=(("x-ratelimit-limit-requests", "60"),)))
    assert type(completion) is Completion and completion.values is None


def test_a_usage_count_too_large_for_a_float_is_zero_not_a_failure() -> None:
    from dfllm.engines.http import parse_completion

    body = b'{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":1' + b"0" * 400 + b"}}"
    completion = parse_completion(body, {}, "http://x")
    assert completion.text == "hi" and completion.prompt_tokens == 0


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                    max_leaves=8),
       st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"]),
       st.binary(max_size=3))
def test_a_body_is_read_as_json_loads_reads_it(value: Any, encoding: str, tail: bytes) -> None:
    from dfllm.engines.http import read_json

    text = json.dumps({"v": value}, ensure_ascii=False)
    for raw in (text.encode(encoding, "surrogatepass"), text.encode(encoding, "surrogatepass") + tail, tail):
        assert _read_as(read_json, raw) == _read_as(json.loads, raw)


def _read_as(read: Callable[[bytes], Any], raw: bytes) -> str:
    """What ``read`` makes of ``raw``: its value's repr (a NaN read is not equal to itself), or the
    type of the error it raised."""
    try:
        return repr(read(raw))
    except (ValueError, RecursionError) as exc:
        return repr(type(exc))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 260), st.integers(1, 4400), st.text(st.characters(codec=None, categories=None), max_size=6),
       st.booleans(), st.sampled_from([b"", b" ", b"x", b"\xed\xa0\x80", b"\xff"]))
def test_a_body_at_the_fast_parsers_edges_is_read_as_json_loads_reads_it(
        depth: int, digits: int, text: str, ascii_only: bool, tail: bytes) -> None:
    """Past the fast parser's limits (nesting over 200, a number over its range, a lone surrogate,
    CESU or stray bytes) a body still reads, or fails, exactly as json.loads has it."""
    from dfllm.engines.http import read_json

    inner = '{"n": ' + "7" * digits + ', "t": ' + json.dumps(text, ensure_ascii=ascii_only) + "}"
    raw = ("[" * depth + inner + "]" * depth).encode("utf-8", "surrogatepass") + tail
    assert _read_as(read_json, raw) == _read_as(json.loads, raw)


# -- 2. untrusted headers -----------------------------------------------------------------------

@pytest.mark.parametrize(("headers", "expected"), [
    ({"retry-after": "1e9"}, 1e9),
    ({"retry-after": "inf"}, None),
    ({"retry-after": "nan"}, None),
    ({"retry-after": "-5"}, None),
    ({"retry-after": "soon"}, None),
    ({"retry-after": "1e400"}, None),
    ({"retry-after-ms": "1e12"}, 1e9),
    ({"retry-after-ms": "nan", "retry-after": "2"}, 2.0),
    ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),
    ({"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"}, "future"),
    ({"retry-after": "Mon, 99 Foo 2015 99:99:99 GMT"}, None),
])
def test_retry_after_is_finite_and_non_negative_or_absent(headers: dict[str, str], expected: Any) -> None:
    found = retry_after_s(headers)
    if expected == "future":
        assert found is not None and math.isfinite(found) and found > 1e9
    else:
        assert found == expected
    said = retry_after(headers)
    if found is not None:
        assert said is not None and said[1].split(": ", 1)[1] in headers.values()


@pytest.mark.parametrize("value", ["-1", "0", "abc", "1e400", "nan", "inf", "-inf", "", "1e300"])
def test_meaningless_rate_limit_values_are_absent(value: str) -> None:
    state = rate_limit_state({"x-ratelimit-limit-requests": value, "x-ratelimit-limit-tokens": value,
                              "x-ratelimit-reset-requests": value})
    assert state is not None
    assert state.limit_requests is None and state.limit_tokens is None
    assert state.header("x-ratelimit-limit-requests") == f"x-ratelimit-limit-requests: {value}"
    if value not in ("0", "1e300"):
        assert state.reset_requests_s is None


def test_rate_limit_state_keeps_good_values_and_names_headers() -> None:
    state = rate_limit_state({"x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "0",
                              "x-ratelimit-reset-requests": "6h0m0s"})
    assert state is not None
    assert (state.limit_requests, state.remaining_requests, state.reset_requests_s) == (500, 0, 21600.0)
    assert state.header("x-ratelimit-reset-requests") == "x-ratelimit-reset-requests: 6h0m0s"
    assert state.header("x-ratelimit-limit-tokens") is None
    assert parse_duration_s("20ms") == pytest.approx(0.02) and parse_duration_s("1m30s") == 90.0
    assert parse_duration_s("5s garbage") is None and parse_duration_s("9" * 400 + "h") is None


def _sane(value: float | None) -> bool:
    return value is None or (math.isfinite(value) and value >= 0)


HEADER_TEXT = st.one_of(
    st.text(max_size=80),
    st.from_regex(r"-?[0-9.eE+]{0,12}(ms|s|m|h)?", fullmatch=True),
    st.from_regex(r"([0-9]{1,400}(\.[0-9]+)?(ms|s|m|h)){1,4}", fullmatch=True),
    st.sampled_from(["inf", "-inf", "nan", "1e400", "Infinity", "Wed, 21 Oct 2015 07:28:00 GMT",
                     "Sat, 01 Jan 0001 00:00:00 GMT", "Fri, 31 Dec 9999 23:59:59 +9999"]),
)


@settings(max_examples=300, deadline=None)
@given(HEADER_TEXT, HEADER_TEXT)
def test_header_parsers_never_raise_and_return_only_finite_non_negative_values(a: str, b: str) -> None:
    assert _sane(parse_duration_s(a))
    assert _sane(retry_after_s({"retry-after": a}))
    assert _sane(retry_after_s({"retry-after-ms": a, "retry-after": b}))
    names = ["x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
             "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"]
    state = rate_limit_state({name: (a if i % 2 else b) for i, name in enumerate(names)})
    assert state is not None
    for limit in (state.limit_requests, state.limit_tokens):
        assert limit is None or 1 <= limit <= 2**53
    for remaining in (state.remaining_requests, state.remaining_tokens):
        assert remaining is None or 0 <= remaining <= 2**53
    assert _sane(state.reset_requests_s) and _sane(state.reset_tokens_s)


def test_absurd_retry_after_reaches_the_error_with_its_header(fake: FakeProvider, engine: str) -> None:
    fake.app.script = _only_for_two(status(429, headers={"retry-after": "1e9"}))
    with pytest.raises(dfllm.BatchError) as info:
        DF.llm.predict(engine, "m", "Say: {{text}}", "y", max_retries=0, max_retry_time_s=1, progress=False)
    error = info.value.errors[1]
    assert isinstance(error, dfllm.RateLimitError)
    assert error.retry_after == 1e9 and error.retry_after_header == "retry-after: 1e9"


# -- 3. keys never shown ------------------------------------------------------------------------

PORTKEY_KEY = "pk-live-abcdef0123456789"
VIRTUAL_KEY = "vk-openai-9876543210fedcba"
UPSTREAM_KEY = "sk-upstream-5555aaaa6666bbbb"
CONFIG_KEY = "sk-in-config-7777cccc8888dddd"
SECRETS = (KEY, PORTKEY_KEY, VIRTUAL_KEY, UPSTREAM_KEY, CONFIG_KEY)


def _chain_text(error: BaseException | None) -> str:
    parts = []
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        parts += [str(error), repr(error), repr(getattr(error, "request_info", ""))]
        error = error.__cause__ or error.__context__
    return "\n".join(parts)


def _cache_bytes(cache_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in cache_dir.rglob("*") if p.is_file())


@pytest.fixture
def cache_dir() -> Path:
    return Path(os.environ["DFLLM_CACHE_DIR"])


@pytest.mark.parametrize("provider", ["openai", "portkey"])
@pytest.mark.parametrize("code", [400, 401, 500, 200])
def test_a_server_echoing_the_key_never_gets_it_shown(provider: str, code: int, cache_dir: Path) -> None:
    with FakeProvider(script=_only_for_two(echo_headers(code), once=False)) as fake:
        if provider == "openai":
            dfllm.create_engine("t", "openai", api_key=KEY, base_url=fake.base_url)
        else:
            dfllm.create_engine(
                "t", "portkey", portkey_api_key=PORTKEY_KEY, virtual_key=VIRTUAL_KEY, base_url=fake.base_url,
                provider="openai", provider_api_key=UPSTREAM_KEY,
                config={"provider": "openai", "api_key": CONFIG_KEY},
            )
        with pytest.raises((dfllm.BatchError, dfllm.AuthenticationError)) as info:
            _predict("t")
        frame = _predict("t", errors="null") if code != 401 else None
        sent = fake.chat_requests[-1].headers
    # The server did receive the keys (so the test would see them if they leaked).
    if provider == "openai":
        assert sent["Authorization"] == f"Bearer {KEY}"
    else:
        assert sent["x-portkey-api-key"] == PORTKEY_KEY and sent["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    error = info.value
    row_error = error.errors[1] if isinstance(error, dfllm.BatchError) else error
    texts = [_chain_text(error), _chain_text(row_error)]
    if frame is not None:
        texts.append(frame.to_csv())
        assert "***" in frame["y_error"][1]
    cached = _cache_bytes(cache_dir)
    for secret in SECRETS:
        for text in texts:
            assert secret not in text
        assert secret.encode() not in cached


def test_a_transport_error_carries_no_aiohttp_exception() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket closes
    dfllm.create_engine("t", "openai", api_key=KEY, base_url=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(dfllm.BatchError) as info:
        _predict("t")
    error = info.value.errors[0]
    assert isinstance(error, dfllm.TransportError)
    chain = []
    link: BaseException | None = error
    while link is not None:
        chain.append(link)
        link = link.__cause__ or link.__context__
    assert not any(isinstance(e, aiohttp.ClientError) or hasattr(e, "request_info") for e in chain)
    assert KEY not in _chain_text(error)


# -- 4. redirects -------------------------------------------------------------------------------

@pytest.mark.parametrize("code", [301, 302, 307, 308])
@pytest.mark.parametrize("provider", ["openai", "portkey"])
def test_a_redirect_is_never_followed_and_names_its_location(code: int, provider: str, cache_dir: Path) -> None:
    with FakeProvider() as elsewhere:
        key = KEY if provider == "openai" else VIRTUAL_KEY
        target = f"{elsewhere.base_url}/chat/completions?key={key}"
        with FakeProvider(script=_only_for_two(redirect(code, target))) as fake:
            if provider == "openai":
                dfllm.create_engine("t", "openai", api_key=KEY, base_url=fake.base_url)
            else:
                dfllm.create_engine("t", "portkey", portkey_api_key=PORTKEY_KEY, virtual_key=VIRTUAL_KEY,
                                    base_url=fake.base_url)
            result = DF.llm.predict("t", "m", "Say: {{text}}", "y", errors="null", progress=False)
            assert len(fake.chat_requests) == 2  # not retried, although retries were allowed
        assert elsewhere.requests == []  # nothing, headers or body, reached the other server
    message = result["y_error"][1]
    assert message.startswith("RedirectError: ") and f"HTTP {code}" in message
    assert f"{elsewhere.base_url}/chat/completions?key=***" in message
    assert pd.isna(result["y"][1]) and result["y"][0] == "m says: Say: one"
    assert key.encode() not in _cache_bytes(cache_dir)


# -- 5. keys in clear text ----------------------------------------------------------------------

def test_a_key_sent_over_plain_http_to_another_host_is_warned_once_per_engine() -> None:
    with pytest.warns(UserWarning, match="clear text") as record:
        dfllm.create_engine("t", "openai", api_key=KEY, base_url="http://llm.example.com/v1")
    assert len(record) == 1 and KEY not in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for host in ("127.0.0.1", "localhost", "[::1]", "127.0.0.2"):
            dfllm.create_engine("t", "openai", api_key=KEY, base_url=f"http://{host}:8000/v1")
        dfllm.create_engine("t", "openai", api_key=KEY, base_url="https://llm.example.com/v1")
        dfllm.create_engine("t", "openai_compatible", base_url="http://llm.example.com/v1")  # no key to leak
