"""mode='batch': a call's cache misses as provider batch jobs, against the fake provider's Files and
Batch API on 127.0.0.1; asserted from its records (uploads, creates, polls, downloads)."""

from __future__ import annotations

import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Unpack

import pandas as pd
import pytest

import dfllm
from dfllm._exceptions import BatchError, ConfigurationError
from dfllm.config.options import PredictOptions
from dfllm.runtime.jobs import JobStore
from dfllm.testing import BatchOptions, FakeProvider, cancel_job, expire_job, fail_job, fail_lines, ok, on_route, status
from tests.conftest import KEY

POLL_S = 0.01  # the first wait between polls; the fake advances a job per poll, not per second


def frame(texts: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"text": texts})


def submitted_ids(fake: FakeProvider) -> list[str]:
    return [line["custom_id"] for create in fake.app.batches.creates
            for line in fake.app.batches.submitted(create.batch_id)]


def predict(fake: FakeProvider, texts: list[str], **options: Unpack[PredictOptions]) -> pd.DataFrame:
    engine = engine_for(fake)
    call: PredictOptions = {"mode": "batch", "batch_poll_s": POLL_S}
    call.update(options)
    return dfllm.predict(frame(texts), engine, "m", "Echo {{text}}", "answer", **call)


def engine_for(fake: FakeProvider) -> str:
    dfllm.create_engine("b", "openai", api_key=KEY, base_url=fake.base_url)
    return "b"


def test_a_batch_call_answers_every_row_through_one_job_and_no_chat_request() -> None:
    with FakeProvider(api_key=KEY) as fake:
        texts = ["apple", "pear", "apple", "plum"]
        out = predict(fake, texts)
        assert fake.chat_requests == []
        assert len(fake.app.files.uploads) == 1 and len(fake.app.batches.creates) == 1
        assert len(submitted_ids(fake)) == 3  # the unique prompts, each once
        online = dfllm.predict(frame(texts), "b", "m", "Echo {{text}}", "answer", cache=False)
    assert out["answer"].tolist() == online["answer"].tolist()
    stats = dfllm.last_run()
    assert stats is not None


def test_a_second_run_is_answered_from_the_cache_without_a_job() -> None:
    with FakeProvider(api_key=KEY) as fake:
        engine = engine_for(fake)
        dfllm.predict(frame(["a", "b"]), engine, "m", "Echo {{text}}", "answer", mode="batch", batch_poll_s=POLL_S)
        dfllm.predict(frame(["a", "b", "c"]), engine, "m", "Echo {{text}}", "answer", mode="batch", batch_poll_s=POLL_S)
        assert len(fake.app.batches.creates) == 2
        second = list(fake.app.batches.submitted(fake.app.batches.creates[1].batch_id))
        assert len(second) == 1 and "c" in json.dumps(second[0]["body"])


def test_lines_that_failed_for_a_transient_reason_go_in_a_second_job_and_are_answered() -> None:
    script = fail_lines(status(500), share=0.5, times=1)
    with FakeProvider(api_key=KEY, batch=BatchOptions(line_script=script)) as fake:
        out = predict(fake, [f"row {i}" for i in range(20)])
        assert out["answer"].notna().all()
        first, second = (list(fake.app.batches.submitted(c.batch_id)) for c in fake.app.batches.creates)
        assert 0 < len(second) < len(first) == 20
        assert {line["custom_id"] for line in second} <= {line["custom_id"] for line in first}
    assert dfllm.last_run().batch_resubmitted == len(second)  # type: ignore[union-attr]


def test_a_line_the_provider_refused_is_that_rows_error_and_the_others_are_kept() -> None:
    def script(custom_id: str, body: Any) -> Any:
        return status(400) if "row 3" in json.dumps(body) else None

    with FakeProvider(api_key=KEY, batch=BatchOptions(line_script=script)) as fake:
        out = predict(fake, [f"row {i}" for i in range(6)], errors="null")
        assert len(fake.app.batches.creates) == 1  # a 400 is not sent again
    assert out["answer"].isna().tolist() == [False, False, False, True, False, False]
    assert "400" in out["answer_error"][3]


