"""Answers as a hostile provider writes them: each ends as a value or its row's error, never the run's.

Whatever an answer holds (nesting thousands deep, megabytes of near-JSON, NaN, lone surrogates,
wrong types, half an object, prose), the run ends, every other row's answer is kept and cached,
and reading one answer never stalls the others' requests.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Union

import pandas as pd
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dfllm
from dfllm.config.options import Options
from dfllm.engines.base import Completion, Request
from dfllm.outputs.kinds import SchemaOutput, TextOutput
from dfllm.outputs.parse import MAX_SCHEMA_ANSWER_CHARS, AnswerParser
from dfllm.outputs.schema import normalise_schema
from dfllm.runtime.executor import Executor, RequestSpec, Work
from dfllm.runtime.progress import RunStats
from dfllm.testing import Behaviour, FakeProvider, FakeProviderProcess, MockEngine, RecordedRequest, ok
from tests.conftest import KEY


class CheckedBy(TextOutput):
    """Text answers, each checked by ``verdict`` (the executor's check, as a schema's would be)."""

    checked = True

    def __init__(self, verdict: Callable[[Completion], Completion | dfllm.SchemaError]) -> None:
        self.verdict = verdict

    def check(self, completion: Completion) -> Completion | dfllm.SchemaError:
        return self.verdict(completion)

SCHEMA = {"n": int, "x": float, "label": Literal["a", "b"], "tags": list[str]}
LABELS = ["yes", "no"]
DEEP = "[" * 3000 + "]" * 3000


def first_prompt(request: RecordedRequest) -> str:
    """The row's own prompt: the first user message (a re-ask appends others after it)."""
    messages = request.body.get("messages", []) if isinstance(request.body, dict) else []
    return next((str(m.get("content")) for m in messages if m.get("role") == "user"), "")


def rows(n: int) -> pd.DataFrame:
    return pd.DataFrame({"t": [f"row {i}" for i in range(n)]})


def row_errors(out: pd.DataFrame) -> list[str | None]:
    return [None if pd.isna(e) else str(e) for e in out["y_error"]]


# -- one answer that cannot be read ---------------------------------------------------------

def test_an_answer_nested_thousands_deep_is_its_rows_error_and_every_other_answer_is_cached() -> None:
    deep = '{"n": ' + DEEP + "}"

    def script(request: RecordedRequest) -> Behaviour | None:
        return ok(deep) if first_prompt(request) == "row 7" else None  # else a conforming object

    with FakeProvider(script=script) as fake:
        dfllm.create_engine("t", "openai", api_key=KEY, base_url=fake.base_url)
        out = dfllm.predict(rows(50), "t", "m", "{{t}}", "y", schema=SCHEMA, errors="null")
        first = Counter(first_prompt(r) for r in fake.chat_requests)
        again = dfllm.predict(rows(50), "t", "m", "{{t}}", "y", schema=SCHEMA, errors="null")
        second = Counter(first_prompt(r) for r in fake.chat_requests[sum(first.values()):])
    errors = row_errors(out)
    assert [i for i, e in enumerate(errors) if e is not None] == [7]
    assert "SchemaError" in str(errors[7]) and "nested too deeply" in str(errors[7])
    assert out["y_n"].isna().tolist() == [i == 7 for i in range(50)]
    assert first == {**{f"row {i}": 1 for i in range(50)}, "row 7": 3}  # asked, then re-asked twice
    # Every answer that fitted was cached: the re-run asks only for the row that did not.
    assert second == {"row 7": 3}
    assert again["y_n"].tolist()[:7] == out["y_n"].tolist()[:7]


def test_whatever_the_check_raises_is_that_rows_error_and_the_others_are_cached(tmp_path: Path) -> None:
    def validate(completion: Completion) -> Completion | dfllm.SchemaError:
        if completion.text == "answer to bad":
            raise RecursionError("maximum recursion depth exceeded")
        return completion._replace(values=(completion.text,))

    def run() -> tuple[list[Any], MockEngine]:
        engine = MockEngine()
        executor = Executor(engine, Options(cache=str(tmp_path / "cache.sqlite")), RunStats(), RequestSpec("m"),
                            output=CheckedBy(validate))
        work = [Work((i, i), prompt) for i, prompt in enumerate(["a", "bad", "c"])]
        return asyncio.run(executor.run(work)), engine

    outcomes, engine = run()
    assert [o.values for o in outcomes[0::2]] == [("answer to a",), ("answer to c",)]
    error = outcomes[1]
    assert isinstance(error, dfllm.SchemaError) and not error.repairable
    assert "RecursionError: maximum recursion depth exceeded" in str(error)
    assert engine.prompts == ["a", "bad", "c"]  # a check that broke is not re-asked
    _, again = run()
    assert again.prompts == ["bad"]


