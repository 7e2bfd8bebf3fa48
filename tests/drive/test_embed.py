"""``embed``: a vector per row against the fake provider's /v1/embeddings on 127.0.0.1, asserted from
its records (inputs per request, each text embedded once, re-runs free, a poisoned input isolated)."""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dfllm
from dfllm._exceptions import ResponseFormatError
from dfllm.drive.embed import embed
from dfllm.engines.http import parse_embeddings
from dfllm.testing import EmbeddingOptions, FakeProvider, fake_embedding, respond
from tests.conftest import KEY


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider(api_key=KEY, embeddings=EmbeddingOptions(dimension=16)) as server:
        dfllm.create_engine("e", "openai", api_key=KEY, base_url=server.base_url)
        yield server


def vectors(column: pa.Array) -> list[list[float] | None]:
    return [None if v is None else [float(x) for x in v] for v in column.to_pylist()]


def test_a_pandas_frame_gets_one_arrow_vector_column_each_text_embedded_once(fake: FakeProvider) -> None:
    texts = [f"product {i % 40}" for i in range(100)] + [None]
    out = embed(pd.DataFrame({"name": texts}), "e", "text-embedding-3-small", "name", "vec", embed_batch_size=16)
    assert out["vec"].dtype == pd.ArrowDtype(pa.list_(pa.float32(), 16))
    got = vectors(pa.array(out["vec"].array))
    assert got[-1] is None
    for text, vector in zip(texts[:-1], got[:-1], strict=True):
        assert text is not None and vector is not None
        assert np.allclose(vector, fake_embedding(text, 16), atol=1e-6)
    sizes = [len(r.inputs) for r in fake.embedding_requests]
    assert sum(sizes) == 40 and max(sizes) == 16  # 40 unique texts, 16 a request
    again = embed(pd.DataFrame({"name": texts}), "e", "text-embedding-3-small", "name", "vec")
    assert len(fake.embedding_requests) == len(sizes) and again["vec"].equals(out["vec"])  # a re-run is free


def test_a_polars_frame_gets_an_array_column_and_templates_render_the_text(fake: FakeProvider) -> None:
    df = pl.DataFrame({"brand": ["Acme", "Zeta"], "model": ["X1", "Q"]})
    out = embed(df, "e", "m", "{{brand}} {{model}}", "vec", dimensions=4)
    assert out.schema["vec"] == pl.Array(pl.Float32, 4)
    assert np.allclose(out["vec"][0].to_list(), fake_embedding("Acme X1", 4), atol=1e-6)
    assert [r.dimensions for r in fake.embedding_requests] == [4]


def test_a_poisoned_input_is_that_rows_error_and_the_rest_are_answered(fake: FakeProvider) -> None:
    texts = [f"text {i}" for i in range(20)]
    texts[13] = "bad \u0000BAD input"
    out = embed(pd.DataFrame({"t": texts}), "e", "m", "t", "vec", errors="null", embed_batch_size=20)
    assert out["vec"].isna().tolist() == [i == 13 for i in range(20)]
    assert "400" in out["vec_error"][13] and out["vec_error"].isna().sum() == 19
    assert len(fake.embedding_requests) <= 1 + 2 * 5  # halves down to the one input: log2(20) levels


def test_a_vector_of_the_wrong_length_or_not_finite_is_never_a_value(fake: FakeProvider) -> None:
    body = {"data": [{"index": 0, "embedding": [0.1, 0.2]}, {"index": 1, "embedding": [0.1]}]}
    fake.app.script = lambda request: respond(200, body) if request.path.endswith("/embeddings") else None
    out = embed(pd.DataFrame({"t": ["a", "b"]}), "e", "m", "t", "vec", errors="null", cache=False, max_retries=0)
    assert out["vec"].isna().all() and "differ in length" in out["vec_error"][0]


WRONG_TYPES = ['[1, "2", 3, 4]', '[1, true, 3, 4]', '[1, " 1e3 ", 3, 4]', "[false, false, true, true]",
               '[0.5, "NaN", 3, 4]', "[1, 2, 3, [4]]"]