@pytest.mark.parametrize("fate", [expire_job(after_lines=2), cancel_job(after_lines=2)], ids=["expired", "cancelled"])
def test_rows_an_expired_or_cancelled_job_left_are_sent_in_a_new_job(fate: Any) -> None:
    with FakeProvider(api_key=KEY, batch=BatchOptions(fates=[fate, None])) as fake:
        out = predict(fake, [f"row {i}" for i in range(5)])
        sizes = [len(list(fake.app.batches.submitted(c.batch_id))) for c in fake.app.batches.creates]
    assert out["answer"].notna().all()
    assert sizes == [5, 3]


def test_a_failed_job_gives_its_rows_the_providers_reason() -> None:
    fates = [fail_job("too_many_tasks", "Enqueued limit hit.")]
    with FakeProvider(api_key=KEY, batch=BatchOptions(fates=fates)) as fake:
        with pytest.raises(BatchError) as caught:
            predict(fake, ["a", "b"])
        assert len(fake.app.batches.creates) == 1
    assert "too_many_tasks" in str(caught.value.errors[0]) and "Enqueued limit hit" in str(caught.value.errors[0])


def test_polls_that_fail_for_a_moment_are_tried_again() -> None:
    flaky = on_route("GET", "/v1/batches/", [status(500), status(429), None, status(502)])
    with FakeProvider(api_key=KEY, batch=BatchOptions(script=flaky)) as fake:
        out = predict(fake, ["a", "b", "c"])
        refused = [p for p in fake.app.batches.polls if p.http_status != 200]
    assert out["answer"].notna().all() and len(refused) == 3


def test_a_timeout_leaves_the_job_recorded_and_the_same_call_collects_it_without_paying_again(
        tmp_path: Path) -> None:
    cache = tmp_path / "cache.sqlite3"
    with FakeProvider(api_key=KEY, batch=BatchOptions(polls_to_complete=6)) as fake:
        texts = [f"row {i}" for i in range(4)]
        late = predict(fake, texts, cache=cache, batch_timeout_s=0.02, errors="null")
        assert late["answer"].isna().all() and "run the same call again" in late["answer_error"][0]
        assert len(JobStore(cache).open_jobs()) == 1
        out = predict(fake, texts, cache=cache)
        assert len(fake.app.files.uploads) == 1 and len(fake.app.batches.creates) == 1
    assert out["answer"].notna().all()
    assert JobStore(cache).open_jobs() == []  # collected: the record is gone
    assert dfllm.last_run().batch_jobs_attached == 1  # type: ignore[union-attr]


