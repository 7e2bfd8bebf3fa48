"""OpenAI's Batch dialect: input files within the limits, custom_id carrying the cache key, and every
field of a batch object or a result line read as untrusted (hypothesis properties)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfllm._exceptions import EngineError, ResponseFormatError
from dfllm.config.secrets import Secret
from dfllm.engines.base import Completion
from dfllm.engines.http import OpenAICompatibleEngine
from dfllm.engines.openai_batch import BatchJob, custom_id, input_files, key_of, result_line

KEY = "sk-test-batch-0123456789abcdef"
ENGINE = OpenAICompatibleEngine("http://127.0.0.1:9/v1", {"Authorization": Secret("Bearer " + KEY)})
halves = st.integers(-(2**63), 2**63 - 1)
keys = st.tuples(halves, halves)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                         max_size=4), max_leaves=20)


@given(keys)
def test_a_custom_id_carries_its_key_both_ways(key: tuple[int, int]) -> None:
    assert key_of(custom_id(key)) == key and len(custom_id(key)) == 32


@given(st.lists(st.tuples(keys, st.binary(min_size=2, max_size=300)), max_size=60, unique_by=lambda kv: kv[0]),
       st.integers(1, 10), st.integers(400, 3000))
def test_input_files_keep_every_line_in_order_within_the_limits(
        lines: list[tuple[tuple[int, int], bytes]], max_requests: int, max_bytes: int) -> None:
    bodies = [(k, json.dumps(b.hex()).encode()) for k, b in lines]
    files = list(input_files(bodies, max_requests=max_requests, max_bytes=max_bytes))
    assert [k for file_keys, _ in files for k in file_keys] == [k for k, _ in bodies]
    for file_keys, content in files:
        written = content.splitlines()
        assert len(written) == len(file_keys) <= max_requests
        assert len(content) <= max_bytes or len(file_keys) == 1  # a single line over the limit goes alone
        assert [key_of(json.loads(line)["custom_id"]) for line in written] == file_keys


@settings(max_examples=300)
@given(json_values)
def test_any_result_line_is_a_row_outcome_or_nothing_never_a_crash(payload: Any) -> None:
    for line in (json.dumps(payload).encode(), json.dumps({"custom_id": custom_id((1, 2)), "response": payload,
                                                            "error": payload}).encode()):
        found = result_line(line, ENGINE)
        assert found is None or (found[0] == (1, 2) and isinstance(found[1], (Completion, EngineError)))


@settings(max_examples=300)
@given(json_values)
def test_any_batch_object_is_read_or_refused_with_a_format_error(payload: Any) -> None:
    try:
        job = BatchJob.of(payload)
    except ResponseFormatError:
        return
    assert job.status in ("validating", "in_progress", "finalizing", "completed", "failed", "expired",
                          "cancelling", "cancelled")
    assert min(job.total, job.completed, job.failed) >= 0


def test_a_line_answered_200_is_parsed_as_an_online_answer_and_the_key_is_scrubbed() -> None:
    body = {"choices": [{"message": {"content": f"leaked {KEY}"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
    line = json.dumps({"custom_id": custom_id((5, -6)), "response": {"status_code": 200, "body": body}})
    key, outcome = result_line(line.encode(), ENGINE) or ((0, 0), None)
    assert key == (5, -6) and isinstance(outcome, Completion)
    assert KEY not in outcome.text and outcome.prompt_tokens == 3


@pytest.mark.parametrize(("error", "retryable"), [({"code": "batch_expired", "message": "expired"}, True),
                                                   ({"code": "invalid_request", "message": "bad"}, False)])
def test_a_line_error_is_sent_again_only_for_a_passing_reason(error: dict[str, str], retryable: bool) -> None:
    line = json.dumps({"custom_id": custom_id((1, 1)), "response": None, "error": error})
    _, outcome = result_line(line.encode(), ENGINE) or ((0, 0), None)
    assert isinstance(outcome, EngineError) and outcome.retryable is retryable
    assert error["code"] in str(outcome)


def test_a_batch_object_echoing_the_key_in_its_errors_shows_it_scrubbed() -> None:
    payload = {"id": "batch_1", "status": "failed",
               "errors": {"data": [{"code": "invalid", "message": f"bad key {KEY}", "line": 1}]}}
    job = BatchJob.of(payload, ENGINE.scrub)
    assert "invalid" in job.errors and KEY not in job.errors


def test_a_batch_object_whose_id_holds_the_key_is_refused_and_the_key_never_shown() -> None:
    with pytest.raises(ResponseFormatError) as caught:
        BatchJob.of({"id": f"Bearer {KEY}", "status": "in_progress"}, ENGINE.scrub)
    assert KEY not in str(caught.value)
