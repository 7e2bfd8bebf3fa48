"""``runtime.cost``: tokens to dollars at the caller's prices, the one place it is done."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfllm.engines.base import Completion
from dfllm.runtime.cost import BATCH_DISCOUNT, Prices, usd
from dfllm.runtime.progress import RunStats

MINI = Prices(prompt=0.15, completion=0.60, cached_prompt=0.075)  # gpt-4o-mini's list prices, USD/M


def test_cached_tokens_are_part_of_the_prompt_and_charged_at_the_cached_price() -> None:
    # 1M prompt tokens of which 400k cached, 100k completion tokens.
    assert MINI.cost(1_000_000, 100_000, 400_000) == pytest.approx(0.6 * 0.15 + 0.4 * 0.075 + 0.1 * 0.60)


def test_without_a_cached_price_cached_tokens_cost_what_prompt_tokens_do() -> None:
    prices = Prices(prompt=2.0, completion=8.0)
    assert prices.cost(1_000_000, 0, 999_999) == pytest.approx(2.0)


def test_a_batch_job_costs_half_of_every_token() -> None:
    assert BATCH_DISCOUNT == 0.5
    online = MINI.cost(3_000_000, 500_000, 1_000_000)
    assert MINI.cost(3_000_000, 500_000, 1_000_000, batch=True) == pytest.approx(online / 2)


@given(st.integers(0, 10**12), st.integers(0, 10**12), st.integers(-(10**12), 10**13))
def test_a_cost_is_never_negative_nor_more_than_every_token_at_the_full_price(
        prompt: int, completion: int, cached: int) -> None:
    cost = MINI.cost(prompt, completion, cached)
    assert 0 <= cost <= MINI.cost(prompt, completion) * (1 + 1e-12)


def test_run_stats_count_every_answer_and_its_cost_once() -> None:
    stats = RunStats()
    stats.add_usage(Completion("a", 1_000, 10, cached_tokens=600), MINI)
    stats.add_usage(Completion("b", 2_000, 20), MINI, batch=True)
    assert (stats.prompt_tokens, stats.cached_prompt_tokens, stats.completion_tokens) == (3_000, 600, 30)
    expected = MINI.cost(1_000, 10, 600) + MINI.cost(2_000, 20, batch=True)
    assert stats.cost_usd == pytest.approx(expected)
    assert "3,000+30 tokens (600 prompt-cached)" in stats.summary() and usd(expected) in stats.summary()


def test_without_prices_nothing_about_cost_is_shown() -> None:
    stats = RunStats()
    stats.add_usage(Completion("a", 100, 10))
    assert stats.cost_usd is None
    assert "$" not in stats.summary() and "prompt-cached" not in stats.summary()


@pytest.mark.parametrize(("amount", "shown"), [
    (0.0, "$0.00"), (1234.5, "$1,234.50"), (0.0042, "$0.0042"), (0.00001, "<$0.0001"), (1.0, "$1.00")])
def test_amounts_are_shown_with_the_digits_that_matter(amount: float, shown: str) -> None:
    assert usd(amount) == shown