def _union_of_200_models() -> type[pydantic.BaseModel]:
    """A schema that pydantic takes about a microsecond a character to validate an answer against."""
    fields: list[dict[str, Any]] = [{f"f{i}": (list[int], ...)} for i in range(200)]
    shapes = tuple(pydantic.create_model(f"Shape{i}", **field) for i, field in enumerate(fields))
    union: Any = Union[shapes]  # noqa: UP007
    return pydantic.create_model("Union200", u=(union, ...))


# schema, the one huge answer (under the 8 MiB body cap), the other rows' answer
HUGE_ANSWERS: dict[str, tuple[Any, str, str]] = {
    # 4 MB, 2,000,000 errors: pydantic took 1 s to find them and 7 s to list them, twice.
    "millions of errors": ({"tags": list[str]}, json.dumps({"tags": [1] * 2_000_000}), '{"tags": ["a"]}'),
    # 7 MB, valid: about 7 s to validate.
    "valid, against a union of 200 models": (
        _union_of_200_models(), json.dumps({"u": {"f199": list(range(1_000_000))}}), '{"u": {"f0": [1]}}'),
    # 7.8 MB near-JSON, never valid, with a "{" every few characters.
    "megabytes of near-JSON": ({"n": int}, "{x, " * (7_800_000 // 4), '{"n": 1}'),
}


@pytest.mark.parametrize("case", list(HUGE_ANSWERS))
def test_a_huge_answer_is_refused_unread_and_neither_stalls_the_loop_nor_makes_a_row_be_sent_twice(case: str) -> None:
    schema, huge, fitting = HUGE_ANSWERS[case]

    def script(request: RecordedRequest) -> Behaviour:
        return ok(huge if first_prompt(request) == "row 3" else fitting)

    async def run(base_url: str) -> tuple[pd.DataFrame, float]:
        loop = asyncio.get_running_loop()
        lags = [0.0]
        done = asyncio.Event()

        async def tick() -> None:  # how late the loop wakes it: how long something held the loop
            while not done.is_set():
                before = loop.time()
                await asyncio.sleep(0.01)
                lags.append(loop.time() - before - 0.01)

        ticker = asyncio.ensure_future(tick())
        try:
            dfllm.create_engine("t", "openai", api_key=KEY, base_url=base_url)
            out = await dfllm.apredict(rows(40), "t", "m", "{{t}}", "y", schema=schema, errors="null",
                                       concurrency=8, timeout_s=3, max_repairs=0, cache=False)
        finally:
            done.set()
            await ticker
        return out, max(lags)

    with FakeProvider(latency_s=0.5, script=script) as fake:
        out, max_lag = asyncio.run(run(fake.base_url))
        sent = Counter(first_prompt(r) for r in fake.chat_requests)
    # Before the bound, the loop stood still for 7 s or more; now only for the HTTP body's decoding
    # (tens of ms), with room for a machine whose cores are all busy.
    assert max_lag < 1.0, max_lag
    # No row timed out behind the reading of the big answer and was paid for twice.
    assert sent == {f"row {i}": 1 for i in range(40)}
    errors = row_errors(out)
    assert [i for i, e in enumerate(errors) if e is not None] == [3]
    assert f"answer of {len(huge):,} characters is over the {MAX_SCHEMA_ANSWER_CHARS:,} limit" in str(errors[3])


def test_an_answer_with_thousands_of_errors_is_described_by_their_count_and_a_few() -> None:
    parse = AnswerParser(normalise_schema({"tags": list[str], "n": int}))
    with pytest.raises(dfllm.SchemaError) as caught:
        parse(json.dumps({"tags": [7] * 100_000, "n": 1}, separators=(",", ":")))
    assert caught.value.problem.startswith(
        "100,000 values do not fit, among them: tags.0: Input should be a valid string (got 7); tags.1: ")
    assert caught.value.problem.count("tags.") == 10 and caught.value.repairable
    with pytest.raises(dfllm.SchemaError) as few:  # few errors: every one, each value shown as it is
        parse('{"tags": [1, "a"], "n": "1"}')
    assert few.value.problem == ("tags.0: Input should be a valid string (got 1); "
                                 "n: Input should be a valid integer (got '1')")


def test_a_long_answer_is_checked_on_a_worker_thread_a_short_one_on_the_loop() -> None:
    checked_on: dict[int, bool] = {}

    def validate(completion: Completion) -> Completion:
        checked_on[len(completion.text)] = threading.current_thread() is threading.main_thread()
        return completion._replace(values=(len(completion.text),))

    engine = MockEngine(lambda request: "x" * (100_000 if request.messages[-1]["content"] == "long" else 10))
    executor = Executor(engine, Options(cache=False), RunStats(), RequestSpec("m"), output=CheckedBy(validate))
    outcomes = asyncio.run(executor.run([Work((0, 0), "long"), Work((1, 1), "short")]))
    assert [o.values if isinstance(o, Completion) else o for o in outcomes] == [(100_000,), (10,)]
    assert checked_on == {100_000: False, 10: True}


# -- the property ----------------------------------------------------------------------------

def _valid_objects() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({
        "n": st.integers(-(2**63), 2**63 - 1),
        "x": st.floats(allow_nan=False, allow_infinity=False),
        "label": st.sampled_from(["a", "b"]),
        "tags": st.lists(st.text(max_size=4), max_size=3),
    })


_DEPTHS = st.integers(1, 5000) | st.sampled_from([199, 201, 999, 1001, 3000])  # about the parsers' limits
_SURROGATES = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)

# (what the answer is, its text): "valid" answers fit SCHEMA, "invalid" ones never do; "any"
# answers may or may not (a lone surrogate becomes U+FFFD on the way in, prose may hold a label).
ANSWERS = st.one_of(
    _valid_objects().map(lambda o: ("valid", json.dumps(o))),
    _valid_objects().map(lambda o: ("valid", f"Sure! Here it is:\n```json\n{json.dumps(o, indent=1)}\n```")),
    _valid_objects().map(lambda o: ("invalid", json.dumps(o)[: len(json.dumps(o)) // 2])),  # truncated
    _DEPTHS.map(lambda d: ("invalid", '{"n": ' + "[" * d + "]" * d + ', "x": 1}')),  # depth
    _DEPTHS.map(lambda d: ("invalid", "Here: {" * 3 + "[" * d)),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999"]).map(
        lambda v: ("invalid", '{"n": 1, "x": ' + v + ', "label": "a", "tags": []}')),
    st.tuples(st.text(max_size=3), st.booleans()).map(  # wrong types
        lambda t: ("invalid", json.dumps({"n": t[0], "x": t[1], "label": "c", "tags": "x"}))),
    st.integers(20_000, 200_000).map(lambda k: ("invalid", '{"n": [' + "1, " * k)),  # size, truncated
    st.integers(20_000, 100_000).map(lambda k: ("invalid", "{x, " * k + "]")),  # size, near-JSON
    _SURROGATES.map(lambda s: ("any", '{"n": 1, "x": 0.5, "label": "b", "tags": [' + json.dumps(s) + "]}")),
    st.text(max_size=40).map(lambda t: ("any", t)),  # prose
    st.tuples(st.text(max_size=5), _SURROGATES).map(lambda t: ("any", "".join(t))),
)


def test_hostile_answers_end_as_values_or_row_errors_and_every_valid_answer_is_cached() -> None:
    answers: dict[str, str] = {}

    def script(request: RecordedRequest) -> Behaviour | None:
        return ok(answers[first_prompt(request)])

    caches = itertools.count()
    with FakeProvider(script=script) as fake, tempfile.TemporaryDirectory() as tmp:
        dfllm.create_engine("t", "openai", api_key=KEY, base_url=fake.base_url)

        @given(st.sampled_from(["text", "choices", "schema"]), st.lists(ANSWERS, min_size=1, max_size=5))
        @settings(max_examples=100, deadline=None)
        def check(kind: str, drawn: list[tuple[str, str]]) -> None:
            answers.clear()
            answers.update({f"row {i}": text for i, (_, text) in enumerate(drawn)})
            options: dict[str, Any] = {"schema": SCHEMA} if kind == "schema" else (
                {"choices": LABELS} if kind == "choices" else {})
            cache = str(Path(tmp) / f"{next(caches)}.sqlite")

            def run() -> tuple[pd.DataFrame, list[str]]:
                before = len(fake.chat_requests)
                out = dfllm.predict(rows(len(drawn)), "t", "m", "{{t}}", "y", errors="null", max_repairs=1,
                                    timeout_s=10, cache=cache, **options)
                return out, [first_prompt(r) for r in fake.chat_requests[before:]]

            out, _ = run()
            errors = row_errors(out)
            values = out["y_n"].tolist() if kind == "schema" else out["y"].tolist()
            for i, (what, _) in enumerate(drawn):
                # Every row is a value or a row error, never both, never neither.
                assert (errors[i] is None) != pd.isna(values[i]), (kind, what, errors[i], values[i])
                if kind == "schema" and what != "any":
                    assert (errors[i] is None) == (what == "valid"), (what, errors[i])
                if kind == "choices" and errors[i] is None:
                    assert values[i] in LABELS
                error = errors[i]
                if error is not None:
                    assert error.startswith(("SchemaError", "LabelError")), error
            if kind == "schema":
                for i, (what, text) in enumerate(drawn):
                    if what == "valid":
                        assert out["y_n"].tolist()[i] == _object_in(text)["n"]
            # Every valid answer was cached: a re-run asks again only for rows that failed (with a
            # schema, all of them: an answer that does not fit is never cached; a label is read
            # from the cached raw text, so a LabelError comes back without a request).
            again, sent = run()
            failed = {f"row {i}" for i, e in enumerate(errors) if e is not None}
            assert set(sent) == failed if kind == "schema" else set(sent) <= failed
            assert row_errors(again) == errors

        check()


def _object_in(text: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(text[text.index("{"):text.rindex("}") + 1])
    return found


@pytest.mark.parametrize("kind", ["text", "choices", "schema"])
def test_no_answer_crashes_the_executor_in_process(kind: str) -> None:
    """The same answers without a socket: what the engine hands over, the executor settles."""
    texts = ['{"n": ' + DEEP + "}", DEEP, "{x, " * 100_000, '{"n": 1, "x": NaN, "label": "a", "tags": []}', "yes"]
    def answer(request: Request) -> str:
        prompt = next(m["content"] for m in request.messages if m["role"] == "user")
        return texts[int(prompt.split()[1])]

    engine = MockEngine(answer)
    options: dict[str, Any] = {"schema": SCHEMA} if kind == "schema" else (
        {"choices": LABELS} if kind == "choices" else {})
    out = dfllm.predict(rows(len(texts)), engine, "m", "{{t}}", "y", errors="null", cache=False, **options)
    errors = row_errors(out)
    if kind == "schema":
        assert all(e is not None and e.startswith("SchemaError") for e in errors)
    elif kind == "choices":
        assert [e is None for e in errors] == [False, False, False, False, True]
    else:
        assert errors == [None] * len(texts) and out["y"].tolist() == texts


# -- many long answers ----------------------------------------------------------------------

# A union of 200 models: pydantic tries every member, holding the GIL, so a never-valid answer of
# 70,000 characters (over the length checked on a worker thread) takes about 0.2 s to validate.
def _shape(i: int) -> type[pydantic.BaseModel]:
    fields: dict[str, Any] = {f"f{i}": (list[int], ...)}
    return pydantic.create_model(f"Shape{i}", **fields)


_SHAPES: Any = Union[tuple(  # noqa: UP007  # a Union of a tuple of types: no | spelling
    _shape(i) for i in range(200))]
_UNION = pydantic.create_model("Union200", u=(_SHAPES, ...))


def test_long_answers_are_checked_one_at_a_time_with_the_loop_free_between_and_no_row_sent_twice(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The server runs in its own process, so the checks' hold on this one's GIL cannot slow it.
    spans: list[tuple[float, float]] = []  # each long check's start and end, in the order they ran
    check = SchemaOutput.check

    def timed(self: SchemaOutput, completion: Completion) -> Completion | dfllm.SchemaError:
        began = time.perf_counter()
        try:
            return check(self, completion)
        finally:
            if len(completion.text) > 65_536:
                spans.append((began, time.perf_counter()))

    monkeypatch.setattr(SchemaOutput, "check", timed)
    cells = [json.dumps({"u": {"f0": [i]}} if i % 2 else {"u": {"f999": list(range(12_000 + i))}})
             for i in range(16)]  # every other row never valid, 70,000 characters: about 0.2 s of pydantic
    with FakeProviderProcess(latency_ms=200, responder="echo") as fake:  # the answer is the row's cell
        dfllm.create_engine("t", "openai", api_key=KEY, base_url=fake.base_url, structured_outputs="prompt")
        out = dfllm.predict(pd.DataFrame({"t": cells}), "t", "m", "{{t}}", "y", schema=_UNION, errors="null",
                            concurrency=16, timeout_s=30, max_repairs=0, cache=False)
        sent = fake.stats()["requests"]
    errors = row_errors(out)
    assert [e is None for e in errors] == [i % 2 == 1 for i in range(len(cells))], errors
    assert all(str(e).startswith("SchemaError") for e in errors[::2]), errors[::2]
    assert sent == len(cells)  # no row was sent twice
    # One long check at a time (before, all eight ran at once on worker threads, each holding the
    # GIL: the loop stood still for seconds), and after each the loop had at least as long again.
    assert len(spans) == 8
    for (start, end), (next_start, _) in itertools.pairwise(spans):
        assert next_start - end >= 0.9 * (end - start), spans
