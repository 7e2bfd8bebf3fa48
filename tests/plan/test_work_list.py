"""The plan's unique work, packed: read back as the Work items it was given, keys unchanged."""

from __future__ import annotations

import pickle

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfllm.plan import make_plan
from dfllm.runtime.dispatch import Work, WorkList
from dfllm.testing import MockEngine

KEYS = st.tuples(st.integers(-(2**63), 2**63 - 1), st.integers(-(2**63), 2**63 - 1))


@given(st.lists(st.tuples(KEYS, st.text())))
def test_a_work_list_reads_back_what_was_appended(items: list[tuple[tuple[int, int], str]]) -> None:
    work = WorkList(Work(key, prompt) for key, prompt in items)
    expected = [Work(key, prompt) for key, prompt in items]
    assert len(work) == len(expected)
    assert list(work) == expected
    assert [work[i] for i in range(-len(work), len(work))] == expected + expected
    assert list(work.keys()) == [key for key, _ in items]
    assert [work.key_at(i) for i in range(-len(work), len(work))] == [w.key for w in expected + expected]
    assert list(work[1::2]) == expected[1::2]
    assert list(pickle.loads(pickle.dumps(work))) == expected
    for outside in (len(work), -len(work) - 1):
        with pytest.raises(IndexError):
            work[outside]
        with pytest.raises(IndexError):
            work.key_at(outside)


def test_a_plan_holds_its_work_packed_with_the_keys_the_cache_has_always_used() -> None:
    df = pd.DataFrame({"t": ["a", "b", "a", None]})
    plan = make_plan(df, MockEngine(), "m", "{{t}}", "y", {})
    assert isinstance(plan.work, WorkList)
    assert [w.prompt for w in plan.work] == ["a", "b"]
    assert plan.keys is not None
    assert list(plan.work.keys()) == [plan.keys.key("a"), plan.keys.key("b")]
    assert list(plan.row_work) == [0, 1, 0, -1]
