"""``dfllm.submit``: batch jobs sent without waiting, and the handle a notebook keeps; against the
fake provider's Files and Batch API on 127.0.0.1, asserted from its records."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd

import dfllm
from dfllm.testing import BatchOptions, FakeProvider
from tests.conftest import KEY

ROOT = Path(__file__).resolve().parents[2]


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"row {i}" for i in range(n)]})


def test_submit_returns_before_the_job_ends_and_result_collects_it_without_a_second_job(tmp_path: Path) -> None:
    cache = tmp_path / "c.sqlite3"
    with FakeProvider(api_key=KEY, responder="echo", batch=BatchOptions(polls_to_complete=4)) as fake:
        dfllm.create_engine("b", "openai", api_key=KEY, base_url=fake.base_url)
        handle = dfllm.submit(frame(5), "b", "m", "Echo {{text}}", "answer", cache=cache, batch_poll_s=0.01)
        assert len(handle.job_ids) == 1 and fake.app.batches.polls == []  # submitted, not waited for
        [first] = handle.status()
        assert first.status in ("validating", "in_progress") and first.id == handle.job_ids[0]
        out = handle.result()
        assert len(fake.app.batches.creates) == 1 and len(fake.app.files.uploads) == 1
        assert handle.done()
    assert out["answer"].tolist() == [f"Echo row {i}" for i in range(5)]


def test_a_job_submitted_by_one_process_is_collected_by_another(tmp_path: Path) -> None:
    cache = tmp_path / "c.sqlite3"
    with FakeProvider(api_key=KEY, responder="echo") as fake:
        child = textwrap.dedent(f"""
            import pandas as pd, dfllm
            dfllm.create_engine("b", "openai", api_key={KEY!r}, base_url={fake.base_url!r})
            df = pd.DataFrame({{"text": [f"row {{i}}" for i in range(6)]}})
            print(dfllm.submit(df, "b", "m", "Echo {{{{text}}}}", "answer", cache={str(cache)!r}).job_ids)
        """)
        done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120,
                              env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
        assert done.returncode == 0, done.stderr
        dfllm.create_engine("b", "openai", api_key=KEY, base_url=fake.base_url)
        out = dfllm.predict(frame(6), "b", "m", "Echo {{text}}", "answer", cache=cache, mode="batch",
                            batch_poll_s=0.01)
        assert len(fake.app.batches.creates) == 1 and fake.chat_requests == []
    assert out["answer"].tolist() == [f"Echo row {i}" for i in range(6)]
    assert dfllm.last_run().batch_jobs_attached == 1  # type: ignore[union-attr]


def test_cancel_asks_the_provider_and_the_next_result_sends_only_what_it_left(tmp_path: Path) -> None:
    cache = tmp_path / "c.sqlite3"
    with FakeProvider(api_key=KEY, responder="echo", batch=BatchOptions(polls_to_complete=6)) as fake:
        dfllm.create_engine("b", "openai", api_key=KEY, base_url=fake.base_url)
        handle = dfllm.submit(frame(4), "b", "m", "Echo {{text}}", "answer", cache=cache, batch_poll_s=0.01)
        [cancelling] = handle.cancel()
        assert cancelling.status in ("cancelling", "cancelled") and fake.app.batches.cancels == handle.job_ids
        out = handle.result()
        resent = [len(list(fake.app.batches.submitted(c.batch_id))) for c in fake.app.batches.creates]
    assert out["answer"].tolist() == [f"Echo row {i}" for i in range(4)]
    assert resent[0] == 4 and len(resent) == 2 and resent[1] <= 4


def test_submit_with_everything_cached_sends_nothing(tmp_path: Path) -> None:
    cache = tmp_path / "c.sqlite3"
    with FakeProvider(api_key=KEY, responder="echo") as fake:
        dfllm.create_engine("b", "openai", api_key=KEY, base_url=fake.base_url)
        dfllm.predict(frame(3), "b", "m", "Echo {{text}}", "answer", cache=cache)
        handle = dfllm.submit(frame(3), "b", "m", "Echo {{text}}", "answer", cache=cache)
        assert handle.job_ids == [] and fake.app.files.uploads == []
        assert handle.result()["answer"].tolist() == ["Echo row 0", "Echo row 1", "Echo row 2"]
