"""The fake provider is faithful enough for the official SDK, and its scripts do what they say."""

from __future__ import annotations

import json
import urllib.request

import openai
import pytest

from dfllm.testing import FakeProvider, FakeProviderProcess, always, sequence, status


def test_openai_sdk_accepts_chat_completions_and_model_listing() -> None:
    with FakeProvider(responder="echo", api_key="k") as fake:
        client = openai.OpenAI(api_key="k", base_url=fake.base_url, max_retries=0)
        completion = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}], max_tokens=5)
        assert completion.choices[0].message.content == "hello"
        assert completion.usage is not None and completion.usage.total_tokens > 0
        assert "gpt-4o-mini" in [m.id for m in client.models.list()]
        client.close()
        assert fake.chat_requests[0].headers["Authorization"] == "Bearer k"


def test_openai_sdk_sees_scripted_statuses() -> None:
    script = sequence([status(429, retry_after=1), status(401)])
    with FakeProvider(script=script) as fake:
        client = openai.OpenAI(api_key="k", base_url=fake.base_url, max_retries=0)
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        assert info.value.response.headers["retry-after"] == "1"
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        client.close()


def test_server_side_rpm_cap_answers_429_with_limit_headers() -> None:
    with FakeProvider(rpm=60, rpm_burst=2) as fake:
        client = openai.OpenAI(api_key="k", base_url=fake.base_url, max_retries=0)
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        headers = info.value.response.headers
        assert headers["x-ratelimit-limit-requests"] == "60"
        assert 0 < int(headers["retry-after-ms"]) <= 1000
        client.close()
        assert fake.app.status_counts == {200: 2, 429: 1}


def test_separate_process_serves_and_reports_stats() -> None:
    with FakeProviderProcess(latency_ms=1, responder="echo") as fake:
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "ping"}]}).encode()
        request = urllib.request.Request(f"{fake.base_url}/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert json.loads(resp.read())["choices"][0]["message"]["content"] == "ping"
        assert fake.stats()["requests"] == 1
        fake.reset()
        assert fake.stats()["requests"] == 0


def test_always_script_applies_to_every_request() -> None:
    with FakeProvider(script=always(status(503))) as fake:
        client = openai.OpenAI(api_key="k", base_url=fake.base_url, max_retries=0)
        for _ in range(2):
            with pytest.raises(openai.InternalServerError):
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        client.close()


def _cached_tokens(fake: FakeProvider, texts: tuple[str, ...]) -> list[int]:
    system = "Label the review. " * 20  # 360 characters, sent first each time
    client = openai.OpenAI(api_key="k", base_url=fake.base_url, max_retries=0)
    found = []
    for text in texts:
        usage = client.chat.completions.create(model="m", messages=[
            {"role": "system", "content": system}, {"role": "user", "content": text}]).usage
        assert usage is not None and usage.prompt_tokens_details is not None
        found.append(usage.prompt_tokens_details.cached_tokens or 0)
    return found


def test_openai_sdk_reads_the_cached_tokens_of_a_prefix_sent_before() -> None:
    with FakeProvider() as fake:
        assert _cached_tokens(fake, ("good", "bad")) == [0, 80]  # 5 whole 64-character blocks of the system prompt
    with FakeProvider(prompt_cache_min_tokens=None) as fake:
        assert _cached_tokens(fake, ("good", "bad")) == [0, 0]