def test_strings_and_booleans_in_a_vector_are_the_rows_error_never_numbers(fake: FakeProvider) -> None:
    answers = [*WRONG_TYPES, "[1, 2, 3, 4]", "[1.5, -2, 3e-3, 4]"]  # numbers, ints among floats too

    def script(request: Any) -> Any:
        if not request.path.endswith("/embeddings"):
            return None
        vector = answers[int(request.body["input"][0])]
        return respond(200, ('{"data": [{"index": 0, "embedding": ' + vector + "}]}").encode())

    fake.app.script = script
    out = embed(pd.DataFrame({"t": [str(i) for i in range(len(answers))]}), "e", "m", "t", "vec", errors="null",
                embed_batch_size=1, max_retries=0, cache=False)
    assert sorted(x for r in fake.embedding_requests for x in r.inputs) == sorted(str(i) for i in range(len(answers)))
    got = vectors(pa.array(out["vec"].array))
    for i in range(len(WRONG_TYPES)):
        assert got[i] is None and "is not a whole, finite vector" in out["vec_error"][i], (answers[i], got[i])
    assert got[-2:] == [[1.0, 2.0, 3.0, 4.0], [1.5, -2.0, pytest.approx(3e-3), 4.0]]
    assert out["vec_error"][-2:].isna().all()


@settings(max_examples=200)
@given(st.recursive(st.none() | st.booleans() | st.floats(allow_nan=True) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=16), st.integers(1, 3))
def test_any_embeddings_body_is_vectors_or_a_format_error(payload: Any, count: int) -> None:
    for body in (payload, {"data": payload}, {"data": [{"index": i, "embedding": payload} for i in range(count)]}):
        try:
            answer = parse_embeddings(json.dumps(body).encode(), {}, count, "http://127.0.0.1")
        except ResponseFormatError:
            continue
        assert answer.values is not None and len(answer.values) == count
        for vector in answer.values:
            assert np.isfinite(np.frombuffer(vector, dtype="<f4")).all()


def test_embed_refuses_what_shapes_an_answer_before_any_request(fake: FakeProvider) -> None:
    with pytest.raises(dfllm.ConfigurationError, match="embed makes vectors, not answers: system, choices"):
        embed(pd.DataFrame({"t": ["a"]}), "e", "m", "t", "vec", system="x", choices=["a", "b"])
    assert fake.embedding_requests == []


def test_the_accessor_and_a_lazy_frame_embed_and_a_lazy_frame_needs_dimensions(
        fake: FakeProvider, tmp_path: Any) -> None:
    df = pl.DataFrame({"t": ["a", "b", "a"]})
    eager = df.llm.embed("e", "m", "t", "vec")  # type: ignore[attr-defined]
    assert eager.schema["vec"] == pl.Array(pl.Float32, 16)
    df.write_parquet(tmp_path / "in.parquet")
    lazy = pl.scan_parquet(tmp_path / "in.parquet").llm.embed("e", "m", "t", "vec", dimensions=4)  # type: ignore[attr-defined]
    assert lazy.collect_schema()["vec"] == pl.Array(pl.Float32, 4) and len(fake.embedding_requests) == 1
    assert np.allclose(lazy.collect()["vec"][1].to_list(), fake_embedding("b", 4), atol=1e-6)
    with pytest.raises(dfllm.ParameterError, match="needs dimensions="):
        pl.scan_parquet(tmp_path / "in.parquet").llm.embed("e", "m", "t", "vec")  # type: ignore[attr-defined]


def test_the_local_engine_embeds_with_the_bundled_model_near_duplicates_nearer(tmp_path: Any) -> None:
    texts = ["red apple", "a red apple", "interest rates of a savings account"]
    out = embed(pd.DataFrame({"t": texts}), "local", None, "t", "vec", cache=tmp_path / "c.sqlite3")
    vectors = np.array(pa.array(out["vec"].array).to_pylist(), dtype=np.float32)
    assert vectors.shape == (3, 576)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert unit[0] @ unit[1] > unit[0] @ unit[2]  # weakly: a chat model's pooled states, not a search model
    stats = dfllm.RunStats()
    embed(pd.DataFrame({"t": texts}), "local", None, "t", "vec", cache=tmp_path / "c.sqlite3", stats=stats)
    assert stats.cache_hits == 3 and stats.requests == 0



