"""The persistent cache: nothing paid for twice, nothing secret on disk, errors not kept."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

import dfllm
from dfllm.engines import Completion
from dfllm.prompt.keys import RequestKeys
from dfllm.runtime.cache import Cache
from dfllm.runtime.stores import FsspecCache, object_name
from dfllm.testing import FakeProvider, per_prompt, status
from tests.conftest import KEY


def test_rerun_sends_nothing_and_gives_the_same_answers(tmp_path: Path) -> None:
    df = pd.DataFrame({"t": [f"q{i}" for i in range(20)]})
    path = tmp_path / "c.sqlite3"
    with FakeProvider(responder="echo") as fake:
        dfllm.create_engine("t", "openai", api_key=KEY, base_url=fake.base_url)
        first = df.llm.predict("t", "m", "{{t}}", "y", cache=str(path))
        assert len(fake.chat_requests) == 20
        second = df.llm.predict("t", "m", "{{t}}", "y", cache=str(path))
        assert len(fake.chat_requests) == 20
        run = dfllm.last_run()
        assert run is not None and run.cache_hits == 20 and run.requests == 0
        # A different sampling parameter is a different answer: sent again.
        df.head(2).llm.predict("t", "m", "{{t}}", "y", cache=str(path), temperature=0.5)
        assert len(fake.chat_requests) == 22
    pd.testing.assert_frame_equal(first, second)


def test_cache_file_is_owner_only_and_holds_no_key(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "c.sqlite3"
    with FakeProvider() as fake:
        dfllm.create_engine("t", "openai", api_key=KEY, base_url=fake.base_url)
        pd.DataFrame({"t": ["x"]}).llm.predict("t", "m", "{{t}}", "y", cache=str(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    for file in path.parent.iterdir():
        assert KEY.encode() not in file.read_bytes()


def test_errors_are_not_cached(tmp_path: Path) -> None:
    path = str(tmp_path / "c.sqlite3")
    df = pd.DataFrame({"t": ["good", "bad"]})
    with FakeProvider(responder="echo", script=per_prompt({"bad": [status(400)]})) as fake:
        dfllm.create_engine("t", "openai", api_key=KEY, base_url=fake.base_url)
        first = df.llm.predict("t", "m", "{{t}}", "y", cache=path, errors="null")
        assert first["y_error"].notna().tolist() == [False, True]
        second = df.llm.predict("t", "m", "{{t}}", "y", cache=path, errors="null")
        # Only the failed row went out again; the good answer came from the cache.
        assert sorted(r.prompt for r in fake.chat_requests) == ["bad", "bad", "good"]
    assert second["y"].tolist() == ["good", "bad"]


def test_cache_off_sends_again(fake: FakeProvider, engine: str) -> None:
    df = pd.DataFrame({"t": ["x"]})
    df.llm.predict(engine, "m", "{{t}}", "y", cache=False)
    df.llm.predict(engine, "m", "{{t}}", "y", cache=False)
    assert len(fake.chat_requests) == 2


def test_default_location_follows_dfllm_cache_dir(fake: FakeProvider, engine: str) -> None:
    pd.DataFrame({"t": ["x"]}).llm.predict(engine, "m", "{{t}}", "y")
    assert (Path(os.environ["DFLLM_CACHE_DIR"]) / "responses.sqlite3").exists()


def test_writes_survive_close_and_reopen(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c.sqlite3")
    keys = RequestKeys("i", "m", None, {})
    for i in range(2500):
        cache.put(keys.key(f"k{i}"), Completion(f"v{i}", 1, 2))
    cache.close()
    db = sqlite3.connect(tmp_path / "c.sqlite3")
    assert db.execute("SELECT count(*) FROM responses").fetchone() == (2500,)
    again = Cache(tmp_path / "c.sqlite3")
    k0, k2499, nope = keys.key("k0"), keys.key("k2499"), keys.key("nope")
    assert again.get_many([k0, k2499, nope]) == {k0: Completion("v0", 1, 2), k2499: Completion("v2499", 1, 2)}
    again.close()


def test_keys_sharing_a_rowid_never_swap_answers(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c.sqlite3")
    a, b = (7, 1), (7, 2)  # same rowid, different tails
    cache.put(a, Completion("answer a"))
    cache.close()
    again = Cache(tmp_path / "c.sqlite3")
    assert again.get_many([a, b]) == {a: Completion("answer a")}
    again.close()


params = st.dictionaries(st.sampled_from(["temperature", "max_tokens", "seed"]), st.integers(0, 5))
texts = st.text(max_size=20)


@given(texts, texts, st.one_of(st.none(), texts), params, params)
def test_cache_key_depends_on_content_not_on_dict_order(prompt: str, other: str, system: str | None,
                                                         p: dict[str, int], q: dict[str, int]) -> None:
    def key(prompt: str, params: dict[str, int], identity: str = "openai|u", model: str = "m",
            system: str | None = system, choices: tuple[str, ...] = ()) -> tuple[int, int]:
        return RequestKeys(identity, model, system, params, {"choices": list(choices)}).key(prompt)

    reordered = dict(reversed(list(p.items())))
    assert key(prompt, p) == key(prompt, reordered)
    assert (key(prompt, p) == key(prompt, q)) == (p == q)
    assert (key(prompt, p) == key(other, p)) == (prompt == other)
    assert key(prompt, p) != key(prompt, p, identity="openai|v")
    assert key(prompt, p) != key(prompt, p, model="m2")
    assert key(prompt, p) != key(prompt, p, system=(system or "") + "!")
    assert key(prompt, p) != key(prompt, p, choices=("a", "b"))


def committed(path: Path) -> list[tuple[str]]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT text FROM responses").fetchall()
    finally:
        db.close()


def test_an_answer_is_served_the_moment_it_is_put_before_its_commit(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    cache = Cache(path, flush_s=3600)  # the writer holds the batch: nothing is committed yet
    key, other = (11, 12), (13, 14)
    cache.put(key, Completion("fresh", 1, 2))
    assert committed(path) == []
    assert cache.get_many([key, other]) == {key: Completion("fresh", 1, 2)}
    cache.put(key, Completion("newer", 1, 2))  # a later put of the same key is the one served
    assert cache.get_many([key]) == {key: Completion("newer", 1, 2)}
    cache.flush()
    assert committed(path) == [("newer",)]
    assert cache.get_many([key, other]) == {key: Completion("newer", 1, 2)}
    cache.close()


def test_an_fsspec_answer_is_served_the_moment_it_is_put_before_its_object_lands(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FsspecCache(f"file://{tmp_path}/answers").open()
    gate = threading.Event()
    write = store._write

    def held_write(key: tuple[int, int], completion: Completion) -> None:
        assert gate.wait(30)
        write(key, completion)

    monkeypatch.setattr(store, "_write", held_write)  # the object store is slow: the write has not landed
    key, other = (-5, 6), (7, 8)
    store.put(key, Completion("fresh", 1, 2))
    assert list((tmp_path / "answers").iterdir()) == []
    assert store.get_many([key, other]) == {key: Completion("fresh", 1, 2)}
    gate.set()
    store.flush()
    assert [p.name for p in (tmp_path / "answers").iterdir()] == [f"{object_name(key)}.json"]
    again = FsspecCache(f"file://{tmp_path}/answers").open()
    assert again.get_many([key, other]) == {key: Completion("fresh", 1, 2)}
    store.close()
    again.close()


def test_cached_tokens_are_kept_with_the_answer_in_either_store(tmp_path: Path) -> None:
    key, answer = (3, 4), Completion("yes", 2_000, 5, cached_tokens=1_536)
    for open_store in (lambda: Cache(tmp_path / "c.sqlite3"), FsspecCache(f"file://{tmp_path}/answers").open):
        store = open_store()
        store.put(key, answer)
        store.close()
        again = open_store()
        assert again.get_many([key])[key].cached_tokens == 1_536
        again.close()


def test_a_cache_written_before_cached_tokens_still_serves_its_answers(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)  # the table as dfllm wrote it before it kept cached tokens
    db.execute("CREATE TABLE responses (id INTEGER PRIMARY KEY, tail INTEGER NOT NULL, text TEXT NOT NULL, "
               "prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL)")
    db.execute("INSERT INTO responses VALUES (1, 2, 'old answer', 30, 4)")
    db.commit()
    db.close()
    cache = Cache(path)
    cache.put((5, 6), Completion("new answer", 10, 1, cached_tokens=8))
    cache.close()
    again = Cache(path)
    assert again.get_many([(1, 2), (5, 6)]) == {(1, 2): Completion("old answer", 30, 4),
                                                 (5, 6): Completion("new answer", 10, 1, cached_tokens=8)}
    again.close()


def test_an_fsspec_object_written_before_cached_tokens_reads_zero(tmp_path: Path) -> None:
    store = FsspecCache(f"file://{tmp_path}/answers").open()
    key = (-1, 2)
    (tmp_path / "answers").mkdir(exist_ok=True)
    (tmp_path / "answers" / f"{object_name(key)}.json").write_text(
        '{"text": "old", "prompt_tokens": 3, "completion_tokens": 1}')
    assert store.get_many([key]) == {key: Completion("old", 3, 1)}
    store.close()


def test_get_each_answers_in_the_order_asked_with_duplicates_and_the_overlay(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    cache = Cache(path, flush_s=3600)
    stored, fresh, absent, twin = (1, 2), (3, 4), (5, 6), (1, 3)  # twin shares stored's rowid
    cache.put(stored, Completion("stored", 1, 2))
    cache.flush()
    assert cache.get_each([absent, stored, stored, twin]) == [None, Completion("stored", 1, 2),
                                                             Completion("stored", 1, 2), None]
    cache.put(fresh, Completion("fresh", 3, 4))  # in the overlay, not committed
    assert cache.get_each(iter([fresh, absent, stored])) == [Completion("fresh", 3, 4), None,
                                                            Completion("stored", 1, 2)]
    assert cache.get_many([fresh, absent, stored]) == {fresh: Completion("fresh", 3, 4),
                                                      stored: Completion("stored", 1, 2)}
    cache.close()


def test_counts_a_foreign_writer_stored_as_text_read_as_integers(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    Cache(path).close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO responses VALUES (7, 8, 'odd', '12', 'x', 3.0)")
    db.commit()
    db.close()
    cache = Cache(path)
    [found] = cache.get_each([(7, 8)])
    assert found == Completion("odd", 12, 0, cached_tokens=3)
    assert [type(n) for n in found[1:3]] == [int, int]
    cache.close()


def test_a_batch_of_many_answers_is_stored_whole_and_a_later_put_of_a_key_wins(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    cache = Cache(path, flush_s=3600)  # one batch: several statements of rows and the rows left over
    for i in range(150):
        cache.put((i, -i), Completion(f"v{i}", i, 1, cached_tokens=i // 2))
    cache.put((70, -70), Completion("again", 5, 6))
    cache.close()
    db = sqlite3.connect(path)
    rows = db.execute("SELECT id, tail, text, prompt_tokens, completion_tokens, cached_tokens FROM responses "
                      "ORDER BY id").fetchall()
    db.close()
    expected = [(i, -i, f"v{i}", i, 1, i // 2) for i in range(150)]
    expected[70] = (70, -70, "again", 5, 6, 0)
    assert rows == expected


def test_bad_answers_amid_a_large_batch_are_counted_and_the_others_stored(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    cache = Cache(path, flush_s=3600)
    bad = {3: "\ud83d", 70: 42, 149: None}
    for i in range(150):
        cache.put((i, i), Completion(bad.get(i, f"v{i}")))  # type: ignore[arg-type]
    cache.close()
    assert (cache.written, cache.failed) == (147, 3)
    db = sqlite3.connect(path)
    assert db.execute("SELECT id FROM responses ORDER BY id").fetchall() == [(i,) for i in range(150) if i not in bad]
    db.close()
