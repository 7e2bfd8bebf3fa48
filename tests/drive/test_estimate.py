"""``dfllm.estimate``: the numbers of a run without the run; asserted from the fake provider's records."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import dfllm
from dfllm.runtime.cost import usd
from dfllm.testing import FakeProvider


def frame() -> pd.DataFrame:
    # 12 rows: 2 all-null, 10 prompts of which 6 unique.
    texts = ["a" * 40, "b" * 40, None, "a" * 40, "c" * 80, "d", "e", None, "a" * 40, "b" * 40, "d", "f"]
    return pd.DataFrame({"t": texts})


def test_counts_rows_prompts_and_tokens_and_sends_nothing(fake: FakeProvider, engine: str) -> None:
    est = dfllm.estimate(frame(), engine, "m", "{{t}}", "y", max_tokens=10)
    assert fake.requests == []
    assert (est.rows, est.skipped_null_rows, est.unique_prompts, est.cache_hits, est.requests) == (12, 2, 6, 0, 6)
    if est.tokenizer.startswith("estimated"):  # chars/4 + 1 per text, plus 4 per message
        assert est.prompt_tokens == sum(n // 4 + 1 + 4 for n in (40, 40, 80, 1, 1, 1))
    assert est.completion_tokens == 60 and "upper bound" in est.completion_basis
    assert "requests to send     6" in str(est)


def test_cache_hits_after_a_run_mean_nothing_to_send(fake: FakeProvider, engine: str) -> None:
    dfllm.predict(frame().head(5), engine, "m", "{{t}}", "y")
    sent = len(fake.chat_requests)
    est = dfllm.estimate(frame(), engine, "m", "{{t}}", "y")
    assert len(fake.chat_requests) == sent == 3
    assert (est.cache_hits, est.requests) == (3, 3)


def test_no_cache_file_is_created_by_an_estimate(tmp_path: pytest.TempPathFactory, fake: FakeProvider,
                                                  engine: str) -> None:
    path = f"{tmp_path}/never.sqlite3"
    dfllm.estimate(frame(), engine, "m", "{{t}}", "y", cache=path)
    import os

    assert not os.path.exists(path)


def test_wall_time_is_bound_by_the_tightest_limit(engine: str) -> None:
    by_concurrency = dfllm.estimate(frame(), engine, "m", "{{t}}", "y", concurrency=2, latency_s=3.0)
    assert by_concurrency.wall_s == pytest.approx(6 * 3.0 / 2) and by_concurrency.bound_by.startswith("concurrency")
    by_rpm = dfllm.estimate(frame(), engine, "m", "{{t}}", "y", rpm=6, latency_s=0.1)
    assert by_rpm.wall_s == pytest.approx(60.0) and by_rpm.bound_by.startswith("rpm 6")
    per_request = by_rpm.prompt_tokens / 6 + 256
    by_tpm = dfllm.estimate(frame(), engine, "m", "{{t}}", "y", tpm=per_request, latency_s=0.1)
    assert by_tpm.wall_s == pytest.approx(360.0) and by_tpm.bound_by.startswith("tpm")


def test_cost_only_from_prices_given_online_and_batch_side_by_side(engine: str) -> None:
    none = dfllm.estimate(frame(), engine, "m", "{{t}}", "y")
    assert none.cost_usd is None and none.batch_cost_usd is None and "cost" not in str(none)
    est = dfllm.estimate(frame(), engine, "m", "{{t}}", "y", choices=["yes", "no"], price_prompt=2.0,
                         price_completion=10.0)
    assert est.completion_basis == "the longest choice"
    assert est.cost_usd == pytest.approx((est.prompt_tokens * 2.0 + est.completion_tokens * 10.0) / 1e6)
    assert est.cost_usd is not None and est.batch_cost_usd == pytest.approx(est.cost_usd / 2)
    assert f"cost                 online {usd(est.cost_usd)}, batch {usd(est.cost_usd / 2)}" in str(est)


def test_prices_set_on_the_engine_reach_the_estimate_and_a_call_overrides_them(fake: FakeProvider) -> None:
    dfllm.create_engine("priced", "openai", api_key="k", base_url=fake.base_url, price_prompt=1.0,
                        price_completion=4.0)
    on_engine = dfllm.estimate(frame(), "priced", "m", "{{t}}", "y", max_tokens=10)
    assert on_engine.cost_usd == pytest.approx((on_engine.prompt_tokens * 1.0 + 60 * 4.0) / 1e6)
    per_call = dfllm.estimate(frame(), "priced", "m", "{{t}}", "y", max_tokens=10, price_completion=0.0)
    assert per_call.cost_usd == pytest.approx(on_engine.prompt_tokens * 1.0 / 1e6)


def test_a_price_alone_is_a_configuration_error_not_a_cost_too_low(engine: str) -> None:
    with pytest.raises(dfllm.ConfigurationError) as info:
        dfllm.estimate(frame(), engine, "m", "{{t}}", "y", price_prompt=0.15)
    assert "price_prompt given without price_completion" in str(info.value)
    with pytest.raises(dfllm.ConfigurationError) as info:
        dfllm.estimate(frame(), engine, "m", "{{t}}", "y", price_prompt=-1, price_completion=float("nan"))
    assert "price_prompt must be a price" in str(info.value) and "price_completion must be a price" in str(info.value)


def test_a_long_instruction_after_the_cells_is_named_with_its_fix(engine: str) -> None:
    instruction = "Answer with one word from the list of labels we agreed on. " * 5
    est = dfllm.estimate(frame(), engine, "m", "Review: {{t}}\n" + instruction, "y")
    assert est.hint is not None and "after its first placeholder {{t}}" in est.hint
    assert "prompt cache         The template has" in str(est)
    first = dfllm.estimate(frame(), engine, "m", instruction + "\nReview: {{t}}", "y")
    assert first.hint is None and "prompt cache" not in str(first)


def test_bad_options_are_configuration_errors_before_anything(fake: FakeProvider, engine: str) -> None:
    with pytest.raises(dfllm.ConfigurationError):
        dfllm.estimate(frame(), engine, "m", "{{nope}}", "y", concurrency=-1)
    assert fake.requests == []


def test_cache_hits_are_counted_in_an_fsspec_cache_too(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/answers"
    df = pd.DataFrame({"t": ["a", "b", "c"]})
    with FakeProvider() as fake:
        dfllm.create_engine("e", "openai", api_key="k", base_url=fake.base_url)
        assert dfllm.estimate(df, "e", "m", "{{t}}", "y", cache=url).cache_hits == 0
        assert not (tmp_path / "answers").exists()  # a dry run creates nothing
        dfllm.predict(df.head(2), "e", "m", "{{t}}", "y", cache=url)
        estimate = dfllm.estimate(df, "e", "m", "{{t}}", "y", cache=url)
        sent = len(fake.chat_requests)
    assert (estimate.cache_hits, estimate.requests, sent) == (2, 1, 2)


def test_an_estimate_of_a_few_rows_takes_at_least_one_round_trip(engine: str) -> None:
    estimate = dfllm.estimate(pd.DataFrame({"t": ["a", "b"]}), engine, "m", "{{t}}", "y", latency_s=1.5)
    assert estimate.wall_s >= 1.5
    with pytest.raises(dfllm.ConfigurationError) as info:
        dfllm.estimate(pd.DataFrame({"t": ["a"]}), engine, "m", "{{t}}", "y", latency_s=0, price_prompt=-1,
                       price_completion=1)
    assert "latency_s must be" in str(info.value) and "price_prompt must be" in str(info.value)

