"""The output seam is real: a kind of answer defined outside dfllm runs through the plan, the
executor (check, repair), the cache and write-back, and cache keys stay what they were."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import dfllm
from dfllm.drive.eager import make_executor
from dfllm.engines.base import Capabilities, ChatTask, Completion
from dfllm.engines.tasks import Message
from dfllm.frames import Column, ColumnType
from dfllm.outputs.base import Asked, Output
from dfllm.plan import Plan, make_plan, plan_batch, write_back
from dfllm.prompt.keys import RequestKeys
from dfllm.runtime.dispatch import RequestSpec
from dfllm.runtime.progress import RunStats
from dfllm.testing import MockEngine


class IntOutput:
    """A toy kind: the answer is a whole number, in an int column; anything else is re-asked."""

    checked = True

    def columns(self, target: str) -> list[str]:
        return [target]

    def ask(self, capabilities: Capabilities, system: str | None, params: dict[str, Any]) -> Asked:
        return Asked("Answer with a whole number only.", params)

    def key_constraints(self) -> dict[str, Any]:
        return {"choices": [], "answer": "int"}

    def check(self, completion: Completion) -> Completion | dfllm.SchemaError:
        try:
            return completion._replace(values=(int(completion.text.strip()),))
        except ValueError:
            return dfllm.SchemaError(f"not a whole number: {completion.text!r}", raw=completion.text,
                                     problem="not a whole number")

    def repair(self, completion: Completion, problem: dfllm.SchemaError) -> tuple[Message, ...] | None:
        return (Message.of_text("assistant", completion.text),
                Message.of_text("user", f"{problem.problem}. Digits only."))

    def value(self, completion: Completion) -> tuple[Any, dfllm.DfllmError | None]:
        assert completion.values is not None  # checked on arrival and on every cache read
        return completion.values[0], None

    def write(self, target: str, values: Sequence[Any]) -> dict[str, Column]:
        return {target: Column(list(values), ColumnType("int"))}

    def completion_estimate(self, count_tokens: Callable[[str], int]) -> tuple[int, str] | None:
        return None


def words_then_digits(task: ChatTask) -> str:
    """Spells the number first; gives digits once re-asked (the re-ask's turns are the output's)."""
    number = {"three": "3", "seven": "7"}[task.messages[1].text()]
    return number if task.messages[-1].text() == "not a whole number. Digits only." else f"about {number}"


def int_plan(df: pd.DataFrame, engine: MockEngine, cache: Path) -> Plan:
    """The validated call of ``predict``, with the toy output in place of the one options would give."""
    output: Output = IntOutput()
    plan = make_plan(df, engine, "m", "{{word}}", "n", {"cache": str(cache), "progress": False})
    asked = output.ask(plan.info.capabilities, plan.options.system, plan.options.params)
    keys = RequestKeys(plan.info.identity or "", "m", plan.options.system, plan.options.params,
                       output.key_constraints())
    assert isinstance(plan.spec, RequestSpec)
    spec = dataclasses.replace(plan.spec, system=asked.system, params=asked.params)
    return plan_batch(dataclasses.replace(plan, output=output, keys=keys, spec=spec), df)


def run(plan: Plan, engine: MockEngine) -> Any:
    stats = RunStats()
    outcomes = asyncio.run(make_executor(plan, engine, stats).run(plan.work))
    return write_back(plan, outcomes, stats), stats


def test_an_output_defined_outside_dfllm_is_checked_repaired_cached_and_written(tmp_path: Path) -> None:
    df = pd.DataFrame({"word": ["three", "seven", "three"]})
    engine = MockEngine(words_then_digits)
    out, stats = run(int_plan(df, engine, tmp_path / "c.sqlite"), engine)
    assert out["n"].tolist() == [3, 7, 3] and str(out["n"].dtype) == "Int64"
    # Two unique prompts, each answered in words, re-asked with the output's turns, then in digits.
    assert stats.repairs == 2 and len(engine.requests) == 4
    assert engine.requests[1].openai_messages()[-2:] == [
        {"role": "assistant", "content": "about 3"}, {"role": "user", "content": "not a whole number. Digits only."}]
    assert engine.requests[0].messages[0].text() == "Answer with a whole number only."

    again = MockEngine(words_then_digits)
    out_again, stats_again = run(int_plan(df, again, tmp_path / "c.sqlite"), again)
    assert again.requests == [] and stats_again.cache_hits == 2  # only the digits were cached
    assert out_again["n"].tolist() == [3, 7, 3]

    # The output is in the key: a text call on the same rows is not served the int call's answers.
    text = MockEngine(lambda task: "free text")
    plain = dfllm.predict(df, text, "m", "{{word}}", "n", cache=str(tmp_path / "c.sqlite"), progress=False)
    assert len(text.requests) == 2 and plain["n"].tolist() == ["free text"] * 3


@pytest.mark.parametrize(("options", "expected"), [
    # Digests computed by dfllm before output objects existed (commit 5f8b636): old caches stay valid.
    ({"system": "Be brief.", "temperature": 0.0, "max_tokens": 20}, (5081015043532465985, 8508478065716868201)),
    ({"choices": ["positive", "negative"]}, (-8742800114204178509, -6091374000356935388)),
    ({"schema": {"n": int, "label": str}}, (310572472989974828, -1095961111500791791)),
])
@pytest.mark.parametrize("capabilities", [Capabilities(), Capabilities(choices=True, json_schema=True)])
def test_cache_keys_are_the_ones_text_choices_and_schema_calls_always_had(
        options: dict[str, Any], expected: tuple[int, int], capabilities: Capabilities) -> None:
    df = pd.DataFrame({"text": ["good", "bad"]})
    plan = make_plan(df, MockEngine(capabilities=capabilities), "m", "Review: {{text}}", "t", options)
    assert plan.work[0].key == expected
