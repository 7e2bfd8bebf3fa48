"""Fine-tuning over loopback: validation before upload, files, the job's life, the model id."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable

import pandas as pd
import pytest

import dfllm
from dfllm._finetune import chats_from_frame
from dfllm.engines.providers import PROVIDERS
from dfllm.testing import Behaviour, FakeProvider, RecordedRequest, respond, status

BASE = "mistralai/Mistral-7B-Instruct-v0.1"


def chat_rows(n: int) -> pd.DataFrame:
    rows = []
    for i in range(n):
        rows += [("system", "You classify sentiment."), ("user", f"Text {i}: I love it"), ("assistant", "positive")]
    return pd.DataFrame(rows, columns=["role", "content"])


def no_sleep(_: float) -> None:
    pass


def fail_first(method: str, path: str, behaviours: list[Behaviour]) -> Callable[[RecordedRequest], Behaviour | None]:
    """A fine-tuning script: the first requests to ``method path`` get these behaviours, in order."""
    upcoming = iter(behaviours)

    def script(request: RecordedRequest) -> Behaviour | None:
        return next(upcoming, None) if (request.method, request.path) == (method, path) else None

    return script


def test_finetune_uploads_jsonl_runs_the_job_and_returns_a_usable_model() -> None:
    with FakeProvider(models=(BASE,)) as fake:
        dfllm.create_engine("any", "anyscale_endpoints", api_key="k", base_url=fake.base_url)
        model_id = dfllm.finetune("any", BASE, chat_rows(30), n_epochs=3, context_length=512, suffix="sent",
                                  sleep=no_sleep)
        assert model_id == f"ft:{BASE}:sent:ftjob-fake-1"
        routes = fake.app.finetune
        train = [json.loads(line) for line in routes.file_contents["file-fake-1"].decode().splitlines()]
        valid = [json.loads(line) for line in routes.file_contents["file-fake-2"].decode().splitlines()]
        assert (len(train), len(valid)) == (27, 3)  # 10% validation, shuffled with the seed
        assert train[0]["messages"][0] == {"role": "system", "content": "You classify sentiment."}
        job = routes.jobs["ftjob-fake-1"]
        assert job["hyperparameters"] == {"n_epochs": 3, "context_length": 512}
        assert (job["training_file"], job["validation_file"]) == ("file-fake-1", "file-fake-2")
        polls = [r for r in fake.requests if r.path == "/v1/fine_tuning/jobs/ftjob-fake-1"]
        assert len(polls) == 3  # queued -> running -> succeeded
        assert {r.headers["Authorization"] for r in fake.requests} == {"Bearer k"}
        out = pd.DataFrame({"text": ["I love it"]}).llm.predict("any", model_id, "sentiment: {{text}}", "y")
        assert fake.chat_requests[-1].body["model"] == model_id and out["y"].iloc[0] == "positive"


def test_the_split_is_seeded() -> None:
    def validation_file(seed: int) -> bytes:
        with FakeProvider(models=(BASE,)) as fake:
            dfllm.create_engine("any", "anyscale_endpoints", api_key="k", base_url=fake.base_url)
            df = chat_rows(30)
            df.loc[df.role == "assistant", "content"] = [f"label {i}" for i in range(30)]
            dfllm.finetune("any", BASE, df, seed=seed, sleep=no_sleep)
            return fake.app.finetune.file_contents["file-fake-2"]

    assert validation_file(1) == validation_file(1) != validation_file(2)


def test_every_data_problem_is_reported_with_chat_and_message_numbers() -> None:
    df = pd.DataFrame({
        "role": ["system", "user", "assistant", "user", "assistant", "bot", "user", "user", "system", "user"],
        "content": ["s", "q", "a", "q", None, "x", "q", "q", "s", "q"],
        "chat_id": [1, 1, 1, 2, 2, 2, 3, 3, 4, 4],
    })
    with pytest.raises(dfllm.FineTuneError) as info:
        chats_from_frame(df)
    message = str(info.value)
    assert "chat 2, message 2 (row 4): content is missing (null)" in message
    assert "chat 2, message 3 (row 5): role 'bot' is not one of ['system', 'user', 'assistant']" in message
    assert "chat 3: needs at least one user and one assistant message" in message
    assert "chat 3, message 2: expected assistant" in message
    assert "chat 4: needs at least one user and one assistant message" in message


def test_chats_split_at_system_rows_without_chat_id() -> None:
    chats = chats_from_frame(chat_rows(3))
    assert len(chats) == 3 and all(len(c) == 3 for c in chats)


def test_too_small_a_dataset_is_refused_before_upload() -> None:
    with FakeProvider(models=(BASE,)) as fake:
        dfllm.create_engine("any", "anyscale_endpoints", api_key="k", base_url=fake.base_url)
        with pytest.raises(dfllm.FineTuneError, match="at least 10 chats, got 4"):
            dfllm.finetune("any", BASE, chat_rows(4))
        assert fake.requests == []


def test_unlisted_base_model_warns_then_the_providers_error_surfaces() -> None:
    with FakeProvider(models=(BASE,)) as fake:
        dfllm.create_engine("any", "anyscale_endpoints", api_key="k", base_url=fake.base_url)
        with pytest.warns(UserWarning, match="not in anyscale_endpoints's list of fine-tunable models"), \
                pytest.raises(dfllm.FineTuneError, match=r"HTTP 404.*not available for fine-tuning"):
            dfllm.finetune("any", "tiny/unknown-model", chat_rows(12), sleep=no_sleep)


def test_a_failed_job_raises_with_the_providers_reason() -> None:
    with FakeProvider(models=(BASE,)) as fake:
        fake.app.finetune.fail_models.add(BASE)
        dfllm.create_engine("any", "anyscale_endpoints", api_key="k", base_url=fake.base_url)
        with pytest.raises(dfllm.FineTuneError, match="ended failed: Scripted fine-tune failure"):
            dfllm.finetune("any", BASE, chat_rows(12), sleep=no_sleep)


def test_accessor_form_and_providers_that_cannot_finetune() -> None:
    with FakeProvider(models=("gpt-4o-mini-2024-07-18",)) as fake:
        dfllm.create_engine("oa", "openai", api_key="k", base_url=fake.base_url)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert chat_rows(10).llm.finetune("oa", "gpt-4o-mini-2024-07-18", sleep=no_sleep).startswith("ft:")
        dfllm.create_engine("pk", "portkey", api_key="k", base_url=fake.base_url)
        with pytest.raises(dfllm.ParameterError, match="needs an 'anyscale_endpoints' or 'openai' engine"):
            dfllm.finetune("pk", "x", chat_rows(10))


def test_files_and_jobs_go_through_the_chat_engines_http_with_the_providers_auth_header() -> None:
    for provider, base in (("anyscale_endpoints", BASE), ("openai", "gpt-4o-mini-2024-07-18")):
        with FakeProvider(models=(base,), api_key="sk-ft-key") as fake:
            dfllm.create_engine("e", provider, api_key="sk-ft-key", base_url=fake.base_url)
            model_id = dfllm.finetune("e", base, chat_rows(12), sleep=no_sleep)
            dfllm.predict(pd.DataFrame({"text": ["x"]}), "e", model_id, "{{text}}", "y")
            chat, tuning = fake.chat_requests[-1], [r for r in fake.requests if "/chat/" not in r.path]
            assert [(r.method, r.path) for r in tuning] == [
                ("POST", "/v1/files"), ("POST", "/v1/files"), ("POST", "/v1/fine_tuning/jobs"),
                *[("GET", "/v1/fine_tuning/jobs/ftjob-fake-1")] * 3,
            ]
            definition = PROVIDERS[provider]
            for request in tuning:
                assert request.headers[definition.auth_header] == definition.auth_prefix + "sk-ft-key"
                # One HTTP stack: fine-tuning requests look like chat requests, not like another client's.
                assert request.headers["User-Agent"] == chat.headers["User-Agent"]
            assert tuning[0].headers["Content-Type"].startswith("multipart/form-data; boundary=")
            files = fake.app.finetune.files
            assert [(f["filename"], f["purpose"]) for f in files.values()] == [
                ("train.jsonl", "fine-tune"), ("validation.jsonl", "fine-tune")]


def test_a_transient_503_while_polling_is_retried_after_the_servers_wait_and_the_job_completes() -> None:
    waits: list[float] = []
    with FakeProvider(models=(BASE,)) as fake:
        fake.app.finetune.script = fail_first("GET", "/v1/fine_tuning/jobs/ftjob-fake-1",
                                              [status(503, retry_after_ms=10), status(502)])
        dfllm.create_engine("any", "anyscale_endpoints", api_key="k", base_url=fake.base_url)
        assert dfllm.finetune("any", BASE, chat_rows(12), sleep=waits.append) == f"ft:{BASE}:ftjob-fake-1"
        polls = [r for r in fake.requests if r.path == "/v1/fine_tuning/jobs/ftjob-fake-1"]
        assert len(polls) == 5  # two refused, then queued -> running -> succeeded
    # The poll interval, the server's Retry-After, then runtime.retry's backoff (attempt 1: [0.5, 1)).
    assert waits[:2] == [2.0, 0.01] and 0.5 <= waits[2] < 1.0 and waits[3:] == [3.0, 4.5]


def test_polling_that_keeps_failing_stops_within_the_engines_max_retries_and_says_the_job_runs_on() -> None:
    waits: list[float] = []
    with FakeProvider(models=(BASE,)) as fake:
        fake.app.finetune.script = fail_first("GET", "/v1/fine_tuning/jobs/ftjob-fake-1", [status(500)] * 10)
        dfllm.create_engine("any", "anyscale_endpoints", api_key="k", base_url=fake.base_url, max_retries=2)
        with pytest.raises(dfllm.FineTuneError, match=r"HTTP 500.*poll job ftjob-fake-1 later"):
            dfllm.finetune("any", BASE, chat_rows(12), sleep=waits.append)
        assert len([r for r in fake.requests if r.path == "/v1/fine_tuning/jobs/ftjob-fake-1"]) == 3
    assert len(waits) == 3  # one poll interval, two backoffs


def test_creating_the_job_is_retried_only_when_the_server_says_it_did_not_take_it() -> None:
    jobs = "/v1/fine_tuning/jobs"
    with FakeProvider(models=(BASE,)) as fake:
        fake.app.finetune.script = fail_first("POST", jobs, [status(429, retry_after=1), status(503, retry_after=2)])
        dfllm.create_engine("any", "anyscale_endpoints", api_key="k", base_url=fake.base_url)
        waits: list[float] = []
        dfllm.finetune("any", BASE, chat_rows(12), sleep=waits.append)
        assert len([r for r in fake.requests if r.path == jobs]) == 3
        assert list(fake.app.finetune.jobs) == ["ftjob-fake-1"]
        assert waits[:2] == [1.0, 2.0]
    for refusal in (status(500), status(503), status(502, retry_after=1)):
        with FakeProvider(models=(BASE,)) as fake:
            fake.app.finetune.script = fail_first("POST", jobs, [refusal])
            dfllm.create_engine("any", "anyscale_endpoints", api_key="k", base_url=fake.base_url)
            with pytest.raises(dfllm.FineTuneError, match="may have been created anyway"):
                dfllm.finetune("any", BASE, chat_rows(12), sleep=no_sleep)
            assert len([r for r in fake.requests if r.path == jobs]) == 1


def test_a_refused_key_stops_at_once_and_no_form_of_the_key_is_shown() -> None:
    key = "sk-wrong-5f3a9c1e7b2d4f6a8c0e"
    echoed = {"error": {"message": f"Incorrect API key provided: {key} (Bearer {key})", "type": "invalid"}}
    for code, where in ((401, "/v1/files"), (403, "/v1/fine_tuning/jobs/ftjob-fake-1")):
        with FakeProvider(models=(BASE,)) as fake:
            fake.app.finetune.script = fail_first("POST" if where == "/v1/files" else "GET", where,
                                                  [respond(code, echoed)] * 5)
            dfllm.create_engine("any", "anyscale_endpoints", api_key=key, base_url=fake.base_url)
            with pytest.raises(dfllm.AuthenticationError) as info:
                dfllm.finetune("any", BASE, chat_rows(12), sleep=no_sleep)
            assert len([r for r in fake.requests if r.path == where]) == 1
        message = f"{info.value} {info.value!r}"
        assert f"HTTP {code}: Incorrect API key provided" in message and info.value.status == code
        assert "5f3a9c1e7b2d4f6a8c0e" not in message


def test_a_refusal_that_echoes_the_key_is_quoted_scrubbed() -> None:
    key = "sk-echoed-1b2c3d4e5f60718293a4"
    echoed = {"error": {"message": f"Model not allowed for key {key}", "type": "invalid_request_error"}}
    with FakeProvider(models=(BASE,)) as fake:
        fake.app.finetune.script = fail_first("POST", "/v1/fine_tuning/jobs", [respond(400, echoed)])
        dfllm.create_engine("any", "anyscale_endpoints", api_key=key, base_url=fake.base_url)
        with pytest.raises(dfllm.FineTuneError, match="HTTP 400: Model not allowed for key") as info:
            dfllm.finetune("any", BASE, chat_rows(12), sleep=no_sleep)
    assert "1b2c3d4e5f60718293a4" not in f"{info.value} {info.value!r} {info.value.__cause__!r}"


class StepClock:
    """Time that passes only when slept: ``sleep`` advances ``now`` and keeps what it was asked."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_job_that_never_ends_times_out_on_the_injected_clock() -> None:
    job = "/v1/fine_tuning/jobs/ftjob-fake-1"
    polls = 0

    def forever_running(request: RecordedRequest) -> Behaviour | None:
        nonlocal polls
        if (request.method, request.path) != ("GET", job):
            return None
        polls += 1  # ends after 50 polls, so a loop timed on the real clock fails rather than hangs
        return respond(200, {"id": "ftjob-fake-1", "status": "running" if polls <= 50 else "cancelled"})

    time = StepClock()
    with FakeProvider(models=(BASE,)) as fake:
        fake.app.finetune.script = forever_running
        dfllm.create_engine("any", "anyscale_endpoints", api_key="k", base_url=fake.base_url)
        with pytest.raises(dfllm.FineTuneError, match="still running after 100s; it keeps running"):
            dfllm.finetune("any", BASE, chat_rows(12), poll_interval_s=2, max_poll_interval_s=30, timeout_s=100,
                           sleep=time.sleep, clock=time.clock)
        # Waits of 2 s growing 1.5x to 30 s: the 9th poll comes at 124 s, past the 100 s deadline.
        assert len([r for r in fake.requests if r.path == job]) == 9
        assert time.slept == [2, 3, 4.5, 6.75, 10.125, 15.1875, 22.78125, 30, 30]