def test_a_job_created_before_its_id_was_recorded_is_found_by_its_submission(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache.sqlite3"

    def killed(self: JobStore, submission: str, job_id: str) -> None:
        raise KeyboardInterrupt  # the process dies between creating the job and recording its id

    with FakeProvider(api_key=KEY) as fake:
        texts = ["a", "b", "c"]
        with monkeypatch.context() as patch:
            patch.setattr(JobStore, "created", killed)
            with pytest.raises(KeyboardInterrupt):
                predict(fake, texts, cache=cache)
        [record] = JobStore(cache).open_jobs()
        assert record.job_id is None
        out = predict(fake, texts, cache=cache)
        assert len(fake.app.batches.creates) == 1  # attached, not submitted again
    assert out["answer"].notna().all()


def test_an_answer_that_does_not_fit_the_schema_is_repaired_online() -> None:
    def script(custom_id: str, body: Any) -> Any:
        return ok("not json at all") if "b" in json.dumps(body["messages"]) else None

    with FakeProvider(api_key=KEY, batch=BatchOptions(line_script=script)) as fake:
        out = predict(fake, ["a", "b"], schema={"n": int})
        assert len(fake.chat_requests) == 1  # the one re-ask
    assert out["answer_n"].notna().all()
    assert dfllm.last_run().repairs == 1  # type: ignore[union-attr]


def test_an_engine_without_a_batch_api_or_a_cache_is_refused_before_any_request(tmp_path: Path) -> None:
    with FakeProvider(api_key=KEY) as fake:
        dfllm.create_engine("mdb", "mindsdb_inference", api_key=KEY, base_url=fake.base_url)
        with pytest.raises(ConfigurationError) as caught:
            dfllm.predict(frame(["a"]), "mdb", "m", "Echo {{text}}", "answer", mode="batch", cache=False)
        assert fake.app.requests == []
    message = str(caught.value)
    assert "has none" in message and "mode='online'" in message and "cache=False" in message


def test_a_compatible_server_without_batches_is_refused_before_any_upload() -> None:
    missing = on_route("GET", "/v1/batches", [status(404)])
    with FakeProvider(api_key=KEY, batch=BatchOptions(script=missing)) as fake:
        dfllm.create_engine("c", "openai_compatible", api_key=KEY, base_url=fake.base_url)
        with pytest.raises(ConfigurationError, match="has no Batch API"):
            dfllm.predict(frame(["a"]), "c", "m", "Echo {{text}}", "answer", mode="batch", batch_poll_s=POLL_S)
        assert fake.app.files.uploads == []


def test_the_key_is_in_no_uploaded_file_and_no_job_record(tmp_path: Path) -> None:
    cache = tmp_path / "cache.sqlite3"
    with FakeProvider(api_key=KEY, batch=BatchOptions(polls_to_complete=50)) as fake:
        predict(fake, ["a", "b"], cache=cache, batch_timeout_s=0.02, errors="null")
        lines = json.dumps(list(fake.app.batches.submitted(fake.app.batches.creates[0].batch_id)))
        metadata = json.dumps(fake.app.batches.creates[0].metadata)
    assert '"custom_id"' in lines and KEY not in lines and KEY not in metadata
    with sqlite3.connect(cache) as db:
        rows = db.execute("SELECT * FROM dfllm_batch_jobs").fetchall()
    assert rows and KEY not in repr(rows)


def test_the_bar_shows_the_jobs_state_and_counts_while_it_waits(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeProvider(api_key=KEY, batch=BatchOptions(polls_to_complete=4)) as fake:
        predict(fake, [f"row {i}" for i in range(10)], progress=True)
    shown = capsys.readouterr().err
    assert "1 job: in_progress" in shown and "1 job: finalizing 10/10 done, 0 failed" in shown


def test_a_job_collected_by_a_call_with_some_of_its_rows_caches_the_others_answers(tmp_path: Path) -> None:
    cache = tmp_path / "c.sqlite3"
    texts = [f"row {i}" for i in range(6)]
    with FakeProvider(api_key=KEY, batch=BatchOptions(polls_to_complete=2)) as fake:
        engine = engine_for(fake)
        dfllm.submit(frame(texts), engine, "m", "Echo {{text}}", "answer", cache=cache, batch_poll_s=POLL_S)
        predict(fake, texts[:2], cache=cache)  # a notebook looks at two rows first
        out = predict(fake, texts, cache=cache)
        assert len(fake.app.batches.creates) == 1  # the other four were paid once, and kept
    assert out["answer"].notna().all()


def test_two_runs_on_one_cache_at_once_submit_the_rows_once(tmp_path: Path) -> None:
    cache = tmp_path / "c.sqlite3"
    texts = [f"row {i}" for i in range(50)]
    with FakeProvider(api_key=KEY, batch=BatchOptions(polls_to_complete=3)) as fake:
        engine_for(fake)
        with ThreadPoolExecutor(2) as pool:
            runs = list(pool.map(lambda _: predict(fake, texts, cache=cache), range(2)))
        assert len(fake.app.batches.creates) == 1  # the second waited for the first's record, and attached
    assert all(run["answer"].notna().all() for run in runs)


def test_an_upload_or_create_that_fails_for_a_moment_is_tried_again_and_makes_one_job() -> None:
    flaky = on_route("POST", "/v1/", [status(503), None, status(502), None])  # an upload, then a create
    with FakeProvider(api_key=KEY, batch=BatchOptions(script=flaky)) as fake:
        out = predict(fake, ["a", "b", "c"])
        assert len(fake.app.batches.creates) == 1 and len(fake.app.files.uploads) == 1
    assert out["answer"].notna().all()
