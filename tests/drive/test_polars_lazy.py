"""``lf.llm.predict`` on a Polars LazyFrame: nothing sent before collect, one session for all batches."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

import dfllm
from dfllm.testing import FakeProvider


def source(tmp_path: Path, rows: int) -> pl.LazyFrame:
    pl.DataFrame({"id": range(rows), "t": [None if i % 9 == 4 else f"r{i % 250}" for i in range(rows)]}).write_parquet(
        tmp_path / "in.parquet")
    return pl.scan_parquet(tmp_path / "in.parquet")


def test_sink_parquet_sends_only_at_collect_and_answers_every_row(tmp_path: Path, fake: FakeProvider,
                                                                  engine: str) -> None:
    stats = dfllm.RunStats()
    lf = source(tmp_path, 1000).llm.predict(engine, "m", "say {{t}}", "y", batch_rows=128, concurrency=8,  # type: ignore[attr-defined]
                                            stats=stats, usage_columns=True)
    assert lf.collect_schema() == pl.Schema({"id": pl.Int64, "t": pl.String, "y": pl.String,
                                             "y_prompt_tokens": pl.Int64, "y_cached_tokens": pl.Int64,
                                             "y_completion_tokens": pl.Int64})
    lf.explain()
    assert fake.chat_requests == []
    lf.sink_parquet(tmp_path / "out.parquet")
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert out["id"].to_list() == list(range(1000))
    assert out["y"].to_list() == [None if i % 9 == 4 else f"m says: say r{i % 250}" for i in range(1000)]
    # One cache and one executor for every batch: each unique prompt is sent once in all.
    assert len(fake.chat_requests) == 250 == stats.requests
    assert stats.rows == 1000 and stats.failed_rows == 0
    assert fake.peak_in_flight <= 8


def test_filters_on_inputs_run_before_predicting_and_on_answers_after(tmp_path: Path, fake: FakeProvider,
                                                                      engine: str) -> None:
    lf = source(tmp_path, 500).llm.predict(engine, "m", "{{t}}", "y", batch_rows=100, cache=False)  # type: ignore[attr-defined]
    small = lf.filter(pl.col("id") < 50).collect()
    assert small.height == 50 and len(fake.chat_requests) == len({f"r{i}" for i in range(50) if i % 9 != 4})
    picked = lf.filter(pl.col("y").str.ends_with("r7")).select("id", "y").collect()
    assert picked["id"].to_list() == [7, 257] and picked.columns == ["id", "y"]


def test_configuration_errors_surface_at_predict_not_at_collect(tmp_path: Path, fake: FakeProvider,
                                                                engine: str) -> None:
    with pytest.raises(dfllm.ConfigurationError) as caught:
        source(tmp_path, 10).llm.predict(engine, "m", "{{text}}", "t", concurrency=0)  # type: ignore[attr-defined]
    assert len(caught.value.problems) >= 3
    assert fake.requests == []


def test_failed_rows_follow_the_errors_option(tmp_path: Path, fake: FakeProvider, engine: str) -> None:
    lf = pl.LazyFrame({"t": ["yes", "maybe"]})
    out = lf.llm.predict(engine, "m", "{{t}}", "y", choices=["yes", "no"], errors="null").collect()  # type: ignore[attr-defined]
    assert out["y"].to_list() == ["yes", None] and out["y"].dtype == pl.Enum(["yes", "no"])
    assert out["y_error"][1].startswith("LabelError")
    with pytest.raises(dfllm.BatchError):
        lf.llm.predict(engine, "m", "{{t}}", "z", choices=["yes", "no"]).collect()  # type: ignore[attr-defined]


def test_a_query_that_reads_no_answer_column_sends_nothing(tmp_path: Path, fake: FakeProvider, engine: str) -> None:
    lf = source(tmp_path, 300).llm.predict(engine, "m", "{{t}}", "y", batch_rows=64, errors="null",  # type: ignore[attr-defined]
                                           usage_columns=True)
    ids = lf.select("id").collect()
    assert ids["id"].to_list() == list(range(300))
    assert lf.filter(pl.col("t") == "r7").select("id", "t").collect()["id"].to_list() == [7, 257]
    assert lf.select(pl.len()).collect().item() == 300
    assert lf.select("t").head(5).collect()["t"].to_list() == ["r0", "r1", "r2", "r3", None]
    assert fake.chat_requests == []
    # Reading an answer column (to select, or to filter on) still sends what it needs.
    assert lf.filter(pl.col("id") < 3).select("y").collect()["y"].to_list() == ["m says: r0", "m says: r1",
                                                                                "m says: r2"]
    assert len(fake.chat_requests) == 3
    assert lf.filter(pl.col("y_error").is_null()).select("id").collect().height == 300
    assert len(fake.chat_requests) == len({f"r{i % 250}" for i in range(300) if i % 9 != 4})


def test_a_conjunction_of_input_and_answer_terms_asks_only_the_rows_its_input_terms_keep(
        tmp_path: Path, fake: FakeProvider, engine: str) -> None:
    lf = source(tmp_path, 300).llm.predict(engine, "m", "{{t}}", "y", batch_rows=64)  # type: ignore[attr-defined]
    kept = lf.filter((pl.col("id") < 3) & pl.col("y").is_not_null() & (pl.col("id") != 1)).select("id").collect()
    assert kept["id"].to_list() == [0, 2]
    assert sorted(r.prompt for r in fake.chat_requests) == ["r0", "r2"]
    # A disjunction cannot be split: every row is asked, and the answer decides.
    either = lf.filter((pl.col("id") < 3) | pl.col("y").str.ends_with(": r249")).select("id").collect()
    assert either["id"].to_list() == [0, 1, 2, 249]


def test_predict_on_a_lazy_frame_is_lazy(engine: str, fake: FakeProvider) -> None:
    lazy = dfllm.predict(pl.LazyFrame({"t": ["good", "bad"]}), engine, "m", "sentiment {{t}}", "y")
    assert isinstance(lazy, pl.LazyFrame) and fake.requests == []
    assert lazy.collect()["y"].to_list() == ["positive", "negative"]



def test_batch_mode_answers_a_lazy_frame_by_jobs_at_collect(tmp_path: Path, fake: FakeProvider, engine: str) -> None:
    lf = source(tmp_path, 600).llm.predict(engine, "m", "say {{t}}", "y", batch_rows=128,  # type: ignore[attr-defined]
                                           mode="batch", batch_poll_s=0.01)
    assert fake.app.batches.creates == []  # lazy: nothing submitted before collect
    out = lf.collect()
    assert out["y"].to_list() == [None if i % 9 == 4 else f"m says: say r{i % 250}" for i in range(600)]
    # One job for every batch of the frame, each unique prompt once; no chat request.
    assert len(fake.app.batches.creates) == 1 and fake.chat_requests == []
    assert len(list(fake.app.batches.submitted(fake.app.batches.creates[0].batch_id))) == 250
