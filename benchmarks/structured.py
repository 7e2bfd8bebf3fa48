"""Structured outputs against a 50 ms provider: schema vs plain text on the same rows, one run each.

    python benchmarks/structured.py [--rows 20000] [--concurrency 256] [--latency-ms 50]

The fake provider runs in its own process and answers a schema request with a conforming JSON
object (as a schema-enforcing API does). Every run writes a fresh persistent cache; rounds
alternate which kind goes first, and the best round of each is shown. Printed: rows/s of each and
their ratio (target >= 0.9), client CPU per row of each run, and the client CPU per row spent
parsing and validating (the executor's check of every answer, which write-back reuses).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd
from _common import Result, timed

import dfllm
from dfllm.engines.base import Completion
from dfllm.outputs.parse import validator
from dfllm.outputs.schema import normalise_schema
from dfllm.testing import FakeProviderProcess
from dfllm.testing._responders import conforming

SCHEMA = {"name": str, "count": int, "score": float, "sentiment": Literal["positive", "neutral", "negative"],
          "tags": list[str]}


def run(df: pd.DataFrame, c: int, cache: str, **options: object) -> Result:
    name = "schema" if "schema" in options else "plain text"
    result = timed(name, len(df), lambda: df.llm.predict("bench", "m", "{{text}}", "answer", concurrency=c,
                                                         cache=cache, progress=False, **options))
    stats = dfllm.last_run()
    if stats is None or stats.requests != len(df) or stats.failed_rows or stats.repairs:
        raise SystemExit(f"{name} run was not clean: {stats}")
    return result


def parse_cpu_us_per_row(prompts: list[str]) -> float:
    """Client CPU to parse and validate each answer, as the executor's check does for every row."""
    schema = normalise_schema(SCHEMA)
    answers = [Completion(conforming(schema.wire, p)) for p in prompts]
    check = validator(schema)
    started = time.process_time()
    for answer in answers:
        assert isinstance(check(answer), Completion)
    return 1e6 * (time.process_time() - started) / len(answers)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of both runs; best round of each is shown")
    args = parser.parse_args()
    n, c = args.rows, args.concurrency
    best: dict[str, Result] = {}
    with FakeProviderProcess(latency_ms=args.latency_ms, responder="echo") as fake, \
            tempfile.TemporaryDirectory() as tmp:
        dfllm.create_engine("bench", "openai", api_key="bench", base_url=fake.base_url)
        for round_ in range(args.rounds):
            kinds = ["plain", "schema"] if round_ % 2 == 0 else ["schema", "plain"]
            for kind in kinds:
                df = pd.DataFrame({"text": [f"{kind} round {round_} row {i}" for i in range(n)]})
                options = {"schema": SCHEMA} if kind == "schema" else {}
                r = run(df, c, os.path.join(tmp, f"{kind}{round_}.sqlite3"), **options)
                if r.name not in best or r.rows_per_s > best[r.name].rows_per_s:
                    best[r.name] = r
        served = fake.stats()
    plain, typed = best["plain text"], best["schema"]
    prompts = [f"schema row {i}" for i in range(n)]
    ideal = c / (args.latency_ms / 1000)
    print(f"rows={n} concurrency={c} latency={args.latency_ms:g}ms ideal={ideal:.0f} rows/s "
          f"(best of {args.rounds} rounds; server saw {served['requests']} requests, statuses {served['statuses']})")
    print(f"{'run':<14}{'rows/s':>10}{'cpu ms/row':>12}")
    for r in (plain, typed):
        print(f"{r.name:<14}{r.rows_per_s:>10.0f}{r.cpu_ms_per_row:>12.3f}")
    print(f"schema / plain text: {typed.rows_per_s / plain.rows_per_s:.2f}x rows/s (target >= 0.9)")
    print(f"parse + validate: {parse_cpu_us_per_row(prompts):.1f} us client CPU per row "
          f"({len(SCHEMA)} fields: str, int, float, Literal, list[str])")


if __name__ == "__main__":
    main()
