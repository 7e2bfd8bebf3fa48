"""Shared pieces of the benchmarks: timing a client, and the two baselines dfllm is held against."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Result:
    name: str
    rows: int
    wall_s: float
    cpu_s: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s

    @property
    def cpu_ms_per_row(self) -> float:
        return 1000 * self.cpu_s / self.rows


def timed(name: str, rows: int, fn: Callable[[], Any]) -> Result:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return Result(name, rows, time.perf_counter() - wall, time.process_time() - cpu)


async def raw_aiohttp_gather(base_url: str, prompts: list[str], concurrency: int) -> list[str]:
    """What a careful engineer writes by hand: one session, a semaphore, gather."""
    import aiohttp

    semaphore = asyncio.Semaphore(concurrency)
    url = f"{base_url}/chat/completions"
    headers = {"Authorization": "Bearer bench", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), headers=headers) as s:
        async def one(prompt: str) -> str:
            body = {"model": "m", "messages": [{"role": "user", "content": prompt}]}
            async with semaphore, s.post(url, data=json.dumps(body)) as resp:
                payload = await resp.json()
                return str(payload["choices"][0]["message"]["content"])

        return list(await asyncio.gather(*(one(p) for p in prompts)))


async def openai_sdk_gather(base_url: str, prompts: list[str], concurrency: int) -> list[str]:
    """The plain ``openai`` SDK: AsyncOpenAI + semaphore + gather."""
    import openai

    try:  # openai 3.x is built on httpx2; earlier releases on httpx
        import httpx2 as httpx
    except ImportError:
        import httpx  # type: ignore[no-redef]

    semaphore = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with openai.AsyncOpenAI(api_key="bench", base_url=base_url, max_retries=0,
                                  http_client=openai.DefaultAsyncHttpxClient(limits=limits)) as client:
        async def one(prompt: str) -> str:
            async with semaphore:
                r = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}])
                return r.choices[0].message.content or ""

        return list(await asyncio.gather(*(one(p) for p in prompts)))


def table(results: list[Result], ideal_rows_per_s: float, reference: str) -> str:
    ref = next(r for r in results if r.name == reference)
    lines = [f"{'client':<26}{'rows/s':>10}{'cpu ms/row':>12}{'x ideal':>9}{'x ' + reference:>22}"]
    for r in results:
        lines.append(f"{r.name:<26}{r.rows_per_s:>10.0f}{r.cpu_ms_per_row:>12.3f}"
                     f"{r.rows_per_s / ideal_rows_per_s:>9.2f}{r.rows_per_s / ref.rows_per_s:>22.2f}")
    return "\n".join(lines)