def test_the_local_engine_embeds_a_long_text_whole_and_refuses_one_over_its_limit(tmp_path: Any) -> None:
    """Texts past llama.cpp's default batch (512 tokens) that differ only at the end get different
    vectors (they were cut at 512, so equal); a text over the limit is its row's error, named, and
    the other rows of its request still get theirs, even when two such texts start alike and are as
    long (their refusals read the same, and a request whose halves are refused alike is taken for
    a bad request as a whole)."""
    common = "The quick brown fox jumps over the lazy dog. " * 52  # about 530 tokens
    texts = ["word " * 2100 + "a", common + "It was a sunny day.", "word " * 2100 + "b", common + "Then it burned."]
    out = embed(pd.DataFrame({"t": texts}), "local", None, "t", "vec", cache=tmp_path / "c.sqlite3", errors="null")
    assert out["vec"].isna().tolist() == [True, False, True, False]
    vectors = pa.array(out["vec"].array).to_pylist()
    assert not np.allclose(vectors[1], vectors[3])
    for error in out["vec_error"][[0, 2]]:
        assert "at most 2,048 tokens" in error and "'word word word" in error and "is 2,101" in error, error
    assert out["vec_error"][[1, 3]].isna().all()


def test_an_answer_of_many_long_vectors_is_read_past_the_chat_answers_cap() -> None:
    # 700 vectors of 3,072 numbers in base64 are 11 MiB, over the 8 MiB a chat answer may take: they
    # were paid for and then refused as a misbehaving server.
    with FakeProvider(api_key=KEY, embeddings=EmbeddingOptions(dimension=3072)) as fake:
        dfllm.create_engine("big", "openai", api_key=KEY, base_url=fake.base_url)
        out = embed(pd.DataFrame({"t": [f"text {i}" for i in range(700)]}), "big", "m", "t", "vec",
                    embed_batch_size=700, cache=False)
        assert len(fake.embedding_requests) == 1
    assert out["vec"].notna().all()


def test_a_request_refused_for_itself_is_not_split_down_to_every_input(fake: FakeProvider) -> None:
    # dimensions=64 on a 16-number model: every half is refused in the same words as the whole.
    texts = [f"text {i}" for i in range(200)]
    out = embed(pd.DataFrame({"t": texts}), "e", "m", "t", "vec", dimensions=64, errors="null", embed_batch_size=100)
    assert out["vec"].isna().all() and "dimensions" in out["vec_error"][0]
    assert len(fake.embedding_requests) == 2 * 3  # each group and its two halves; ~400 before


# -- the hostile-answer property, through the executor ----------------------------------------

DIM = 4
BodyFor = Callable[[int], str]  # the /v1/embeddings body that answers row i's one input


def _expected(row: int) -> list[float]:
    return [0.5 + row, -1.0, 0.25, 2.0]


def _answer_body(embedding: Any) -> str:
    return json.dumps({"object": "list", "model": "m", "usage": {"prompt_tokens": 1, "total_tokens": 1},
                       "data": [{"object": "embedding", "index": 0, "embedding": embedding}]})


def _as_floats(row: int) -> str:
    return _answer_body(_expected(row))


def _as_base64(row: int) -> str:
    return _answer_body(base64.b64encode(np.array(_expected(row), "<f4").tobytes()).decode())


def _always(text: str) -> BodyFor:
    return lambda _row: text


def _embedding_is(raw: str) -> str:
    return '{"data": [{"index": 0, "embedding": ' + raw + "}]}"


_WRONG_TYPES = ["[[1], [2], [3], [4]]", '[1, "2", 3, 4]', "[1, true, 3, 4]", "[false, false, true, true]",
                "[1, 2, 3, null]"]
_NOT_A_VECTOR = ['"x"', "null", "true", "{}", '"\\ud800"', '["\\udc00", 1, 2, 3]',
                 '"AAAA\\ud800"', '"!!!notbase64"', json.dumps(base64.b64encode(b"\x00" * 15).decode()),
                 json.dumps(base64.b64encode(np.array([1, 2, 3, np.nan], "<f4").tobytes()).decode())]
