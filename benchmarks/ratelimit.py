"""Against a server-side RPM cap: achieved rate / cap, the 429 share and client CPU per row.

    python benchmarks/ratelimit.py [--rpm 3000] [--rows 1500] [--latency-ms 50] [--concurrency 256]
        [--window-s 20] [--windows 2.5] [--cpu-repeat 3] [--only adaptive,shapes,issue,random,cpu]

Scenarios, each on a fresh fake provider process enforcing the cap (token bucket, 1 s burst):
  dfllm, cap advertised in x-ratelimit-* headers (as OpenAI does), no limits given
  dfllm, the header understates the cap 10x (another unit, say per 10 minutes), and overstates it 10x
  dfllm, no headers at all: only 429 + Retry-After to learn from; then with 5% random 429s, with and without headers
  dfllm, rpm= set to the cap
  dfllm, cold start: a short run (--cold-rows) with headers, the 429s of its first round trips
  openai SDK gather (max_retries=10, honours Retry-After) as the baseline
Then the cap's shapes, no rpm= given: a fixed window (aligned to the clock, as LiteLLM's proxy
counts), a sliding window and a token bucket, each with OpenAI's headers (limit, remaining, reset)
and with LiteLLM's (limit and remaining, no reset; a 429 names the window in
llm_provider-retry-after, no Retry-After). A window holds --rpm * --window-s / 60 requests and a
run is --windows windows long at the cap (a minute's window as LiteLLM's, --window-s 60, takes
minutes per row). Then the issue's measured cases: a short window (300 per 5 s) without headers
and with headers that say 300 (per minute, to an OpenAI client); 2,400 rows against a 1,200/min
sliding minute with headers; 4,000 rows against 3,000/min sliding over a minute with headers.
The target for every row of these two tables: >= 0.95 of the cap with <= 1% 429s.
Then, without a cap, --random-rows rows at --random-concurrency (64, predict's default) with and
without 5% random 429s (Retry-After: 1 s): the
time against the fault-free run, and CPU per row unpaced against paced by headers.
Then the client's CPU per row (the whole process, every thread) paced by a --rpm cap told in
x-ratelimit headers against unpaced (no cap), --rows rows each, best of --cpu-repeat runs of
each: the target is at most 1.5x. Then, once each, a bucket and a sliding window a minute deep.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


def measure(name: str, args: argparse.Namespace, rows: int, server: dict[str, Any],
            concurrency: int | None = None, **options: Any) -> dict[str, float]:
    concurrency = concurrency or args.concurrency
    prompts = [f"{name} row {i}" for i in range(rows)]
    with FakeProviderProcess(latency_ms=args.latency_ms, responder="echo", **server) as fake, \
            tempfile.TemporaryDirectory() as tmp:
        started, cpu = time.perf_counter(), time.process_time()
        if name.startswith("openai SDK"):
            failures = asyncio.run(sdk_gather(fake.base_url, prompts, concurrency))
        else:
            dfllm.create_engine("capped", "openai", api_key="bench", base_url=fake.base_url)
            out = pd.DataFrame({"t": prompts}).llm.predict(
                "capped", "m", "{{t}}", "y", concurrency=concurrency, cache=f"{tmp}/c.sqlite3",
                progress=False, errors="null", **options)
            failures = int(out["y"].isna().sum())
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        stats = fake.stats()
    sent = stats["requests"]
    r429 = stats["statuses"].get("429", 0)
    return {"rate": (rows - failures) / elapsed * 60, "sent": sent, "r429": r429, "failed": failures,
            "elapsed": elapsed, "cpu_us": 1e6 * cpu / rows}


def capped(name: str, args: argparse.Namespace, rows: int | None = None, *, headers: bool = True,
           scale: float = 1.0, random_429: float = 0.0, **options: Any) -> None:
    server = {"rpm": args.rpm, "no_ratelimit_headers": not headers, "advertised_rpm_scale": scale,
              "random_429": random_429, "random_seed": 1}
    row(name, args.rpm, measure(name, args, rows or args.rows, server, **options))


def shaped(name: str, args: argparse.Namespace, rows: int, *, rpm: float, shape: str, window_s: float,
           headers: str) -> None:
    """A run without rpm= against a cap of ``shape`` whose headers are in the ``headers`` style."""
    server = {"rpm": rpm, "rpm_shape": shape, "rpm_window_s": window_s, "ratelimit_headers": headers}
    row(name, rpm, measure(name, args, rows, server))


def header() -> None:
    print(f"{'client':<50}{'rows/min':>9}{'x cap':>7}{'sent':>7}{'429s':>6}{'429 %':>8}{'failed':>7}"
          f"{'CPU us/row':>11}")


def row(name: str, rpm: float, m: dict[str, float]) -> None:
    print(f"{name:<50}{m['rate']:>9.0f}{m['rate'] / rpm:>7.2f}{m['sent']:>7}{m['r429']:>6}"
          f"{100 * m['r429'] / m['sent']:>7.1f}%{m['failed']:>7}{m['cpu_us']:>9.0f}", flush=True)


def shapes(args: argparse.Namespace) -> None:
    rows = round(args.rpm * args.window_s / 60 * args.windows)
    print(f"\nshapes: cap {args.rpm:g}/min, windows of {args.window_s:g} s ({args.rpm * args.window_s / 60:.0f} "
          f"requests), {rows} rows ({args.windows:g} windows at the cap), no rpm=")
    header()
    for shape, label in (("fixed", "fixed window"), ("sliding", "sliding window"), ("bucket", "token bucket")):
        for style, said in (("openai", "reset header (OpenAI)"), ("litellm", "no reset (LiteLLM)")):
            shaped(f"dfllm, {label}, {said}", args, rows, rpm=args.rpm, shape=shape,
                   window_s=args.window_s, headers=style)


def issue_cases(args: argparse.Namespace) -> None:
    print("\nthe issue's measured cases, no rpm=")
    header()
    shaped("dfllm, 300 per 5 s fixed, no headers", args, 1500, rpm=3600, shape="fixed", window_s=5,
           headers="none")
    shaped("dfllm, 300 per 5 s fixed, headers say 300", args, 1500, rpm=3600, shape="fixed", window_s=5,
           headers="openai")
    shaped("dfllm, 2,400 rows, 1,200/min sliding 60 s, headers", args, 2400, rpm=1200, shape="sliding",
           window_s=60, headers="openai")
    shaped("dfllm, 4,000 rows, 3,000/min sliding 60 s, headers", args, 4000, rpm=3000, shape="sliding",
           window_s=60, headers="openai")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rpm", type=float, default=3000)
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--cold-rows", type=int, default=200)
    parser.add_argument("--random-rows", type=int, default=2000)
    # The issue's fault-free baseline (2,000 rows in about 2.5 s) is predict's default concurrency.
    parser.add_argument("--random-concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--window-s", type=float, default=20.0, help="the shapes' window length")
    parser.add_argument("--windows", type=float, default=2.5, help="the shapes' run length, in windows at the cap")
    parser.add_argument("--cpu-repeat", type=int, default=3)
    parser.add_argument("--only", default="adaptive,shapes,issue,random,cpu",
                        help="the sections to run, comma-separated: adaptive, shapes, issue, random, cpu")
    args = parser.parse_args()
    sections = set(args.only.split(","))
    print(f"latency {args.latency_ms:g} ms, concurrency {args.concurrency}")
    if "adaptive" in sections:
        adaptive(args)
    if "shapes" in sections:
        shapes(args)
    if "issue" in sections:
        issue_cases(args)
    if "random" in sections:
        random_faults(args)
    if "cpu" in sections:
        paced_cpu(args)


def adaptive(args: argparse.Namespace) -> None:
    print(f"\nserver cap {args.rpm:g}/min (token bucket, 1 s burst), {args.rows} rows")
    header()
    capped("dfllm, cap in x-ratelimit headers", args)
    capped("dfllm, header understates the cap 10x", args, scale=0.1)
    capped("dfllm, header overstates the cap 10x", args, scale=10.0)
    capped("dfllm, no headers (429 + Retry-After only)", args, headers=False)
    capped("dfllm, no headers, and 5% random 429s", args, headers=False, random_429=0.05)
    capped("dfllm, cap in headers, and 5% random 429s", args, random_429=0.05)
    capped("dfllm, rpm= set to the cap", args, headers=False, rpm=args.rpm)
    capped(f"dfllm, cold start, {args.cold_rows} rows, headers", args, args.cold_rows)
    capped(f"dfllm, cold start, {args.cold_rows} rows, no headers", args, args.cold_rows, headers=False)
    capped("openai SDK gather, max_retries=10", args, headers=False)


def random_faults(args: argparse.Namespace) -> None:
    rows, c = args.random_rows, args.random_concurrency
    print(f"\nno cap, {rows} rows, latency {args.latency_ms:g} ms, concurrency {c} (predict's default)")
    clean = measure("dfllm, no faults", args, rows, {}, c)
    faulty = measure("dfllm, 5% random 429s", args, rows, {"random_429": 0.05, "random_seed": 1}, c)
    paced = measure("dfllm, paced by headers", args, rows, {"rpm": 1e9}, c)
    print(f"{'client':<46}{'seconds':>9}{'x clean':>9}{'sent':>7}{'429s':>6}{'failed':>7}{'CPU us/row':>11}")
    for name, m in (("dfllm, no faults, unpaced", clean), ("dfllm, 5% random 429s (Retry-After 1 s)", faulty),
                    ("dfllm, paced by x-ratelimit headers", paced)):
        print(f"{name:<46}{m['elapsed']:>9.2f}{m['elapsed'] / clean['elapsed']:>9.2f}{m['sent']:>7}{m['r429']:>6}"
              f"{m['failed']:>7}{m['cpu_us']:>9.0f}")
    print(f"CPU per row, paced / unpaced: {paced['cpu_us'] / clean['cpu_us']:.2f}")


def paced_cpu(args: argparse.Namespace) -> None:
    """Client CPU per row paced by a cap the headers tell, against unpaced, best of N each: a
    paced run spends most of its time waiting, so its CPU per row shows what each wake-up costs."""
    rows, repeat = args.rows, args.cpu_repeat
    print(f"\nclient CPU per row, {rows} rows, latency {args.latency_ms:g} ms, concurrency {args.concurrency}, "
          f"best of {repeat}")
    unpaced = [measure("dfllm, unpaced", args, rows, {})["cpu_us"] for _ in range(repeat)]
    paced = [measure("dfllm, paced by headers", args, rows, {"rpm": args.rpm})["cpu_us"] for _ in range(repeat)]
    for name, runs in (("unpaced (no cap)", unpaced), (f"paced by a {args.rpm:g}/min cap in headers", paced)):
        print(f"{name:<46} best {min(runs):>6.0f} us/row  (runs {', '.join(f'{r:.0f}' for r in runs)})")
    ratio = min(paced) / min(unpaced)
    print(f"CPU per row, paced / unpaced: {ratio:.2f}x (target <= 1.5x) -> {'OK' if ratio <= 1.5 else 'NOT MET'}")
    # A budget a minute deep, as OpenAI's (the fake's default bucket holds a second's): its
    # first --rpm rows go unpaced, the rest at the cap; sends then go in groups.
    deep_rows = 2 * round(args.rpm)
    for shape in ("bucket", "sliding"):
        m = measure("dfllm, deep", args, deep_rows, {"rpm": args.rpm, "rpm_shape": shape, "rpm_burst": args.rpm,
                                                      "rpm_window_s": 60, "ratelimit_headers": "openai"})
        print(f"{f'paced, a minute-deep {shape}, {deep_rows} rows':<46} {m['cpu_us']:>11.0f} us/row  "
              f"({m['cpu_us'] / min(unpaced):.2f}x unpaced; {m['rate'] / args.rpm:.2f}x the cap, {m['r429']} 429s)")


if __name__ == "__main__":
    main()
