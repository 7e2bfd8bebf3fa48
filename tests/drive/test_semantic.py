"""sim_join, dedup and sem_join on vector columns made with the fake provider's ``fake_embedding``."""

from __future__ import annotations

import random
import re
import tracemalloc
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dfllm
from dfllm.drive.semantic import ALL_PAIRS_LIMIT, components, top_k
from dfllm.testing import FakeProvider, fake_embedding, normalise_text

DIM = 64
KEY = "sk-test-semantic"


def vector_column(texts: Sequence[str | None], dim: int = DIM) -> pa.Array:
    """What ``dfllm.embed`` gives: a fixed_size_list<float32> column (a null text, a null vector)."""
    values = [None if t is None else fake_embedding(t, dim, similarity="words") for t in texts]
    return pa.array(values, type=pa.list_(pa.float32(), dim))


def frame(library: str, columns: dict[str, Any]) -> Any:
    """A pandas (ArrowDtype vectors) or Polars (Array(Float32, dim)) frame of these columns."""
    if library == "polars":
        return pl.DataFrame({name: pl.Series(name, values) for name, values in columns.items()})
    return pd.DataFrame({name: pd.Series(pd.arrays.ArrowExtensionArray(values))
                         if isinstance(values, pa.Array) else values for name, values in columns.items()})


def texts_of(df: Any, column: str) -> list[Any]:
    return list(df[column].to_list()) if isinstance(df, pl.DataFrame) else list(df[column].tolist())


LIBRARIES = ["pandas", "polars"]


@pytest.mark.parametrize("library", LIBRARIES)
def test_sim_join_gives_each_left_row_its_nearest_right_rows_best_first(library: str) -> None:
    left_names = ["red apple", "green pear", "blue plum"]
    right_names = ["apple red", "pear green ripe", "yellow lemon", "red apple pie", "plum"]
    left = frame(library, {"name": left_names, "v": vector_column(left_names)})
    right = frame(library, {"name": right_names, "v": vector_column(right_names), "price": [1, 2, 3, 4, 5]})
    out = dfllm.sim_join(left, right, left_on="v", right_on="v", k=2)
    assert type(out) is type(left)
    assert list(out.columns) == ["name", "v", "name_right", "v_right", "price", "similarity"]
    assert texts_of(out, "name") == ["red apple", "red apple", "green pear", "green pear", "blue plum", "blue plum"]
    assert texts_of(out, "name_right")[:4] == ["apple red", "red apple pie", "pear green ripe", "red apple pie"] or \
        texts_of(out, "name_right")[:3] == ["apple red", "red apple pie", "pear green ripe"]
    assert texts_of(out, "name_right")[4] == "plum"
    scores = np.array(texts_of(out, "similarity")).reshape(3, 2)
    assert (scores[:, 0] >= scores[:, 1]).all() and scores[0, 0] > 0.95
    expected = np.dot(fake_embedding("red apple", DIM, similarity="words"),
                      fake_embedding("apple red", DIM, similarity="words"))
    assert scores[0, 0] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("library", LIBRARIES)
def test_threshold_drops_pairs_and_null_vectors_match_nothing(library: str) -> None:
    left_names = ["red apple", None, "quartz clock"]
    right_names = ["apple red", "green pear"]
    left = frame(library, {"id": [1, 2, 3], "v": vector_column(left_names)})
    right = frame(library, {"rid": [10, 20], "w": vector_column(right_names)})
    out = dfllm.sim_join(left, right, left_on="v", right_on="w", k=5, threshold=0.9)
    assert texts_of(out, "id") == [1] and texts_of(out, "rid") == [10]
    every = dfllm.sim_join(left, right, left_on="v", right_on="w", k=5)
    assert texts_of(every, "id") == [1, 1, 3, 3]  # the null vector (id 2) has no matches; k is cut to m


