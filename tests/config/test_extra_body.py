"""``extra_body``: sent as given, but never replacing a field dfllm sets or a checked option, and plain JSON only."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

import dfllm
from dfllm.testing import FakeProvider


@pytest.mark.parametrize("field", ["model", "messages", "stream", "n"])
def test_extra_body_may_not_replace_fields_dfllm_sets(engine: str, fake: FakeProvider, field: str) -> None:
    with pytest.raises(dfllm.ParameterError, match=f"extra_body may not set '{field}'"):
        pd.DataFrame({"t": ["x"]}).llm.predict(engine, "m", "{{t}}", "y", extra_body={field: "other"})
    assert fake.requests == []



def test_extra_body_fields_are_sent(engine: str, fake: FakeProvider) -> None:
    pd.DataFrame({"t": ["x"]}).llm.predict(engine, "m", "{{t}}", "y", extra_body={"guided_choice": ["a"]})
    assert fake.chat_requests[0].body["guided_choice"] == ["a"]



@pytest.mark.parametrize("extra", [{"x": float("nan")}, {"x": {1, 2}}, {"x": float("inf")}])
def test_extra_body_that_is_not_strict_json_is_refused_before_any_request(
        engine: str, fake: FakeProvider, extra: dict[str, Any]) -> None:
    with pytest.raises(dfllm.ParameterError, match="extra_body must be plain JSON"):
        pd.DataFrame({"t": ["x"]}).llm.predict(engine, "m", "{{t}}", "y", extra_body=extra)
    assert fake.requests == []



def test_extra_body_may_not_bypass_a_checked_option(engine: str, fake: FakeProvider) -> None:
    with pytest.raises(dfllm.ParameterError, match=r"pass temperature=\.\.\. as an option"):
        pd.DataFrame({"t": ["x"]}).llm.predict(engine, "m", "{{t}}", "y", extra_body={"temperature": 99})
    assert fake.requests == []

