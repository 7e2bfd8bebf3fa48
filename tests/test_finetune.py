"""Fine-tuning over loopback: validation before upload, files, the job's life, the model id."""

from __future__ import annotations

import json
import warnings

import pandas as pd
import pytest

import dfllm
from dfllm._finetune import chats_from_frame
from dfllm.testing import FakeProvider

BASE = "mistralai/Mistral-7B-Instruct-v0.1"


def chat_rows(n: int) -> pd.DataFrame:
    rows = []
    for i in range(n):
        rows += [("system", "You classify sentiment."), ("user", f"Text {i}: I love it"), ("assistant", "positive")]
    return pd.DataFrame(rows, columns=["role", "content"])


def no_sleep(_: float) -> None:
    pass


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