_NOT_AN_ANSWER = ['{"data": {}}', '{"data": null}', '{"data": [{"index": 5, "embedding": [1, 2, 3, 4]}]}',
                  '{"data": [{"index": 0, "embedding": [1, 2, 3, 4]}, {"index": 0, "embedding": [1, 2, 3, 4]}]}',
                  "[]", "42", _as_floats(0)[:40], '{"data": [{"index": 0, "embedding": "\ud800"}]}']
HOSTILE: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999"]).map(lambda v: _embedding_is(f"[1.0, 2.0, 3.0, {v}]")),
    st.integers(1, 10).filter(lambda n: n != DIM).map(lambda n: _embedding_is(json.dumps([1.0] * n))),
    st.integers(1, 6000).map(lambda depth: _embedding_is("[" * depth + "]" * depth)),  # deep
    st.integers(1, 6000).map(lambda depth: "[" * depth),  # deep and truncated
    st.integers(100_000, 1_000_000).map(lambda n: _embedding_is("[" + "1.5," * n + "1]")),  # large
    st.text(max_size=30),  # prose
    st.sampled_from(_NOT_A_VECTOR).map(_embedding_is),
    st.sampled_from(_WRONG_TYPES).map(_embedding_is),
    st.sampled_from(_NOT_AN_ANSWER),
)
# (whether the answer is a valid vector, the body answering row i)
ANSWERS: st.SearchStrategy[tuple[bool, BodyFor]] = st.one_of(
    st.sampled_from([_as_floats, _as_base64]).map(lambda body_for: (True, body_for)),
    HOSTILE.map(lambda text: (False, _always(text))),
)


def test_hostile_embedding_answers_end_as_a_vector_or_a_row_error_and_only_failures_are_re_sent(
        tmp_path: Any) -> None:
    bodies: dict[str, str] = {}  # input text -> the body the server answers it with

    def script(request: Any) -> Any:
        if not request.path.endswith("/embeddings"):
            return None
        return respond(200, bodies[request.body["input"][0]].encode("utf-8", "surrogatepass"))

    caches = itertools.count()
    with FakeProvider(api_key=KEY, script=script) as fake:  # one server for every example
        dfllm.create_engine("hostile", "openai", api_key=KEY, base_url=fake.base_url)

        def run(texts: list[str], cache: Any) -> tuple[list[list[float] | None], list[str | None], list[str]]:
            before = len(fake.embedding_requests)
            out = embed(pd.DataFrame({"t": texts}), "hostile", "m", "t", "vec", errors="null", embed_batch_size=1,
                        dimensions=DIM, max_retries=0, timeout_s=20, cache=cache)
            errors = [None if pd.isna(e) else str(e) for e in out["vec_error"]]
            sent = [text for r in fake.embedding_requests[before:] for text in r.inputs]
            return vectors(pa.array(out["vec"].array)), errors, sent

        @settings(max_examples=40, deadline=None)
        @given(st.lists(ANSWERS, min_size=1, max_size=5))
        def check(drawn: list[tuple[bool, BodyFor]]) -> None:
            texts = [f"text {i}" for i in range(len(drawn))]
            bodies.clear()
            bodies.update({text: body_for(i) for i, (text, (_, body_for)) in enumerate(zip(texts, drawn, strict=True))})
            cache = tmp_path / f"{next(caches)}.sqlite"
            got, errors, sent = run(texts, cache)
            assert sorted(sent) == sorted(texts)  # each row asked once (max_retries=0)
            for i, (valid, _) in enumerate(drawn):
                assert (got[i] is None) != (errors[i] is None), (bodies[texts[i]][:80], got[i], errors[i])
                if valid:
                    assert got[i] == pytest.approx(_expected(i)) and errors[i] is None
                else:
                    assert got[i] is None, (bodies[texts[i]][:80], got[i])
            again, errors_again, sent_again = run(texts, cache)
            # Every valid answer was cached: a re-run asks only for the rows that failed, and the
            # server's records show it.
            assert sorted(sent_again) == sorted(t for t, (valid, _) in zip(texts, drawn, strict=True) if not valid)
            assert again == got and [e is None for e in errors_again] == [e is None for e in errors]

        check()
