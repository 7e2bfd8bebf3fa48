"""The executor at scale, fake provider in its own process; each line prints its measured ratio.

    python benchmarks/scale.py [--only cache,dedup,kill,million] [--million-rows 1000000] [--repeat 1]

  cache    re-run a finished call from the cache (100,000 rows): rows/s (target >= 150,000), requests sent (0)
  dedup    50% duplicate prompts: requests sent = unique prompts
  kill     kill -9 about half way, re-run: requests sent <= remaining rows + concurrency
  million  1,000,000 rows against a 0 ms provider in a child process: rows/s, peak RSS and dfllm's share
           of it (peak minus the RSS once the frame is built; target <= 450 MB)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


def bench_cache(tmp: str, repeat: int) -> None:
    rows = 100_000
    with FakeProviderProcess(responder="echo") as fake:
        dfllm.create_engine("b", "openai", api_key="bench", base_url=fake.base_url)
        df = frame(rows)
        df.llm.predict("b", "m", "{{t}}", "y", concurrency=256, cache=f"{tmp}/cache.sqlite3", progress=False)
        fake.reset()
        rates = []
        for _ in range(repeat):
            started = time.perf_counter()
            out = df.llm.predict("b", "m", "{{t}}", "y", concurrency=256, cache=f"{tmp}/cache.sqlite3",
                                 progress=False)
            rates.append(rows / (time.perf_counter() - started))
            assert out["y"].notna().all()
        sent = fake.stats()["requests"]
    runs = ", ".join(f"{r:,.0f}" for r in rates)
    print(f"cache    re-run {rows:,} rows from cache: best {max(rates):,.0f} rows/s "
          f"({max(rates) / 150_000:.2f}x the 150,000 target; runs {runs}), requests sent {sent}")


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


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def million_child(base_url: str, cache: str, rows: int) -> None:
    """The measured process: the frame built, then one ``predict``; prints its numbers as JSON."""
    dfllm.create_engine("child", "openai", api_key="bench", base_url=base_url)
    before_frame = _rss_mb()
    df = frame(rows)
    with_frame = _rss_mb()
    frame_mb = df.memory_usage(deep=True).sum() / 2**20
    started = time.perf_counter()
    out = df.llm.predict("child", "m", "{{t}}", "y", concurrency=256, cache=cache, progress=False)
    elapsed = time.perf_counter() - started
    assert out["y"].notna().all()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"elapsed_s": elapsed, "peak_rss_mb": peak, "before_frame_mb": before_frame,
                      "with_frame_mb": with_frame, "frame_mb": frame_mb}))


def bench_million(tmp: str, rows: int, repeat: int) -> None:
    for run in range(repeat):
        with FakeProviderProcess(responder="echo") as fake:
            done = subprocess.run([sys.executable, __file__, "--million-child", fake.base_url,
                                   f"{tmp}/million{run}.sqlite3", str(rows)],
                                  capture_output=True, text=True, check=True)
            sent = fake.stats()["requests"]
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"million  {rows:,} rows, 0 ms provider: {rows / r['elapsed_s']:,.0f} rows/s, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB ({1024 * r['peak_rss_mb'] / rows:.2f} KB/row); "
              f"dfllm's share (peak - RSS with the frame built) {r['peak_rss_mb'] - r['with_frame_mb']:.0f} MB "
              f"(target <= 450); the frame {r['frame_mb']:.0f} MB deep, RSS before it "
              f"{r['before_frame_mb']:.0f} MB, with it {r['with_frame_mb']:.0f} MB; requests sent {sent}",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="cache,dedup,kill,million")
    parser.add_argument("--million-rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=1, help="runs of cache and million (report the best)")
    parser.add_argument("--million-child", nargs=3, metavar=("BASE_URL", "CACHE", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.million_child:
        million_child(args.million_child[0], args.million_child[1], int(args.million_child[2]))
        return
    chosen = args.only.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        if "cache" in chosen:
            bench_cache(tmp, args.repeat)
        if "dedup" in chosen:
            bench_dedup(tmp)
        if "kill" in chosen:
            bench_kill(tmp)
        if "million" in chosen:
            bench_million(tmp, args.million_rows, args.repeat)


if __name__ == "__main__":
    main()
