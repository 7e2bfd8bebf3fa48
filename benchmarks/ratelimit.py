"""Against a server-side RPM cap the client is not told: achieved rate / cap, and the 429 share.

    python benchmarks/ratelimit.py [--rpm 3000] [--rows 1500] [--latency-ms 50] [--concurrency 256]

Scenarios, each on a fresh fake provider process enforcing the cap:
  dfllm, cap advertised in x-ratelimit-* headers (as OpenAI does), no limits given
  dfllm, no headers at all: only 429 + Retry-After to learn from
  dfllm, rpm= set to the cap
  openai SDK gather (max_retries=10, honours Retry-After) as the baseline
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd

import dfllm
from dfllm.testing import FakeProviderProcess


async def sdk_gather(base_url: str, prompts: list[str], concurrency: int) -> int:
    import openai

    semaphore = asyncio.Semaphore(concurrency)
    failures = 0
    async with openai.AsyncOpenAI(api_key="bench", base_url=base_url, max_retries=10) as client:
        async def one(prompt: str) -> None:
            nonlocal failures
            async with semaphore:
                try:
                    await client.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}])
                except openai.APIError:
                    failures += 1

        await asyncio.gather(*(one(p) for p in prompts))
    return failures


def scenario(name: str, args: argparse.Namespace, headers: bool, **options: object) -> None:
    prompts = [f"{name} row {i}" for i in range(args.rows)]
    with FakeProviderProcess(latency_ms=args.latency_ms, rpm=args.rpm, no_ratelimit_headers=not headers,
                             responder="echo") as fake, tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        if name.startswith("openai SDK"):
            failures = asyncio.run(sdk_gather(fake.base_url, prompts, args.concurrency))
        else:
            dfllm.create_engine("capped", "openai", api_key="bench", base_url=fake.base_url)
            out = pd.DataFrame({"t": prompts}).llm.predict(
                "capped", "m", "{{t}}", "y", concurrency=args.concurrency, cache=f"{tmp}/c.sqlite3",
                progress=False, errors="null", **options)
            failures = int(out["y"].isna().sum())
        elapsed = time.perf_counter() - started
        stats = fake.stats()
    sent = stats["requests"]
    r429 = stats["statuses"].get("429", 0)
    rate = (args.rows - failures) / elapsed * 60
    print(f"{name:<44}{rate:>9.0f}{rate / args.rpm:>9.2f}{sent:>9}{r429:>7}{100 * r429 / sent:>7.1f}%{failures:>8}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rpm", type=float, default=3000)
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--concurrency", type=int, default=256)
    args = parser.parse_args()
    print(f"server cap {args.rpm:g}/min (token bucket, 1 s burst), {args.rows} rows, latency {args.latency_ms:g} ms, "
          f"concurrency {args.concurrency}")
    print(f"{'client':<44}{'rows/min':>9}{'x cap':>9}{'sent':>9}{'429s':>7}{'429 %':>8}{'failed':>8}")
    scenario("dfllm, cap in x-ratelimit headers", args, headers=True)
    scenario("dfllm, no headers (429 + Retry-After only)", args, headers=False)
    scenario("dfllm, rpm= set to the cap", args, headers=False, rpm=args.rpm)
    scenario("openai SDK gather, max_retries=10", args, headers=False)


if __name__ == "__main__":
    main()
