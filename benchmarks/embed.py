"""Embeddings throughput: ``dfllm.embed`` vs raw aiohttp vs the openai SDK, the same batches, one run.

    python benchmarks/embed.py [--rows 100000] [--dimension 256] [--batch-size 256] [--latency-ms 50]
                               [--concurrency 64] [--profile]

The fake provider runs in its own process and answers base64 float32 vectors of ``--dimension``
numbers (256 by default: OpenAI's shortened text-embedding-3 size, ~1.4 KB of base64 per vector,
~350 KB per 256-text answer; 1536, the full size, makes the fake's own Python vector maths the
whole story on a small machine). Every client sends its own unique texts in requests of
``--batch-size`` inputs with ``--concurrency`` in flight, and ends with the same useful thing: the
vectors in one contiguous float32 buffer (raw: a numpy (rows, dim) array; SDK: the same, from the
float lists it gives back; dfllm: its Arrow ``fixed_size_list<float32>`` column). dfllm runs with
its persistent cache ON (a fresh file), so its number includes writing every vector to it.

Also printed: dfllm's peak RSS over the RSS before the call (sampled every 5 ms from /proc), the
result column's type, and with ``--profile`` a cProfile of a second dfllm call (top 25 by
cumulative time). ``dfllm.embed (cache off)`` is the same call without the cache: the cache's
share of the gap. Clients share the machine's cores with the fake: cpu ms/row is the client's own.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import pandas as pd
import pyarrow  # noqa: F401  (imported up front, as dfllm's column needs it: not timed as dfllm's)
from _common import Result, table, timed

import dfllm
from dfllm.config.options import DEFAULT_CONCURRENCY
from dfllm.testing import FakeProviderProcess
from dfllm.testing._embeddings import fake_embedding


def texts(client: str, n: int) -> list[str]:
    """Unique product-like texts (~60 characters), distinct per client so no client reuses another's."""
    return [f"{client} item {i}: stainless steel water bottle, 750 ml, colour {i % 97}" for i in range(n)]


def batches(items: list[str], size: int) -> Iterator[tuple[int, list[str]]]:
    for start in range(0, len(items), size):
        yield start, items[start:start + size]


