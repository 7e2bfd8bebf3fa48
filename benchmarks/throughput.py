"""Throughput against a 50 ms provider: dfllm vs raw aiohttp gather vs the openai SDK, one run.

    python benchmarks/throughput.py [--rows 20000] [--concurrency 256] [--latency-ms 50]

The fake provider runs in its own process. dfllm runs with its persistent cache ON (a fresh
file), so the ratio includes the cost of writing every answer. Ideal = concurrency / latency.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd
from _common import Result, openai_sdk_gather, raw_aiohttp_gather, table, timed

import dfllm
from dfllm.testing import FakeProviderProcess


def one_round(base_url: str, n: int, c: int, tag: str, cache: str) -> list[Result]:
    def prompts(client: str) -> list[str]:
        return [f"{client} {tag} row {i}" for i in range(n)]

    df = pd.DataFrame({"text": prompts("dfllm")})
    results = [
        timed("raw aiohttp gather", n, lambda: asyncio.run(raw_aiohttp_gather(base_url, prompts("raw"), c))),
        timed("dfllm (cache on)", n, lambda: df.llm.predict("bench", "m", "{{text}}", "answer",
                                                             concurrency=c, cache=cache, progress=False)),
        timed("openai SDK gather", n, lambda: asyncio.run(openai_sdk_gather(base_url, prompts("sdk"), c))),
    ]
    run = dfllm.last_run()
    if run is None or run.requests != n or run.failed_rows:
        raise SystemExit(f"dfllm run was not clean: {run}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of all clients; best round is shown")
    args = parser.parse_args()
    n, c = args.rows, args.concurrency
    best: dict[str, Result] = {}
    with FakeProviderProcess(latency_ms=args.latency_ms, responder="echo") as fake, \
            tempfile.TemporaryDirectory() as tmp:
        dfllm.create_engine("bench", "openai", api_key="bench", base_url=fake.base_url)
        for round_ in range(args.rounds):
            cache = os.path.join(tmp, f"round{round_}.sqlite3")
            for r in one_round(fake.base_url, n, c, f"round {round_}", cache):
                if r.name not in best or r.rows_per_s > best[r.name].rows_per_s:
                    best[r.name] = r
        served = fake.stats()
    ideal = c / (args.latency_ms / 1000)
    print(f"rows={n} concurrency={c} latency={args.latency_ms:g}ms ideal={ideal:.0f} rows/s "
          f"(best of {args.rounds} rounds; server saw {served['requests']} requests, statuses {served['statuses']})")
    print(table(list(best.values()), ideal, "raw aiohttp gather"))
    d, sdk = best["dfllm (cache on)"], best["openai SDK gather"]
    print(f"dfllm / openai SDK: {d.rows_per_s / sdk.rows_per_s:.2f}x rows/s, "
          f"{sdk.cpu_ms_per_row / d.cpu_ms_per_row:.2f}x less client CPU per row")


if __name__ == "__main__":
    main()
