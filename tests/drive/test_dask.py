"""Dask: lazy ``ddf.llm.predict`` on a real LocalCluster with worker processes, against the fake
provider on 127.0.0.1 (it runs in this process; workers reach it over loopback)."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

import cloudpickle  # type: ignore[import-untyped]  # noqa: E402
import pandas as pd  # noqa: E402
import psutil  # type: ignore[import-untyped]  # noqa: E402  # distributed's dependency

import dfllm  # noqa: E402
from dfllm.drive.dask import EngineSpec  # noqa: E402
from dfllm.engines.base import Completion  # noqa: E402
from dfllm.runtime.coordinator import LEASE_S, Budgets, ClusterGate, RateCoordinator  # noqa: E402
from dfllm.runtime.stores import FsspecCache, object_name, open_store  # noqa: E402
from dfllm.testing import FakeClock, FakeProvider, sequence, status  # noqa: E402
from dfllm.testing._responders import sentiment  # noqa: E402
from tests.conftest import KEY  # noqa: E402

MODEL = "gpt-4o-mini"


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    # Started once: two worker processes take several seconds on a loaded 2-core machine.
    # Loopback only: a test must not open a port to the network. The scheduler serves HTTP even
    # with dashboard_address=None (on 8787, where a gateway under test may want to be): a free
    # port on 127.0.0.1 instead.
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address="127.0.0.1:0", silence_logs=40) as cluster, \
            distributed.Client(cluster) as client:
        client.wait_for_workers(2, timeout=120)
        yield client


def listening() -> list[tuple[str, int]]:
    """The (address, port) pairs this process listens on (run here and on each worker)."""
    return [(c.laddr.ip, c.laddr.port) for c in psutil.Process(os.getpid()).net_connections("inet")
            if c.status == psutil.CONN_LISTEN]


def test_the_cluster_and_its_dashboard_listen_on_loopback_only(client: Any) -> None:
    info = client.scheduler_info(n_workers=-1)
    named = [client.scheduler.address, *info["workers"], *(w["nanny"] for w in info["workers"].values())]
    assert len(named) == 5 and all(a.startswith("tcp://127.0.0.1:") for a in named), named
    # What is bound, not only what is named: the scheduler, its HTTP server and the nannies here,
    # each worker in its own process.
    bound = {"client process": listening(), **client.run(listening)}
    assert len(bound) == 3, bound
    assert all(pairs and {ip for ip, _ in pairs} == {"127.0.0.1"} for pairs in bound.values()), bound
    assert ("127.0.0.1", info["services"]["dashboard"]) in bound["client process"], info["services"]


def frame(n: int, prefix: str = "row") -> pd.DataFrame:
    # A shuffled index: answers must come back in row order, not index order.
    return pd.DataFrame({"text": [f"{prefix} {i}" for i in range(n)]}, index=list(range(n))[::-1])


def expected(texts: list[str]) -> list[str]:
    return [f"{MODEL} says: Echo {t}" for t in texts]


# -- the coordinator's schedule, on a fake clock ---------------------------------------------------

def test_leases_from_many_workers_never_exceed_the_budget() -> None:
    clock = FakeClock()
    budgets = Budgets(clock, lease_s=1.0)
    sends: list[float] = []
    for step in range(200):  # three workers asking in turn, every 50 ms, for more than they may have
        clock.now = step * 0.05
        reply = budgets.lease("b", f"w{step % 3}", want=50, rpm=600)
        sends += [clock.now + reply["first_s"] + i * reply["interval_s"] for i in range(reply["count"])]
        assert reply["first_s"] + reply["count"] * reply["interval_s"] <= 1.0 + 1e-9  # one window ahead at most
    sends.sort()
    assert all(b - a >= 0.1 - 1e-9 for a, b in itertools.pairwise(sends))
    assert len(sends) >= 0.95 * (sends[-1] - sends[0]) * 10  # and the budget is used


def test_a_pause_moves_every_later_lease_past_it_and_a_dead_worker_loses_one_window() -> None:
    clock = FakeClock()
    budgets = Budgets(clock, lease_s=1.0)
    budgets.lease("b", "w0", want=100, rpm=600)  # w0 holds its share and dies
    budgets.forget_worker("w0")
    budgets.pause("b", 5.0)
    reply = budgets.lease("b", "w1", want=100, rpm=600)
    assert reply["pause_s"] == 5.0 and reply["first_s"] >= 5.0
    assert reply["first_s"] <= 5.0 + 1e-9  # what w0 held was before the pause: nothing more is lost
    budgets.pause("b", 1e9)  # a hostile Retry-After cannot stop the cluster for long
    assert budgets.lease("b", "w1", want=1, rpm=600)["pause_s"] <= 60.0


def test_gate_sends_at_leased_times_and_tells_the_coordinator_of_429s_and_learned_limits() -> None:
    clock = FakeClock()
    budgets = Budgets(clock, lease_s=1.0)
    calls: list[str] = []

    async def call(op: str, **fields: Any) -> Any:
        calls.append(op)
        return getattr(budgets, op.removeprefix("dfllm_"))(**fields)

    async def scenario() -> list[float]:
        gate = ClusterGate("b", "w", call, rpm=None, tpm=None, workers=2, clock=clock, sleep=clock.sleep)
        from dfllm.engines.base import RateLimitState

        gate.on_headers(RateLimitState(limit_requests=120))  # learned: 2 per second for the cluster
        await asyncio.sleep(0)
        times = []
        for _ in range(5):
            await gate.acquire(10)
            times.append(clock.now)
        gate.on_rate_limited(3.0)
        await asyncio.sleep(0)
        await gate.acquire(10)
        times.append(clock.now)
        return times

    times = asyncio.run(scenario())
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g >= 0.5 - 1e-9 for g in gaps[:4])
    assert gaps[4] >= 3.0
    assert "dfllm_learn" in calls and "dfllm_pause" in calls


# -- the cache backend -----------------------------------------------------------------------------

def test_fsspec_cache_round_trip_is_atomic_and_a_torn_object_is_a_miss(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/answers")
    assert store is not None
    store.put((1, -2), Completion("yes", 3, 1))
    store.close()
    names = os.listdir(tmp_path / "answers")
    assert names == [f"{object_name((1, -2))}.json"]  # no scratch file left behind
    (tmp_path / "answers" / f"{object_name((5, 5))}.json").write_bytes(b'{"text": "tru')
    again = FsspecCache(f"file://{tmp_path}/answers").open()
    assert again.get_many([(1, -2), (5, 5), (9, 9)]) == {(1, -2): Completion("yes", 3, 1)}
    again.close()
    assert cloudpickle.loads(cloudpickle.dumps(FsspecCache("memory://x"))) == FsspecCache("memory://x")


def test_predict_with_an_fsspec_cache_costs_nothing_the_second_time(tmp_path: Path) -> None:
    with FakeProvider() as fake:
        dfllm.create_engine("t", "openai", api_key=KEY, base_url=fake.base_url)
        df = frame(6)
        for _ in range(2):
            out = dfllm.predict(df, "t", MODEL, "Echo {{text}}", "answer", cache=f"file://{tmp_path}/c")
            assert out["answer"].tolist() == expected(df["text"].tolist())
        assert len(fake.chat_requests) == 6
        assert not any(KEY in p.read_text() for p in (tmp_path / "c").iterdir())


# -- on a real cluster -----------------------------------------------------------------------------

def test_graph_build_sends_nothing_and_compute_answers_every_row_in_order(client: Any) -> None:
    with FakeProvider() as fake:
        dfllm.create_engine("t", "openai", api_key=KEY, base_url=fake.base_url)
        df = frame(40)
        df.loc[df.index[::4], "text"] = "same"  # duplicates: sent once per partition
        ddf = dd.from_pandas(df, npartitions=4, sort=False)
        out = ddf.llm.predict("t", MODEL, "Echo {{text}}", "answer")
        lazy = dfllm.predict(ddf, "t", MODEL, "Echo {{text}}", "answer")
        assert isinstance(out, dd.DataFrame) and isinstance(lazy, dd.DataFrame)
        assert list(out.columns) == ["text", "answer"] and str(out.dtypes["answer"]) == "string"
        assert fake.chat_requests == []
        result = out.compute()
        assert result.index.tolist() == df.index.tolist()
        assert result["answer"].tolist() == expected(df["text"].tolist())
        # Each prompt is sent once per partition at most (fewer: another partition's answer may be
        # in the shared cache already).
        per_partition = sum(part["text"].nunique() for part in (df.iloc[i * 10:(i + 1) * 10] for i in range(4)))
        sent = len(fake.chat_requests)
        assert df["text"].nunique() <= sent <= per_partition
        assert all(r.headers.get("Authorization") == f"Bearer {KEY}" for r in fake.chat_requests)
        result = lazy.compute()  # the cache on this host serves both workers: nothing is asked again
        assert result["answer"].tolist() == expected(df["text"].tolist())
        assert len(fake.chat_requests) == sent


def test_bad_input_is_reported_when_the_graph_is_built(client: Any) -> None:
    ddf = dd.from_pandas(frame(4), npartitions=2)
    dfllm.create_engine("t", "openai", api_key=KEY, base_url="http://127.0.0.1:9/v1")
    with pytest.raises(dfllm.ConfigurationError) as info:
        ddf.llm.predict("t", MODEL, "Echo {{txt}}", "text", temperature=9)
    message = str(info.value)
    assert "txt" in message and "temperature" in message and "overwrite" in message


def test_engine_spec_survives_pickling_and_the_key_is_nowhere_in_the_graph(client: Any) -> None:
    config = dfllm.create_engine("t", "openai", api_key=KEY, base_url="http://127.0.0.1:9/v1")
    spec = EngineSpec.of(config)
    again = cloudpickle.loads(cloudpickle.dumps(spec))
    assert again == spec and again.config().identity == config.identity
    out = dd.from_pandas(frame(8), npartitions=2).llm.predict("t", MODEL, "Echo {{text}}", "answer")
    graph = dict(out.__dask_graph__())
    assert KEY.encode() not in cloudpickle.dumps(graph)
    assert KEY not in repr(graph) and KEY not in repr(out.__dask_keys__()) and KEY not in repr(out)
    assert KEY not in repr(spec)


def test_a_key_in_base_urls_path_is_masked_in_the_engine_spec() -> None:
    pasted = "sk-proj-AbC123dEf456GhI789jKl"
    config = dfllm.create_engine("t", "openai", api_key=KEY, base_url=f"http://127.0.0.1:9/{pasted}/v1")
    spec = EngineSpec.of(config)
    assert pasted not in repr(spec) and "127.0.0.1:9" in repr(spec)
    assert pasted in spec.base_url  # still sent: only what is shown is masked


def _gate_leases() -> dict[str, int]:
    from dfllm.runtime import worker

    runtime = worker._runtime
    if runtime is None:
        return {}
    return {str(k[1:]): g.leases for k, g in runtime._shared.items() if k[0] == "gate"}  # type: ignore[index]


def test_two_workers_together_stay_under_the_servers_rpm_cap_and_use_it(client: Any) -> None:
    cap = 900.0  # 15 a second; 150 rows take about ten seconds
    with FakeProvider(rpm=cap, ratelimit_headers=False) as fake:
        dfllm.create_engine("t", "openai", api_key=KEY, base_url=fake.base_url)
        ddf = dd.from_pandas(frame(150, "capped"), npartitions=2, sort=False)
        result = ddf.llm.predict("t", MODEL, "Echo {{text}}", "answer", rpm=cap).compute()
        assert result["answer"].notna().all()
        statuses = [s for _, s in fake.app.responses]
        ok = sorted(t for t, s in fake.app.responses if s == 200)
    assert statuses.count(429) / len(statuses) < 0.03
    achieved = (len(ok) - 1) / (ok[-1] - ok[0]) * 60
    # Never above the cap; the use of it (0.97-0.99 in benchmarks/dask.py) gets a margin here for a
    # loaded 2-core machine, where a starved worker process sends its leased slots late.
    assert 0.8 * cap <= achieved <= 1.05 * cap, achieved
    leases = client.run(_gate_leases)
    assert all(any(n > 0 for n in by_budget.values()) for by_budget in leases.values()), leases


def rate_per_minute(arrivals: list[float]) -> float:
    """Requests per minute between the first and the last arrival: no start-up ramp to dilute it."""
    arrivals = sorted(arrivals)
    return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) * 60


def test_each_compute_on_one_cluster_keeps_its_own_rpm(client: Any) -> None:
    # Computes one after another on one cluster and one budget (engine and model): each must be
    # paced by its own rpm, not by the rpm (or the absence of one) of the first compute.
    with FakeProvider() as fake:
        dfllm.create_engine("t", "openai", api_key=KEY, base_url=fake.base_url)

        def run(model: str, prefix: str, rows: int, **options: Any) -> float:
            ddf = dd.from_pandas(frame(rows, prefix), npartitions=2, sort=False)
            out = ddf.llm.predict("t", model, "Echo {{text}}", "answer", cache=False, **options).compute()
            assert out["answer"].notna().all()
            arrivals = [r.arrived_at for r in fake.chat_requests if r.prompt.startswith(f"Echo {prefix} ")]
            assert len(arrivals) == rows
            return rate_per_minute(arrivals)

        # Three budgets (one per model), two computes on each: (rate, the compute's rpm).
        rates = {
            "rpm=300 first": (run(MODEL, "slow", 15, rpm=300), 300),
            "no rpm after rpm=300": (run(MODEL, "free", 60), None),
            "no rpm first": (run("model-2", "free-first", 20), None),
            "rpm=600 after no rpm": (run("model-2", "capped", 25, rpm=600), 600),
            "rpm=1200 first": (run("model-3", "fast", 30, rpm=1200), 1200),
            "rpm=300 after rpm=1200": (run("model-3", "slower", 15, rpm=300), 300),
        }
    # A stale lease doubles a rate (two workers, each pacing itself at the rpm, under a gate at
    # the first compute's rpm) or holds an uncapped compute at the first rpm: bounds that a loaded
    # 2-core machine keeps (it only sends later) and either mistake breaks.
    wrong = {name: rate for name, (rate, rpm) in rates.items()
             if (rpm is not None and not 0.5 * rpm <= rate <= 1.25 * rpm) or (rpm is None and rate < 3 * 300)}
    assert not wrong, rates


def test_a_cap_under_the_given_rpm_seen_by_one_worker_pauses_the_other(client: Any) -> None:
    pause_s = 3.0
    # 20 answers, then 30 429s in a row: a cap under the rpm given (a lone random 429 would
    # delay only its own row), then answers again.
    script = sequence([None] * 20 + [status(429, retry_after=pause_s)] * 30)
    with FakeProvider(script=script) as fake:
        dfllm.create_engine("t", "openai", api_key=KEY, base_url=fake.base_url)
        ddf = dd.from_pandas(frame(120, "paused"), npartitions=2, sort=False)
        result = ddf.llm.predict("t", MODEL, "Echo {{text}}", "answer", rpm=600).compute()
        assert result["answer"].notna().all()
        arrivals = sorted(r.arrived_at for r in fake.chat_requests)
        refused = [t for t, s in fake.app.responses if s == 429]
    # Once a worker has seen a steady share of 429s, nobody sends for the Retry-After (less the
    # slots leased before it, one lease window); sending at 600/min, the gaps are 0.1 s.
    after = [t for t in arrivals if t >= refused[0]]
    longest_gap = max(later - earlier for earlier, later in itertools.pairwise(after))
    assert longest_gap > pause_s - LEASE_S - 0.5, (longest_gap, len(refused))
    assert len([t for t in arrivals if t > refused[-1] + 1.0]) > 10  # both resumed and finished


def test_without_a_coordinator_on_the_scheduler_each_worker_keeps_a_static_share(
        client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    client.unregister_scheduler_plugin(RateCoordinator.name)

    async def refuse(self: RateCoordinator, scheduler: Any) -> None:
        raise ModuleNotFoundError("No module named 'dfllm'")

    monkeypatch.setattr(RateCoordinator, "start", refuse)  # the scheduler runs in this process
    with FakeProvider() as fake:
        dfllm.create_engine("t", "openai", api_key=KEY, base_url=fake.base_url)
        ddf = dd.from_pandas(frame(20, "static"), npartitions=2, sort=False)
        with pytest.warns(UserWarning, match=r"static share \(1/2\) of rpm"):
            out = ddf.llm.predict("t", MODEL, "Echo {{text}}", "answer", rpm=1200)
        started = time.monotonic()
        assert out.compute()["answer"].notna().all()
        # Each worker paces at 600/min (one per 0.1 s) for its 10 rows: about a second, not half.
        assert time.monotonic() - started >= 0.85


def test_a_worker_killed_mid_run_costs_no_request_for_rows_already_answered(client: Any) -> None:
    with FakeProvider(latency_s=0.05) as fake:
        dfllm.create_engine("t", "openai", api_key=KEY, base_url=fake.base_url)
        df = frame(400, "kill")
        ddf = dd.from_pandas(df, npartitions=4, sort=False)
        future = client.compute(ddf.llm.predict("t", MODEL, "Echo {{text}}", "answer", concurrency=2))
        deadline = time.monotonic() + 120
        while len(fake.chat_requests) < 160 and time.monotonic() < deadline:
            time.sleep(0.02)
        pids = client.run(os.getpid)
        killed_at = time.monotonic()
        os.kill(next(iter(pids.values())), signal.SIGKILL)
        result = future.result(timeout=180)
        assert result["answer"].tolist() == expected(df["text"].tolist())
        requests = list(fake.chat_requests)
    # Answered (50 ms latency) and committed (the cache flushes every 0.1 s) well before the kill.
    answered_before = {r.prompt for r in requests if r.arrived_at < killed_at - 0.6}
    asked = Counter(r.prompt for r in requests)
    assert answered_before and all(asked[p] == 1 for p in answered_before)
    client.wait_for_workers(2, timeout=120)


def test_schema_and_choices_give_the_same_typed_columns_as_on_pandas(client: Any) -> None:
    from typing import Literal

    schema = {"mood": Literal["up", "down"], "score": int, "tags": list[str]}
    with FakeProvider() as fake:
        dfllm.create_engine("t", "openai", api_key=KEY, base_url=fake.base_url)
        df = pd.DataFrame({"text": ["great day", "awful day", "a table", "nice"]})
        ddf = dd.from_pandas(df, npartitions=2, sort=False)
        lazy = ddf.llm.predict("t", MODEL, "Read {{text}}", "r", schema=schema)
        labels = ddf.llm.predict("t", MODEL, "sentiment of {{text}}", "s",
                                 choices=["positive", "negative", "neutral"])
        assert fake.chat_requests == []
        in_memory = df.llm.predict("t", MODEL, "Read {{text}}", "r", schema=schema)
        out = lazy.compute()
        new = [c for c in in_memory.columns if c != "text"]  # Dask converts the input's strings itself
        assert new == ["r_mood", "r_score", "r_tags"]
        assert dict(out[new].dtypes) == dict(in_memory[new].dtypes) == dict(lazy[new].dtypes)
        pd.testing.assert_frame_equal(out[new].reset_index(drop=True), in_memory[new].reset_index(drop=True))
        assert all("response_format" in r.body for r in fake.chat_requests)
        classified = labels.compute()
    assert str(classified["s"].dtype) == "category"
    assert list(classified["s"].cat.categories) == ["positive", "negative", "neutral"]
    assert classified["s"].tolist()[:3] == ["positive", "negative", "neutral"]


def test_the_verbs_on_dask_are_lazy_and_answer_like_pandas(client: Any) -> None:
    def responder(model: str, prompt: str) -> str:  # a lexicon's label, or yes for a positive text
        label = sentiment(model, prompt)
        return ("yes" if label == "positive" else "no") if prompt.startswith("Is") else label

    with FakeProvider(responder=responder) as fake:
        dfllm.create_engine("t", "openai", api_key=KEY, base_url=fake.base_url)
        df = pd.DataFrame({"text": ["great day", "awful day", "a table", "nice"], "n": [1, 2, 3, 4]})
        ddf = dd.from_pandas(df, npartitions=2, sort=False)
        labels = ["positive", "negative", "neutral"]
        question = "Is this text positive? Answer yes or no: {{text}}"
        classified = ddf.llm.classify("text", labels, engine="t", model=MODEL)
        kept = ddf.llm.filter(question, engine="t", model=MODEL, usage_columns=True)
        assert fake.chat_requests == [] and list(kept.columns) == ["text", "n"]
        pd.testing.assert_series_equal(
            classified.compute()["text_label"].reset_index(drop=True),
            df.llm.classify("text", labels, engine="t", model=MODEL)["text_label"].reset_index(drop=True))
        expected_kept = df.llm.filter(question, engine="t", model=MODEL)  # type: ignore[call-arg, arg-type]
        assert 0 < len(expected_kept) < len(df)
        assert kept.compute()["n"].tolist() == expected_kept["n"].tolist()


def test_stats_storage_credentials_and_batch_mode_are_refused_before_a_graph_is_built(tmp_path: Path) -> None:
    dfllm.create_engine("t", "openai", api_key=KEY, base_url="http://127.0.0.1:9/v1")
    ddf = dd.from_pandas(frame(4), npartitions=2)
    with pytest.raises(dfllm.ParameterError, match="stats= cannot be filled on Dask"):
        dfllm.predict(ddf, "t", MODEL, "{{text}}", "y", stats=dfllm.RunStats())
    with pytest.raises(dfllm.ParameterError, match="would put them"):
        ddf.llm.predict("t", MODEL, "{{text}}", "y", cache=FsspecCache(str(tmp_path), key="AKIA-secret"))
    with pytest.raises(dfllm.ParameterError, match="mode='batch' is not supported on Dask"):
        ddf.llm.predict("t", MODEL, "{{text}}", "y", mode="batch")


def test_without_rpm_the_cluster_spends_a_fixed_window_it_learns_from_headers(client: Any) -> None:
    # LiteLLM's shape: limit and remaining, no reset header; 40 requests per 2 s window. Two workers
    # share the window: a worker whose 429 came while the budget was spent cut its pace to one a
    # minute and sent nothing for about a minute (0.23-0.48x the cap), however long the run.
    with FakeProvider(rpm=1200, rpm_shape="fixed", rpm_window_s=2, ratelimit_headers="litellm") as fake:
        dfllm.create_engine("t", "openai", api_key=KEY, base_url=fake.base_url)
        ddf = dd.from_pandas(frame(240, "window"), npartitions=4, sort=False)
        out = ddf.llm.predict("t", "model-window", "Echo {{text}}", "answer", cache=False, errors="null").compute()
        assert out["answer"].notna().all()
        arrivals = [r.arrived_at for r in fake.chat_requests]
    # 240 rows are 6 windows at the cap (12 s); a minute's stall makes it over 60 s. A loaded 2-core
    # machine only sends later, so the bound is well under the cap and well over a stall. The two
    # workers race for each window's last requests: 4-8 429s a run here, 15 once in a full suite run
    # with coverage on (over the 5% this allowed): 10% still tells a storm from those.
    assert len(arrivals) <= 240 * 1.10 and rate_per_minute(arrivals) >= 0.5 * 1200


def test_image_cells_of_a_dask_frame_reach_their_rows_requests(client: Any) -> None:
    import io

    import pyarrow as pa
    from PIL import Image

    def png(colour: str) -> bytes:
        out = io.BytesIO()
        Image.new("RGB", (3, 2), colour).save(out, format="PNG")
        return out.getvalue()

    colours = ["red", "green", "blue", "red"]
    with FakeProvider(responder="image") as fake:
        dfllm.create_engine("t", "openai", api_key=KEY, base_url=fake.base_url)
        # Binary as Arrow's binary: dask turns an object column into strings, which bytes are not.
        photos = pd.Series([png(c) for c in colours], dtype=pd.ArrowDtype(pa.binary()))
        ddf = dd.from_pandas(pd.DataFrame({"photo": photos}), npartitions=2, sort=False)
        out = ddf.llm.predict("t", "m", "{{image:photo}}", "seen", cache=False).compute()
        assert out["seen"].tolist() == [f"3x2 {c}" for c in colours]
        assert sorted(image.colour or "" for r in fake.chat_requests for image in r.images) == \
            sorted(["red", "green", "blue", "red"])  # one request per row of a partition: red twice, in two


def test_embed_on_a_dask_frame_gives_a_vector_column_per_partition(client: Any) -> None:
    import numpy as np
    import pyarrow as pa

    from dfllm.testing import EmbeddingOptions, fake_embedding

    with FakeProvider(embeddings=EmbeddingOptions(dimension=8)) as fake:
        dfllm.create_engine("t", "openai", api_key=KEY, base_url=fake.base_url)
        ddf = dd.from_pandas(frame(6, "embed"), npartitions=2, sort=False)
        with pytest.raises(dfllm.ParameterError, match="needs dimensions="):
            ddf.llm.embed("t", "m", "text", "vec")
        out = ddf.llm.embed("t", "m", "text", "vec", dimensions=8, cache=False).compute()
        assert out["vec"].dtype == pd.ArrowDtype(pa.list_(pa.float32(), 8))
        texts = out["text"].tolist()
        got = pa.array(out["vec"].array).to_pylist()
        assert all(np.allclose(v, fake_embedding(t, 8), atol=1e-6) for t, v in zip(texts, got, strict=True))
        assert sum(len(r.inputs) for r in fake.embedding_requests) == 6


def test_sim_join_of_a_dask_frame_broadcasts_the_right_side_to_each_partition(client: Any,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np
    import pyarrow as pa

    from dfllm.drive import semantic
    from dfllm.testing import fake_embedding

    def vectors(texts: list[str]) -> pd.Series:
        flat = np.array([fake_embedding(t, 16, similarity="words") for t in texts], dtype=np.float32).ravel()
        return pd.Series(pd.arrays.ArrowExtensionArray(pa.FixedSizeListArray.from_arrays(pa.array(flat), 16)))

    names = ["red apple", "green pear", "blue plum", "yellow lemon"]
    right = pd.DataFrame({"title": ["Apple, red", "Lemon yellow", "pear green", "plum blue"]})
    right["vec"] = vectors(list(right["title"]))
    left = pd.DataFrame({"name": names})
    left["vec"] = vectors(names)
    eager = dfllm.sim_join(left, right, left_on="vec", right_on="vec", k=1)
    lazy = dfllm.sim_join(dd.from_pandas(left, npartitions=2, sort=False), dd.from_pandas(right, npartitions=2),
                          left_on="vec", right_on="vec", k=1)
    out = lazy.compute()
    assert out["title"].tolist() == eager["title"].tolist() == ["Apple, red", "pear green", "plum blue", "Lemon yellow"]
    monkeypatch.setattr(semantic, "BROADCAST_BYTES", 8)  # a right side over the limit: refused, with the fix
    with pytest.raises(dfllm.ParameterError, match="sends the right side whole to every partition"):
        dfllm.sim_join(dd.from_pandas(left, npartitions=2), right, left_on="vec", right_on="vec", k=1)
