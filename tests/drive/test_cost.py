"""Prompt caching and cost: cached tokens from the provider to ``RunStats``, the usage columns and the
cache; ``prompt_cache_key`` on the wire; the cost at the prices given; the hint for a template that
defeats the provider's prefix cache. Asserted from the fake provider's records and answers."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest

import dfllm
from dfllm.runtime.cost import Prices, usd
from dfllm.testing import FakeProvider

# 256 characters of fixed text ahead of the row: the fake's prompt cache (whole 64-character blocks,
# 32 tokens at least) serves 64 tokens of it to every request after the first.
INSTRUCTION = "Classify the sentiment of this product review as positive or negative. " * 4
assert len(INSTRUCTION) >= 256
TEMPLATE = INSTRUCTION[:256] + "{{t}}"
DF = pd.DataFrame({"t": ["great", "awful", "fine", "broken"]})


def _run(engine: str, **options: object) -> tuple[pd.DataFrame, dfllm.RunStats]:
    stats = dfllm.RunStats()
    result = dfllm.predict(DF, engine, "m", TEMPLATE, "y", stats=stats, usage_columns=True, concurrency=1,
                           **options)  # type: ignore[arg-type]
    return result, stats


def test_cached_tokens_reach_run_stats_the_usage_columns_and_the_cache(fake: FakeProvider, engine: str) -> None:
    first, stats = _run(engine)
    assert len(fake.chat_requests) == 4
    # One at a time: the first prompt is new, the other three repeat its first 256 characters.
    assert first["y_cached_tokens"].tolist() == [0, 64, 64, 64]
    assert first["y_prompt_tokens"].tolist() == [(256 + len(t) + 3) // 4 for t in DF["t"]]
    assert stats.cached_prompt_tokens == 192 and "(192 prompt-cached)" in stats.summary()
    again, cached_run = _run(engine)
    assert len(fake.chat_requests) == 4 and cached_run.cache_hits == 4
    pd.testing.assert_frame_equal(again, first)  # the cached answers keep their cached tokens
    assert cached_run.cached_prompt_tokens == 0  # nothing was sent, nothing was served by the provider


def test_the_cost_of_a_run_is_its_tokens_at_the_prices_given(fake: FakeProvider, engine: str) -> None:
    prices = {"price_prompt": 2.5, "price_cached_prompt": 1.25, "price_completion": 10.0}
    result, stats = _run(engine, **prices)
    expected = sum(Prices(2.5, 10.0, 1.25).cost(p, c, cached) for p, cached, c in zip(
        result["y_prompt_tokens"], result["y_cached_tokens"], result["y_completion_tokens"], strict=True))
    assert stats.cost_usd == pytest.approx(expected) and expected > 0
    assert stats.summary().endswith(f", {usd(expected)}")
    _, cached_run = _run(engine, **prices)
    assert cached_run.cost_usd == 0.0 and cached_run.summary().endswith(", $0.00")


def test_without_prices_a_run_shows_no_cost(engine: str) -> None:
    _, stats = _run(engine)
    assert stats.cost_usd is None and "$" not in stats.summary()


def test_prices_on_the_engine_apply_to_every_call(fake: FakeProvider) -> None:
    dfllm.create_engine("priced", "openai", api_key="k", base_url=fake.base_url, price_prompt=1.0,
                        price_completion=1.0)
    result, stats = _run("priced")
    tokens = int(result["y_prompt_tokens"].sum() + result["y_completion_tokens"].sum())
    assert stats.cost_usd == pytest.approx(tokens / 1e6)


def test_prompt_cache_key_is_sent_as_a_body_field_and_keys_the_cache(fake: FakeProvider, engine: str) -> None:
    _run(engine, prompt_cache_key="reviews-v1")
    assert [r.body["prompt_cache_key"] for r in fake.chat_requests] == ["reviews-v1"] * 4
    _run(engine, prompt_cache_key="reviews-v1")
    assert len(fake.chat_requests) == 4
    _run(engine)  # a request without the field is another request: sent, like any other sent option
    assert len(fake.chat_requests) == 8 and "prompt_cache_key" not in fake.chat_requests[-1].body


def test_a_long_instruction_after_the_cells_is_warned_once_a_call(fake: FakeProvider, engine: str) -> None:
    late = "Review: {{t}}\n" + INSTRUCTION
    stats = dfllm.RunStats()
    with pytest.warns(RuntimeWarning) as caught:
        dfllm.predict(DF, engine, "m", late, "y", stats=stats)
    hints = [str(w.message) for w in caught if "first placeholder" in str(w.message)]
    assert len(hints) == 1 and hints == [w for w in stats.warnings if "first placeholder" in w]
    assert "{{t}}" in hints[0] and "Put the instructions first" in hints[0] and "system=" in hints[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # instructions first: no hint
        dfllm.predict(DF, engine, "m", INSTRUCTION + "\nReview: {{t}}", "y")


def test_a_batch_job_costs_half_of_the_same_tokens_online() -> None:
    prices = {"price_prompt": 0.15, "price_completion": 0.6}
    with FakeProvider(prompt_cache_min_tokens=None) as fake:  # no prompt cache: the same tokens either way
        dfllm.create_engine("b", "openai", api_key="k", base_url=fake.base_url)
        online = dfllm.RunStats()
        dfllm.predict(DF, "b", "m", TEMPLATE, "y", stats=online, cache=False, **prices)  # type: ignore[arg-type]
        batch = dfllm.RunStats()
        dfllm.predict(DF, "b", "m", TEMPLATE, "y", stats=batch, mode="batch", batch_poll_s=0.01,
                      **prices)  # type: ignore[arg-type]
        assert len(fake.chat_requests) == 4 and len(fake.app.batches.creates) == 1
    assert (batch.prompt_tokens, batch.completion_tokens) == (online.prompt_tokens, online.completion_tokens)
    assert online.cost_usd is not None and batch.cost_usd == pytest.approx(online.cost_usd / 2)