async def raw_aiohttp_embed(base_url: str, items: list[str], dim: int, size: int, concurrency: int) -> np.ndarray:
    """What a careful engineer writes by hand: one session, a semaphore, gather, base64 into one array."""
    import aiohttp

    out = np.empty((len(items), dim), dtype="<f4")
    semaphore = asyncio.Semaphore(concurrency)
    headers = {"Authorization": "Bearer bench", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        async def one(start: int, batch: list[str]) -> None:
            body = {"model": "m", "input": batch, "encoding_format": "base64"}
            async with semaphore, session.post(f"{base_url}/embeddings", data=json.dumps(body)) as resp:
                resp.raise_for_status()
                payload = json.loads(await resp.read())
            for item in payload["data"]:
                out[start + item["index"]] = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")

        await asyncio.gather(*(one(start, batch) for start, batch in batches(items, size)))
    return out


async def openai_sdk_embed(base_url: str, items: list[str], dim: int, size: int, concurrency: int) -> np.ndarray:
    """The plain ``openai`` SDK: AsyncOpenAI + semaphore + gather (it asks for base64 and gives float lists)."""
    import openai

    try:  # openai 3.x is built on httpx2; earlier releases on httpx
        import httpx2 as httpx
    except ImportError:
        import httpx  # type: ignore[no-redef,import-not-found]

    out = np.empty((len(items), dim), dtype="<f4")
    semaphore = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with openai.AsyncOpenAI(api_key="bench", base_url=base_url, max_retries=0,
                                  http_client=openai.DefaultAsyncHttpxClient(limits=limits)) as client:
        async def one(start: int, batch: list[str]) -> None:
            async with semaphore:
                response = await client.embeddings.create(model="m", input=batch)
            for item in response.data:
                out[start + item.index] = item.embedding

        await asyncio.gather(*(one(start, batch) for start, batch in batches(items, size)))
    return out


class PeakRss:
    """The process's peak RSS over a block, sampled from /proc every ``interval_s`` (ru_maxrss only rises)."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s, self.before_mb, self.peak_mb = interval_s, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def now_mb() -> float:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mb = max(self.peak_mb, self.now_mb())

    def __enter__(self) -> PeakRss:
        self.before_mb = self.peak_mb = self.now_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.now_mb())


def dfllm_call(n: int, size: int, cache: str | bool, tag: str) -> Callable[[], pd.DataFrame]:
    df = pd.DataFrame({"text": texts(f"dfllm {tag}", n)})
    return lambda: dfllm.embed(df, "bench", "m", "text", "vec", embed_batch_size=size, cache=cache, progress=False)


def check_dfllm(frame: pd.DataFrame, n: int, dim: int, size: int, tag: str) -> None:
    """The run was clean (one request a batch, no failed row) and its vectors are the fake's."""
    run = dfllm.last_run()
    wanted = -(-n // size)
    if run is None or run.requests != wanted or run.failed_rows:
        raise SystemExit(f"dfllm run was not clean (wanted {wanted} requests): {run}")
    first = np.asarray(frame["vec"].iloc[0], dtype="<f4")
    if not np.array_equal(first, np.asarray(fake_embedding(texts(f"dfllm {tag}", 1)[0], dim), dtype="<f4")):
        raise SystemExit("dfllm's first vector is not the fake's")


def check_array(name: str, out: np.ndarray, client: str, dim: int) -> None:
    last = len(out) - 1
    if not np.array_equal(out[last], np.asarray(fake_embedding(texts(client, last + 1)[last], dim), dtype="<f4")):
        raise SystemExit(f"{name}: the last vector is not the fake's")


def timed_dfllm(name: str, args: argparse.Namespace, cache: str | bool, tag: str) -> tuple[Result, str]:
    """One timed ``dfllm.embed`` call, checked; its result column's type."""
    call = dfllm_call(args.rows, args.batch_size, cache, tag)
    frame: list[pd.DataFrame] = []
    result = timed(name, args.rows, lambda: frame.append(call()))
    check_dfllm(frame[0], args.rows, args.dimension, args.batch_size, tag)
    return result, str(frame[0]["vec"].dtype)


def run_clients(base_url: str, args: argparse.Namespace, tmp: str) -> tuple[list[Result], PeakRss, str]:
    n, dim, size, c = args.rows, args.dimension, args.batch_size, args.concurrency
    with PeakRss() as rss:  # dfllm first: the RSS others leave behind would hide its own
        cached, column_type = timed_dfllm("dfllm.embed (cache on)", args, os.path.join(tmp, "timed.sqlite3"), "on")
    # The same call writing no cache: what the cache's writes cost.
    results = [cached, timed_dfllm("dfllm.embed (cache off)", args, False, "off")[0]]
    arrays: dict[str, np.ndarray] = {}
    for name, client, fn in (("raw aiohttp gather", "raw", raw_aiohttp_embed),
                             ("openai SDK gather", "sdk", openai_sdk_embed)):
        items = texts(client, n)
        results.append(timed(name, n, lambda: arrays.__setitem__(
            name, asyncio.run(fn(base_url, items, dim, size, c)))))  # noqa: B023  (called at once)
        check_array(name, arrays.pop(name), client, dim)
    return results, rss, column_type


def warm_up(base_url: str, args: argparse.Namespace, tmp: str) -> None:
    """One small call of each client first: connections, imports and the server's first requests untimed."""
    n = 2 * args.batch_size
    dfllm_call(n, args.batch_size, os.path.join(tmp, "warm.sqlite3"), "warm")()
    asyncio.run(raw_aiohttp_embed(base_url, texts("warm raw", n), args.dimension, args.batch_size, args.concurrency))
    asyncio.run(openai_sdk_embed(base_url, texts("warm sdk", n), args.dimension, args.batch_size, args.concurrency))


def profile_dfllm(args: argparse.Namespace, tmp: str) -> str:
    call = dfllm_call(args.rows, args.batch_size, os.path.join(tmp, "profiled.sqlite3"), "profiled")
    profiler = cProfile.Profile()
    profiler.runcall(call)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(25)
    return text.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dimension", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="dfllm's default")
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--profile", action="store_true", help="then profile a second dfllm call")
    args = parser.parse_args()
    n, c, size = args.rows, args.concurrency, args.batch_size
    with FakeProviderProcess(latency_ms=args.latency_ms, embedding_dimension=args.dimension) as fake, \
            tempfile.TemporaryDirectory() as tmp:
        dfllm.create_engine("bench", "openai", api_key="bench", base_url=fake.base_url, concurrency=c)
        warm_up(fake.base_url, args, tmp)
        fake.reset()
        started = time.perf_counter()
        results, rss, column_type = run_clients(fake.base_url, args, tmp)
        served = fake.stats()
        profile = profile_dfllm(args, tmp) if args.profile else ""
    ideal = c * size / (args.latency_ms / 1000)
    print(f"rows={n} dimension={args.dimension} batch={size} concurrency={c} latency={args.latency_ms:g}ms "
          f"ideal={ideal:.0f} rows/s ({time.perf_counter() - started:.0f} s; server saw {served['requests']} "
          f"requests, statuses {served['statuses']}, peak in flight {served['peak_in_flight']})")
    print(table(results, ideal, "raw aiohttp gather"))
    d, _, raw, sdk = results
    print(f"dfllm / raw aiohttp: {d.rows_per_s / raw.rows_per_s:.2f}x rows/s, "
          f"{d.cpu_ms_per_row / raw.cpu_ms_per_row:.2f}x the client CPU per row; "
          f"dfllm / openai SDK: {d.rows_per_s / sdk.rows_per_s:.2f}x rows/s")
    print(f"dfllm peak RSS {rss.peak_mb - rss.before_mb:.0f} MB over the {rss.before_mb:.0f} MB before the call "
          f"(the vectors alone: {n * args.dimension * 4 / 2**20:.0f} MB); column {column_type}")
    if profile:
        print(profile)


if __name__ == "__main__":
    main()
