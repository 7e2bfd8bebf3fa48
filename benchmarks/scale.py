"""The executor at scale, fake provider in its own process; each line prints its measured ratio.

    python benchmarks/scale.py [--only cache,dedup,kill,million] [--million-rows 1000000]

  cache    re-run a finished call from the cache: rows/s (target >= 100,000), requests sent (0)
  dedup    50% duplicate prompts: requests sent = unique prompts
  kill     kill -9 about half way, re-run: requests sent <= remaining rows + concurrency
  million  1,000,000 rows against a 0 ms provider in a child process: rows/s and peak memory
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

import dfllm
from dfllm.testing import FakeProviderProcess

CHILD = str(Path(__file__).resolve().parent / "_child.py")


def frame(rows: int, unique: int | None = None) -> pd.DataFrame:
    return pd.DataFrame({"t": [f"prompt {i % (unique or rows)}" for i in range(rows)]})


def bench_cache(tmp: str) -> None:
    rows = 100_000
    with FakeProviderProcess(responder="echo") as fake:
        dfllm.create_engine("b", "openai", api_key="bench", base_url=fake.base_url)
        df = frame(rows)
        df.llm.predict("b", "m", "{{t}}", "y", concurrency=256, cache=f"{tmp}/cache.sqlite3", progress=False)
        fake.reset()
        started = time.perf_counter()
        out = df.llm.predict("b", "m", "{{t}}", "y", concurrency=256, cache=f"{tmp}/cache.sqlite3", progress=False)
        elapsed = time.perf_counter() - started
        sent = fake.stats()["requests"]
    assert out["y"].notna().all()
    print(f"cache    re-run {rows} rows from cache: {rows / elapsed:,.0f} rows/s "
          f"({rows / elapsed / 100_000:.2f}x the 100,000 target), requests sent {sent}")


def bench_dedup(tmp: str) -> None:
    rows, unique = 20_000, 10_000
    with FakeProviderProcess(latency_ms=50, responder="echo") as fake:
        dfllm.create_engine("b", "openai", api_key="bench", base_url=fake.base_url)
        out = frame(rows, unique).llm.predict("b", "m", "{{t}}", "y", concurrency=256,
                                              cache=f"{tmp}/dedup.sqlite3", progress=False)
        sent = fake.stats()["requests"]
    assert out["y"].tolist() == [f"prompt {i % unique}" for i in range(rows)]
    print(f"dedup    {rows} rows, {unique} unique prompts: requests sent {sent} "
          f"({sent / unique:.2f}x unique prompts)")


def bench_kill(tmp: str) -> None:
    rows, concurrency = 6000, 64
    cache = f"{tmp}/kill.sqlite3"
    with FakeProviderProcess(latency_ms=50, responder="echo") as fake:
        child = subprocess.Popen([sys.executable, CHILD, fake.base_url, cache, str(rows), str(concurrency)],
                                 stdout=subprocess.DEVNULL)
        while fake.stats()["requests"] < rows // 2 and child.poll() is None:
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait()
        before = fake.stats()["requests"]
        answered = sqlite3.connect(cache).execute("SELECT count(*) FROM responses").fetchone()[0]
        fake.reset()
        dfllm.create_engine("b", "openai", api_key="bench", base_url=fake.base_url)
        out = frame(rows).llm.predict("b", "m", "{{t}}", "y", concurrency=concurrency, cache=cache, progress=False)
        resent = fake.stats()["requests"]
    remaining = rows - answered
    assert out["y"].notna().all()
    print(f"kill     kill -9 after {before} requests ({answered} answers committed); re-run sent {resent} "
          f"for {remaining} remaining rows: {resent - remaining} over (bound: concurrency {concurrency}) "
          f"-> {'OK' if resent <= remaining + concurrency else 'OVER'}")


def bench_million(tmp: str, rows: int) -> None:
    with FakeProviderProcess(responder="echo") as fake:
        done = subprocess.run([sys.executable, CHILD, fake.base_url, f"{tmp}/million.sqlite3", str(rows), "256"],
                              capture_output=True, text=True, check=True)
        sent = fake.stats()["requests"]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"million  {rows:,} rows, 0 ms provider: {rows / result['elapsed_s']:,.0f} rows/s, "
          f"peak RSS {result['peak_rss_mb']:.0f} MB ({1024 * result['peak_rss_mb'] / rows:.2f} KB/row), "
          f"requests sent {sent}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="cache,dedup,kill,million")
    parser.add_argument("--million-rows", type=int, default=1_000_000)
    args = parser.parse_args()
    chosen = args.only.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        if "cache" in chosen:
            bench_cache(tmp)
        if "dedup" in chosen:
            bench_dedup(tmp)
        if "kill" in chosen:
            bench_kill(tmp)
        if "million" in chosen:
            bench_million(tmp, args.million_rows)


if __name__ == "__main__":
    main()