def test_a_polars_right_side_joins_a_pandas_left_side_and_gives_pandas() -> None:
    left = frame("pandas", {"a": ["x"], "v": vector_column(["red apple"])})
    right = frame("polars", {"b": ["y"], "v": vector_column(["apple red"])})
    out = dfllm.sim_join(left, right, left_on="v", right_on="v", k=1)
    assert isinstance(out, pd.DataFrame) and out["b"].tolist() == ["y"]


def test_sim_join_names_every_problem_at_once_before_any_work() -> None:
    left = frame("pandas", {"name": ["a"], "v": vector_column(["a"], 8)})
    right = frame("pandas", {"title": ["b"], "w": vector_column(["b"], 16)})
    with pytest.raises(dfllm.ParameterError) as caught:
        dfllm.sim_join(left, right, left_on="v", right_on="w", k=0, threshold=1.5)
    message = str(caught.value)
    assert "k must be a whole number of at least 1" in message
    assert "threshold must be a cosine between -1 and 1" in message
    with pytest.raises(dfllm.ParameterError) as caught:
        dfllm.sim_join(left, right, left_on="vv", right_on="w")
    assert "left_on='vv' is not a column of the left frame. Did you mean 'v'?" in str(caught.value)
    with pytest.raises(dfllm.ParameterError) as caught:
        dfllm.sim_join(left, right, left_on="v", right_on="w")
    assert "8-dimensional vectors" in str(caught.value) and "16-dimensional" in str(caught.value)
    with pytest.raises(dfllm.ParameterError) as caught:
        dfllm.sim_join(left, right, left_on="name", right_on="title")
    assert len(caught.value.problems) == 2 and "must hold vectors" in caught.value.problems[0]


def test_a_dask_frame_where_a_join_cannot_take_it_is_refused_with_the_fix() -> None:
    dd = pytest.importorskip("dask.dataframe")
    left = frame("pandas", {"v": vector_column(["a"])})
    with pytest.raises(dfllm.ParameterError, match=r"compute it first \(ddf.compute\(\)\)"):
        dfllm.sim_join(left, dd.from_pandas(left, npartitions=1), left_on="v", right_on="v")  # a Dask right side
    with pytest.raises(dfllm.ParameterError, match=r"compute it first \(ddf.compute\(\)\)"):
        dfllm.dedup(dd.from_pandas(left, npartitions=1), "v")


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), m=st.integers(1, 40), dim=st.integers(1, 6), k=st.integers(1, 8),
       block=st.integers(1, 9), seed=st.integers(0, 2**32 - 1))
