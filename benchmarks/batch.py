"""mode='batch' at scale: 100,000 unique prompts as provider batch jobs against the fake's Files and
Batch API, beside the same rows online; one run, one table, then its ratios.

    python benchmarks/batch.py [--rows 100000] [--price-prompt 0.15] [--price-completion 0.60]
                               [--concurrency 256] [--polls-to-complete 2] [--poll-s 0.05] [--tracemalloc]

The fake provider runs in its own process (its CPU is not the client's). Each measured call runs in
a child process of its own, so its peak RSS is its own: the client's CPU seconds (process time of
the one ``predict`` call), wall time, and dfllm's share of memory (peak RSS minus the RSS once the
frame is built, as scale.py's million measures it). Requests are read from the fake's /_stats
before and after each call: uploads, batch creates, polls, downloads, and chat requests (every chat
answer's status; the files and batch routes are not counted there), which must be 0 in batch mode,
and all requests (the Batch API probe, uploads, creates, polls, downloads, chat).

  batch    a fresh cache: the rows' unique prompts uploaded and submitted (50,000 lines a job), polled
           every --poll-s growing 1.5x, the output files streamed back into the cache
  resumed  the same call again on that cache: every row from the cache, 0 uploads, 0 requests
  online   the same rows online (a fresh cache, --concurrency workers): the CPU and cost baseline

Cost is RunStats.cost_usd at the given prices (USD per million tokens; gpt-4o-mini's by default);
a batch job costs half (dfllm/runtime/cost.py), so batch / online should print 0.50x.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from typing import Any

import pandas as pd

import dfllm
from dfllm.testing import FakeProviderProcess

REQUEST_STATS = ("uploads", "upload_bytes", "batch_creates", "batch_polls", "downloads", "download_bytes",
                 "batch_lines")


def frame(rows: int) -> pd.DataFrame:
    return pd.DataFrame({"t": [f"review {i}: the parcel came a day late but intact" for i in range(rows)]})


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(base_url: str, cache: str, rows: int, mode: str, options: dict[str, Any], trace: bool) -> None:
    """The measured process: the frame built, then one ``predict``; prints its numbers as JSON."""
    dfllm.create_engine("bench", "openai", api_key="bench", base_url=base_url)
    df = frame(rows)
    with_frame = _rss_mb()
    if trace:
        tracemalloc.start(1)  # one frame: deeper tracebacks make the call many times slower
    cpu, wall = time.process_time(), time.perf_counter()
    out = dfllm.predict(df, "bench", "m", "{{t}}", "y", mode="batch" if mode == "batch" else "online", cache=cache,
                        progress=False, **options)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    traced_mb = tracemalloc.get_traced_memory()[1] / 2**20 if trace else None
    run = dfllm.last_run()
    assert run is not None
    print(json.dumps({
        "wall_s": wall, "cpu_s": cpu, "answered": int(out["y"].notna().sum()),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "with_frame_mb": with_frame,
        "traced_peak_mb": traced_mb,
        "cost_usd": run.cost_usd, "prompt_tokens": run.prompt_tokens, "completion_tokens": run.completion_tokens,
        "cache_hits": run.cache_hits, "batch_jobs": run.batch_jobs, "batch_lines": run.batch_lines,
    }))


@dataclass
class Phase:
    name: str
    rows: int
    client: dict[str, Any]  # what the child printed
    served: dict[str, int]  # what the fake counted during the call

    @property
    def cpu_ms_per_row(self) -> float:
        return 1000 * float(self.client["cpu_s"]) / self.rows

    @property
    def dfllm_mb(self) -> float:
        return float(self.client["peak_rss_mb"] - self.client["with_frame_mb"])


def _counters(fake: FakeProviderProcess) -> dict[str, int]:
    stats = fake.stats()
    counted = {name: int(stats.get(name, 0)) for name in REQUEST_STATS}
    counted["all"] = int(stats["requests"])
    counted["chat"] = sum(stats["statuses"].values())  # only chat (and /models) answers are counted there
    return counted


def run_phase(name: str, fake: FakeProviderProcess, cache: str, args: argparse.Namespace, mode: str,
              options: dict[str, Any]) -> Phase:
    before = _counters(fake)
    done = subprocess.run([sys.executable, __file__, "--child", fake.base_url, cache, str(args.rows), mode,
                           json.dumps(options), "trace" if args.tracemalloc else "rss"], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{name}: the child failed\n{done.stderr[-4000:]}")
    after = _counters(fake)
    client = json.loads(done.stdout.strip().splitlines()[-1])
    if client["answered"] != args.rows:
        raise SystemExit(f"{name}: {client['answered']} of {args.rows} rows answered")
    return Phase(name, args.rows, client, {k: after[k] - before[k] for k in after})


def table(phases: list[Phase]) -> str:
    traced = any(p.client["traced_peak_mb"] is not None for p in phases)
    head = (f"{'run':<9}{'wall s':>7}{'cpu s':>7}{'cpu ms/row':>11}{'dfllm MB':>9}"
            + (f"{'py peak MB':>11}" if traced else "")
            + f"{'uploads':>8}{'jobs':>5}{'polls':>6}{'downloads':>10}{'chat req':>9}{'all req':>8}"
            f"{'up MB':>7}{'down MB':>8}{'cost USD':>9}")
    lines = [head]
    for p in phases:
        c, s = p.client, p.served
        cost = "-" if c["cost_usd"] is None else f"{c['cost_usd']:.4f}"
        peak = f"{c['traced_peak_mb']:>11.0f}" if traced else ""
        lines.append(f"{p.name:<9}{c['wall_s']:>7.1f}{c['cpu_s']:>7.1f}{p.cpu_ms_per_row:>11.3f}{p.dfllm_mb:>9.0f}{peak}"
                     f"{s['uploads']:>8}{s['batch_creates']:>5}{s['batch_polls']:>6}{s['downloads']:>10}{s['chat']:>9}"
                     f"{s['all']:>8}{s['upload_bytes'] / 1e6:>7.1f}{s['download_bytes'] / 1e6:>8.1f}{cost:>9}")
    return "\n".join(lines)


def _verdict(ok: bool) -> str:
    return "OK" if ok else "NOT OK"


def ratios(batch: Phase, resumed: Phase, online: Phase, rows: int) -> str:
    b, o, r = batch.client, online.client, resumed.client
    same_tokens = (b["prompt_tokens"], b["completion_tokens"]) == (o["prompt_tokens"], o["completion_tokens"])
    half = b["cost_usd"] / o["cost_usd"]
    return "\n".join([
        f"cost      batch ${b['cost_usd']:.4f} / online ${o['cost_usd']:.4f} = {half:.2f}x (expected 0.50x; "
        f"tokens {b['prompt_tokens']:,}+{b['completion_tokens']:,} batch, {o['prompt_tokens']:,}+"
        f"{o['completion_tokens']:,} online) -> {_verdict(same_tokens and abs(half - 0.5) < 0.005)}",
        f"cpu/row   batch {batch.cpu_ms_per_row:.3f} ms / online {online.cpu_ms_per_row:.3f} ms = "
        f"{batch.cpu_ms_per_row / online.cpu_ms_per_row:.2f}x",
        f"memory    batch {batch.dfllm_mb:.0f} MB / online {online.dfllm_mb:.0f} MB = "
        f"{batch.dfllm_mb / online.dfllm_mb:.2f}x (peak RSS minus RSS with the frame built; "
        f"{1024 * batch.dfllm_mb / rows:.2f} KB/row in batch)",
        f"wall      batch {b['wall_s']:.1f} s / online {o['wall_s']:.1f} s = {b['wall_s'] / o['wall_s']:.2f}x "
        "(the fake answers a job within its polls; a real one takes up to 24 h)",
        f"requests  batch: {batch.served['uploads']} uploads for {b['batch_lines']:,} lines in {b['batch_jobs']} jobs, "
        f"{batch.served['chat']} chat requests -> {_verdict(batch.served['chat'] == 0 and b['batch_lines'] == rows)}; "
        f"online: {online.served['chat']:,} chat requests ({online.served['chat'] / rows:.2f} per row)",
        f"resumed   {r['cache_hits']:,} of {rows:,} rows from the cache, {resumed.served['uploads']} uploads, "
        f"{resumed.served['all']} requests in all, {r['wall_s']:.1f} s ({rows / r['wall_s']:,.0f} rows/s) -> "
        f"{_verdict(r['cache_hits'] == rows and resumed.served['all'] == 0)}",
    ])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--price-prompt", type=float, default=0.15)
    parser.add_argument("--price-completion", type=float, default=0.60)
    parser.add_argument("--concurrency", type=int, default=256, help="the online baseline's workers")
    parser.add_argument("--polls-to-complete", type=int, default=2, help="the fake's polls from created to completed")
    parser.add_argument("--poll-s", type=float, default=0.05, help="batch_poll_s: the first wait between polls")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="also the Python allocations' peak during each call (its CPU and wall then include "
                             "tracemalloc's overhead: several times slower)")
    parser.add_argument("--child", nargs=6, metavar=("BASE_URL", "CACHE", "ROWS", "MODE", "OPTIONS", "MEMORY"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        base_url, cache, rows, mode, options, memory = args.child
        child(base_url, cache, int(rows), mode, json.loads(options), memory == "trace")
        return
    prices = {"price_prompt": args.price_prompt, "price_completion": args.price_completion}
    batch_options = {**prices, "batch_poll_s": args.poll_s}
    started = time.perf_counter()
    with FakeProviderProcess(responder="echo", batch_polls_to_complete=args.polls_to_complete) as fake, \
            tempfile.TemporaryDirectory() as tmp:
        batch = run_phase("batch", fake, f"{tmp}/batch.sqlite3", args, "batch", batch_options)
        resumed = run_phase("resumed", fake, f"{tmp}/batch.sqlite3", args, "batch", batch_options)
        online = run_phase("online", fake, f"{tmp}/online.sqlite3", args, "online",
                           {**prices, "concurrency": args.concurrency})
    print(f"rows={args.rows:,} unique prompts; prices ${args.price_prompt:g} prompt, ${args.price_completion:g} "
          f"completion per 1M tokens; fake: {args.polls_to_complete} polls to complete, batch_poll_s={args.poll_s:g}; "
          f"total {time.perf_counter() - started:.0f} s")
    print(table([batch, resumed, online]))
    print(ratios(batch, resumed, online, args.rows))


if __name__ == "__main__":
    main()
