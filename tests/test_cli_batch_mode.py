"""``dfllm predict --mode batch``: a file's cache misses as provider batch jobs, in a real subprocess
against the fake provider's Files and Batch API on 127.0.0.1; killed, and run again."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dfllm.testing import BatchOptions, FakeProvider, fail_lines, status

from .test_cli import dfllm_cmd, env_for, expected, predict_args, read, run, table

BATCH = ("--mode", "batch", "--batch-rows", "100", "--no-progress")


def test_a_file_in_batch_mode_is_answered_by_jobs_not_chat_requests_and_written_in_order(tmp_path: Path) -> None:
    t = table(450)
    pq.write_table(t, tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    with FakeProvider(responder="echo") as fake:
        done = run(predict_args(fake, str(tmp_path / "in.parquet"), str(out), *BATCH, "--batch-poll-s", "0.01"),
                   tmp_path)
        uniques = {r["t"] for r in t.to_pylist() if r["t"] is not None}
        submitted = [line["custom_id"] for c in fake.app.batches.creates
                     for line in fake.app.batches.submitted(c.batch_id)]
        assert fake.chat_requests == []
    assert done.returncode == 0, done.stderr
    assert read(out) == expected(t)
    # This run's answers are not counted as cache hits when the write pass reads them back; the
    # file's repeats across read batches are (as online).
    assert f"35 cache hits, 1 batch job ({len(uniques):,} lines), 0 collected from earlier runs, 0 requests" \
        in done.stderr
    # One job for the whole file (five read batches), each unique prompt once.
    assert len(fake.app.batches.creates) == 1 and len(submitted) == len(set(submitted)) == len(uniques)


def test_killed_while_polling_the_same_command_attaches_to_the_job_and_pays_nothing_twice(tmp_path: Path) -> None:
    t = table(300)
    pq.write_table(t, tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    with FakeProvider(responder="echo", batch=BatchOptions(polls_to_complete=12)) as fake:
        child = subprocess.Popen(
            predict_args(fake, str(tmp_path / "in.parquet"), str(out), *BATCH, "--batch-poll-s", "0.2"),
            env=env_for(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while len(fake.app.batches.polls) < 2:
            assert time.monotonic() < deadline and child.poll() is None, "the command never polled"
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert not out.exists()
        done = run(predict_args(fake, str(tmp_path / "in.parquet"), str(out), *BATCH, "--batch-poll-s", "0.01"),
                   tmp_path)
        uploads, creates = len(fake.app.files.uploads), len(fake.app.batches.creates)
    assert done.returncode == 0, done.stderr
    assert read(out) == expected(t)
    assert uploads == 1 and creates == 1


def test_lines_failing_for_a_moment_are_sent_again_in_a_second_pass(tmp_path: Path) -> None:
    rows = 200
    t = pa.table({"id": list(range(rows)), "t": [f"row {i}" for i in range(rows)]})
    pq.write_table(t, tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    script = fail_lines(status(503), share=0.2, times=1)
    with FakeProvider(responder="echo", batch=BatchOptions(line_script=script)) as fake:
        done = run(predict_args(fake, str(tmp_path / "in.parquet"), str(out), *BATCH, "--batch-poll-s", "0.01"),
                   tmp_path)
        sizes = [len(list(fake.app.batches.submitted(c.batch_id))) for c in fake.app.batches.creates]
    assert done.returncode == 0, done.stderr
    assert pq.read_table(out).column("y").to_pylist() == [f"say row {i}" for i in range(rows)]
    assert sizes[0] == rows and 0 < sizes[1] < rows and len(sizes) == 2


def test_batch_mode_from_standard_input_is_refused_before_any_request(tmp_path: Path) -> None:
    with FakeProvider(responder="echo") as fake:
        done = run(predict_args(fake, "-", str(tmp_path / "out.parquet"), *BATCH, "--input-format", "csv"),
                   tmp_path, input="t\nhello\n")
        assert fake.app.requests == []
    assert done.returncode == 2 and "standard input can be read once" in done.stderr


def test_batches_lists_the_jobs_in_flight_and_cancels_them(tmp_path: Path) -> None:
    t = table(40)
    pq.write_table(t, tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    cache = str(tmp_path / "cache" / "responses.sqlite3")
    with FakeProvider(responder="echo", batch=BatchOptions(polls_to_complete=50)) as fake:
        late = run(predict_args(fake, str(tmp_path / "in.parquet"), str(out), *BATCH, "--batch-poll-s", "0.01",
                                "--batch-timeout-s", "0.05"), tmp_path)
        assert late.returncode == 1  # rows without answers yet: their errors say to run again
        listed = run(dfllm_cmd("batches", "--cache", cache), tmp_path)
        asked = run(dfllm_cmd("batches", "--cache", cache, "--engine", "openai", "--base-url", fake.base_url),
                    tmp_path)
        cancelled = run(dfllm_cmd("batches", "--cache", cache, "--engine", "openai", "--base-url", fake.base_url,
                                  "--cancel", "all"), tmp_path)
        refused = run(dfllm_cmd("batches", "--cache", cache, "--cancel", "all"), tmp_path)
        job_id = fake.app.batches.creates[0].batch_id
        assert fake.app.batches.cancels == [job_id]
    assert listed.returncode == 0 and listed.stdout.startswith(f"{job_id}  ") and "rows  submitted" in listed.stdout
    assert asked.returncode == 0 and "in_progress" in asked.stdout
    assert cancelled.returncode == 0 and "cancelling" in cancelled.stdout
    assert refused.returncode == 2 and "--cancel needs --engine" in refused.stderr