def test_top_k_equals_a_brute_force_top_k(n: int, m: int, dim: int, k: int, block: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    queries, items = (rng.standard_normal((rows, dim)).astype(np.float32) for rows in (n, m))
    found = top_k(queries, items, k, block_rows=block)
    full = queries @ items.T
    best = -np.sort(-full, axis=1)[:, :min(k, m)]
    assert found.left.tolist() == np.repeat(np.arange(n), min(k, m)).tolist()
    # Ties aside (equal scores may come in either order), the scores are the k best, best first,
    # and each named right row really has its score.
    np.testing.assert_allclose(found.score.reshape(best.shape), best, atol=1e-4)
    np.testing.assert_allclose(full[found.left, found.right], found.score, atol=1e-4)
    assert len(set(zip(found.left.tolist(), found.right.tolist(), strict=True))) == len(found.left)


def test_top_k_memory_is_set_by_the_blocks_not_by_n_times_m() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((6000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    tracemalloc.start()
    found = top_k(vectors, vectors, 3, block_rows=256)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(found.left) == 18_000 and (found.left == found.right)[::3].all()  # each row's best is itself
    assert peak < 6_000 * 6_000 * 4 / 20, peak  # the n*m product would be 144 MB


@pytest.mark.parametrize("library", LIBRARIES)
def test_dedup_gives_near_duplicates_the_smallest_position_of_their_group(library: str) -> None:
    names = ["red apple", "quartz wall clock", "apple red", "Red apple!", None, "wall clock quartz", "lemon"]
    df = frame(library, {"name": names, "v": vector_column(names)})
    out = dfllm.dedup(df, "v", threshold=0.95)
    assert texts_of(out, "v_cluster") == [0, 1, 0, 0, 4, 1, 6]
    assert list(out.columns) == ["name", "v", "v_cluster"] and "v_cluster" not in df.columns
    with pytest.raises(dfllm.ParameterError, match="already has a column 'v_cluster'"):
        dfllm.dedup(out, "v")


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 30).flatmap(lambda n: st.tuples(st.just(n), st.lists(
    st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=40))))
def test_components_equal_a_plain_union_find(case: tuple[int, list[tuple[int, int]]]) -> None:
    n, edges = case
    parent = list(range(n))

    def root(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = root(a), root(b)
        parent[max(ra, rb)] = min(ra, rb)
    starts = np.array([e[0] for e in edges], dtype=np.intp)
    ends = np.array([e[1] for e in edges], dtype=np.intp)
    assert components(n, starts, ends).tolist() == [root(x) for x in range(n)]


# --- the same 1,000 products named two ways ---------------------------------------------------------

BRANDS = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne", "Wonka", "Tyrell",
          "Cyberdyne", "Soylent", "Aperture", "Massive", "Oscorp", "Gringotts", "Monarch", "Nakatomi", "Virtucon",
          "Zorg"]
LINES = ["UltraBlend Blender", "PowerMax Drill", "AquaPure Filter", "SoundWave Speaker", "ThermoCup Mug",
         "FlexFit Headphones", "ClearView Monitor", "SwiftCharge Charger", "CloudRest Pillow", "TrailPro Backpack"]
SIZES = ["500 ml", "1 litre", "64 GB", "128 GB", "27 inch", "32 inch", "20 W", "65 W", "2 pack", "4 pack"]
COLOURS = ["Black", "White", "Red", "Blue", "Silver", "Green"]
ABBREVIATIONS = {"litre": "l", "inch": "in", "pack": "pk", "Black": "Blk", "White": "Wht", "Silver": "Slv",
                 "Headphones": "Hdphn", "Speaker": "Spkr", "Backpack": "Bkpk", "Monitor": "Mon"}


def product_tables(n: int = 1_000, seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two catalogues of the same ``n`` products: ``left.name`` and ``right.title`` name product ``i``
    differently (words reordered, abbreviations, punctuation, a typo); ``sku`` is the truth."""
    draw = random.Random(seed)
    codes = draw.sample(range(100, 10_000), n)
    names, titles = [], []
    for i in range(n):
        words = [BRANDS[i % len(BRANDS)], *LINES[(i // 3) % len(LINES)].split(), f"{'XKZ'[i % 3]}{codes[i]}",
                 *SIZES[(i // 7) % len(SIZES)].split(), COLOURS[(i // 11) % len(COLOURS)]]
        names.append(" ".join(words))
        titles.append(_renamed(words, draw))
    right_order = draw.sample(range(n), n)
    left = pd.DataFrame({"sku": range(n), "name": names})
    right = pd.DataFrame({"sku": [right_order[j] for j in range(n)], "title": [titles[i] for i in right_order]})
    return left, right


def _renamed(words: list[str], draw: random.Random) -> str:
    """Another shop's title for the same product: each change taken by chance."""
    words = [ABBREVIATIONS.get(w, w) if draw.random() < 0.6 else w for w in words]
    if draw.random() < 0.5:  # brand last, or the line's words swapped
        words = words[1:] + words[:1]
    if draw.random() < 0.4:
        words = [w.upper() if draw.random() < 0.3 else w.lower() for w in words]
    if draw.random() < 0.4:  # a typo in a word other than the model code
        at = draw.choice([i for i, w in enumerate(words) if not re.fullmatch(r"[A-Za-z]\d+", w) and len(w) > 3])
        word = words[at]
        cut = draw.randrange(1, len(word) - 1)
        words[at] = word[:cut] + word[cut + 1] + word[cut] + word[cut + 2:]
    title = " ".join(words)
    if draw.random() < 0.5:
        title = re.sub(r"([A-Za-z])(\d)", r"\1-\2", title, count=1).replace(" ", ", ", 1)
    return title


def with_vectors(df: pd.DataFrame, text: str, library: str) -> Any:
    out = frame("pandas", {**{c: df[c].tolist() for c in df.columns}, "v": vector_column(df[text].tolist())})
    return pl.from_pandas(out) if library == "polars" else out


def recall(out: Any) -> float:
    """The share of the 1,000 left products whose own right row is among its matches."""
    pairs = out.to_pandas() if isinstance(out, pl.DataFrame) else out
    return float((pairs["sku"] == pairs["sku_right"]).groupby(pairs["sku"]).any().reindex(range(1_000),
                                                                                           fill_value=False).mean())


@pytest.fixture(scope="module")
def products() -> tuple[pd.DataFrame, pd.DataFrame]:
    left, right = product_tables()
    return with_vectors(left, "name", "pandas"), with_vectors(right, "title", "pandas")


# Measured (seed 7, 64 dimensions, "words"): recall 0.855 / 0.973 / 0.986 at k = 1 / 5 / 10. Vectors and
# the join are deterministic, so the floors only leave room for a change of BLAS rounding.
@pytest.mark.parametrize(("k", "floor"), [(1, 0.84), (5, 0.96), (10, 0.98)])
def test_sim_join_recall_on_two_catalogues_naming_the_same_products(
        products: tuple[pd.DataFrame, pd.DataFrame], k: int, floor: float) -> None:
    left, right = products
    out = dfllm.sim_join(left, right, left_on="v", right_on="v", k=k, block_rows=128)
    assert len(out) == 1_000 * k
    assert recall(out) >= floor


def same_product(model: str, prompt: str) -> str:
    """The fake judge: "yes" when the two names have one model code and most words in common."""
    first, second = re.search(r"A: (.*)\nB: (.*)", prompt).groups()  # type: ignore[union-attr]
    words = [{_canonical(w) for w in re.split(r"[\s,]+", name) if w} for name in (first, second)]
    codes = [{w for w in ws if re.fullmatch(r"[a-z]\d+", w)} for ws in words]
    overlap = len(words[0] & words[1]) / max(len(words[0]), len(words[1]))
    return "yes" if codes[0] == codes[1] and overlap >= 0.6 else "no"


_EXPANSIONS = {normalise_text(short): normalise_text(long) for long, short in ABBREVIATIONS.items()}


def _canonical(word: str) -> str:
    plain = normalise_text(word)
    return _EXPANSIONS.get(plain, plain)


@pytest.fixture
def judge() -> Iterator[tuple[FakeProvider, str]]:
    with FakeProvider(responder=same_product) as fake:
        dfllm.create_engine("judge", "openai", api_key=KEY, base_url=fake.base_url)
        yield fake, "judge"


TEMPLATE = "Do these name the same product? Answer yes or no.\nA: {{left.name}}\nB: {{right.title}}"


@pytest.mark.parametrize("library", LIBRARIES)
def test_sem_join_asks_about_n_times_k_pairs_and_keeps_the_matches(
        products: tuple[pd.DataFrame, pd.DataFrame], judge: tuple[FakeProvider, str], library: str) -> None:
    fake, engine = judge
    left, right = (pl.from_pandas(df) if library == "polars" else df for df in products)
    found = dfllm.sem_join_estimate(left, right, engine, "gpt-4o-mini", TEMPLATE, left_on="v", right_on="v", k=5)
    assert (found.candidate_pairs, found.all_pairs, found.requests.requests) == (5_000, 1_000_000, 5_000)
    assert "5,000 of 1,000,000 (0.50% of n * m)" in str(found) and not fake.chat_requests
    out = dfllm.sem_join(left, right, engine, "gpt-4o-mini", TEMPLATE, left_on="v", right_on="v", k=5)
    assert len(fake.chat_requests) == 5_000
    assert type(out) is type(left) and set(texts_of(out, "match")) == {"yes"}
    pairs = out.to_pandas() if isinstance(out, pl.DataFrame) else out
    assert (pairs["sku"] == pairs["sku_right"]).mean() >= 0.99  # precision of the judge on its candidates
    # The judge says yes to every true pair, so sem_join finds what sim_join's k=5 candidates hold (0.973).
    assert recall(out) >= 0.96
    asked = {request.body["messages"][-1]["content"] for request in fake.chat_requests}
    assert len(asked) == 5_000
    assert (f"Do these name the same product? Answer yes or no.\nA: {texts_of(out, 'name')[0]}\n"
            f"B: {texts_of(out, 'title')[0]}") in asked


def test_sem_join_keep_all_and_all_pairs_on_a_small_frame(judge: tuple[FakeProvider, str]) -> None:
    _, engine = judge
    left = frame("pandas", {"name": ["Acme X100 Drill", "Hooli Z200 Mug"]})
    right = frame("polars", {"title": ["mug hooli z-200", "drill, ACME X100", "Acme X101 Drill"]})
    out = dfllm.sem_join(left, right, engine, "m", TEMPLATE, all_pairs=True, keep_all=True)
    assert isinstance(out, pd.DataFrame) and len(out) == 6 and "similarity" not in out.columns
    assert out["match"].astype(str).tolist() == ["no", "yes", "no", "yes", "no", "no"]
    kept = dfllm.sem_join(left, right, engine, "m", TEMPLATE, all_pairs=True)
    assert list(zip(kept["name"], kept["title"], strict=True)) == [("Acme X100 Drill", "drill, ACME X100"),
                                                                   ("Hooli Z200 Mug", "mug hooli z-200")]


def test_sem_join_refuses_what_it_cannot_do_before_sending(judge: tuple[FakeProvider, str]) -> None:
    fake, engine = judge
    big = frame("pandas", {"name": [str(i) for i in range(101)], "v": vector_column(["a"] * 101)})
    with pytest.raises(dfllm.ParameterError) as caught:
        dfllm.sem_join(big, big, engine, "m", "Same? {{left.name}} {{right.nme}} {{title}}", all_pairs=True)
    message = str(caught.value)
    assert f"over the limit of {ALL_PAIRS_LIMIT:,}" in message and "10,201 questions" in message
    assert "{{right.nme}} names 'nme'" in message and "Did you mean 'name'?" in message
    assert "{{title}} names no side" in message
    with pytest.raises(dfllm.ParameterError, match="give left_on= and right_on="):
        dfllm.sem_join(big, big, engine, "m", TEMPLATE.replace("title", "name"))
    with pytest.raises(dfllm.ParameterError, match="pass keep_all=True"):
        dfllm.sem_join(big, big, engine, "m", TEMPLATE.replace("title", "name"), left_on="v", right_on="v",
                       choices=["same", "different"])
    assert not fake.chat_requests


def test_the_accessor_doors_forward(judge: tuple[FakeProvider, str]) -> None:
    _, engine = judge
    names = ["Acme X100 Drill", "drill acme x100", "Hooli Z200 Mug"]
    df = frame("polars", {"name": names, "v": vector_column(names)})
    assert df.llm.dedup("v", threshold=0.8)["v_cluster"].to_list() == [0, 0, 2]
    assert len(df.llm.sim_join(df, left_on="v", right_on="v", k=2)) == 6
    other = df.rename({"name": "title"})
    out = df.llm.sem_join(other, engine, "m", TEMPLATE, left_on="v", right_on="v", k=2)
    assert sorted(zip(out["name"].to_list(), out["title"].to_list(), strict=True)) == [
        ("Acme X100 Drill", "Acme X100 Drill"), ("Acme X100 Drill", "drill acme x100"),
        ("Hooli Z200 Mug", "Hooli Z200 Mug"), ("drill acme x100", "Acme X100 Drill"),
        ("drill acme x100", "drill acme x100")]
