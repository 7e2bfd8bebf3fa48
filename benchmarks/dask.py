"""dfllm on Dask: one rate budget for the whole cluster, against a server-side RPM cap.

    python benchmarks/dask.py [--rpm 1800] [--rows 300] [--latency-ms 50] [--uncapped-rows 3000]
                              [--learned-rows 1500] [--window-s 20] [--only capped,learned,uncapped]

Capped (the cap is given as rpm=, the server also enforces it and sends no rate-limit headers):
  one process: dfllm.predict on a pandas frame
  2- and 4-worker LocalClusters: ddf.llm.predict (the coordinator on the scheduler leases slots)
  the same clusters with each worker limiting itself to the full cap, as per-process limiters
  do (dfllm.predict inside map_partitions)
Each prints achieved rate / cap (answers per minute over the run's wall time) and the 429 share.
Learned (no rpm=): a 2-worker cluster against a fixed window (LiteLLM's shape: limit and remaining
headers, no reset), --learned-rows over --window-s windows.
Uncapped: rows/s on 1 and 2 worker processes.

The fake provider runs in its own process. Numbers are from one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

# This file is named dask.py: take its folder off the path, or it would shadow the dask package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import dask.dataframe as dd  # noqa: E402
import pandas as pd  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

import dfllm  # noqa: E402
from dfllm.testing import FakeProviderProcess  # noqa: E402

MODEL = "m"
TEMPLATE = "Echo {{text}}"


def frame(rows: int, tag: str) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"{tag} {i}" for i in range(rows)]})


def _peer_partition(part: pd.DataFrame, base_url: str, rpm: float | None) -> pd.DataFrame:
    dfllm.create_engine("bench", "openai_compatible", base_url=base_url)
    out: pd.DataFrame = dfllm.predict(part, "bench", MODEL, TEMPLATE, "answer", rpm=rpm, cache=False, progress=False,
                                      errors="null")
    return out


def measure(fake: FakeProviderProcess, rows: int, run: Callable[[], pd.DataFrame]) -> tuple[float, int, int, int]:
    fake.reset()
    started = time.perf_counter()
    result = run()
    elapsed = time.perf_counter() - started
    assert len(result) == rows
    statuses = fake.stats()["statuses"]
    failed = int(result["answer"].isna().sum())  # rows that ran out of retries
    return elapsed, int(statuses.get("200", 0)), int(statuses.get("429", 0)), failed


def report(name: str, elapsed: float, ok: int, refused: int, failed: int, cap: float | None) -> None:
    rate = ok / elapsed * 60
    share = refused / max(1, ok + refused)
    shown = f"rate/cap {rate / cap:5.2f}" if cap else f"{ok / elapsed:6.0f} rows/s"
    print(f"{name:<44} {elapsed:6.1f} s  {shown}  429s {share:6.1%} ({refused})  failed rows {failed}",
          flush=True)


def on_cluster(workers: int, fn: Callable[[Client], None]) -> None:
    # Loopback only: a benchmark must not open a port to the network. The scheduler serves HTTP
    # even with dashboard_address=None (on 8787): a free port on 127.0.0.1 instead.
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=40) as cluster, Client(cluster) as client:
        client.wait_for_workers(workers, timeout=120)
        fn(client)


def capped(args: argparse.Namespace) -> None:
    cap = args.rpm
    with FakeProviderProcess(rpm=cap, latency_ms=args.latency_ms, no_ratelimit_headers=True) as fake:
        dfllm.create_engine("bench", "openai_compatible", base_url=fake.base_url)
        df = frame(args.rows, "one")
        report("1 process, rpm=cap", *measure(fake, args.rows, lambda: dfllm.predict(
            df, "bench", MODEL, TEMPLATE, "answer", rpm=cap, cache=False, progress=False)), cap)
        for workers in (2, 4):
            def scenarios(client: Client, workers: int = workers) -> None:
                ddf = dd.from_pandas(frame(args.rows, f"c{workers}"), npartitions=2 * workers)
                report(f"{workers} workers, dfllm cluster budget", *measure(fake, args.rows, lambda: ddf.llm.predict(
                    "bench", MODEL, TEMPLATE, "answer", rpm=cap, cache=False).compute()), cap)
                peers = dd.from_pandas(frame(args.rows, f"p{workers}"), npartitions=2 * workers)
                meta = peers._meta.assign(answer=pd.Series(dtype="string"), answer_error=pd.Series(dtype="string"))
                report(f"{workers} workers, each limiting itself to the cap", *measure(
                    fake, args.rows, lambda: peers.map_partitions(
                        _peer_partition, fake.base_url, cap, meta=meta).compute()), cap)

            on_cluster(workers, scenarios)


def learned(args: argparse.Namespace) -> None:
    """No rpm=: the cluster learns a LiteLLM-style fixed window (limit and remaining, no reset header)."""
    cap, window = args.rpm, args.window_s
    with FakeProviderProcess(rpm=cap, latency_ms=args.latency_ms, rpm_shape="fixed", rpm_window_s=window,
                             ratelimit_headers="litellm") as fake:
        dfllm.create_engine("bench", "openai_compatible", base_url=fake.base_url)

        def scenario(client: Client) -> None:
            ddf = dd.from_pandas(frame(args.learned_rows, "learned"), npartitions=8)
            report(f"2 workers, no rpm=, fixed {window:g} s window (LiteLLM headers)", *measure(
                fake, args.learned_rows, lambda: ddf.llm.predict(
                    "bench", MODEL, TEMPLATE, "answer", cache=False, errors="null").compute()), cap)

        on_cluster(2, scenario)


def uncapped(args: argparse.Namespace) -> None:
    with FakeProviderProcess(latency_ms=args.latency_ms) as fake:
        dfllm.create_engine("bench", "openai_compatible", base_url=fake.base_url)
        for workers in (1, 2):
            def scenario(client: Client, workers: int = workers) -> None:
                ddf = dd.from_pandas(frame(args.uncapped_rows, f"u{workers}"), npartitions=4 * workers)
                report(f"uncapped, {workers} worker process(es)", *measure(
                    fake, args.uncapped_rows, lambda: ddf.llm.predict(
                        "bench", MODEL, TEMPLATE, "answer", cache=False).compute()), None)

            on_cluster(workers, scenario)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rpm", type=float, default=1800.0)
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--uncapped-rows", type=int, default=3000)
    parser.add_argument("--learned-rows", type=int, default=1500, help="rows against the fixed window, no rpm=")
    parser.add_argument("--window-s", type=float, default=20.0, help="the fixed window's length")
    parser.add_argument("--only", default="capped,learned,uncapped")
    args = parser.parse_args()
    print(f"cap {args.rpm:g} rpm, {args.rows} rows, latency {args.latency_ms:g} ms, cores {os.cpu_count()}")
    for section in args.only.split(","):
        {"capped": capped, "learned": learned, "uncapped": uncapped}[section](args)


if __name__ == "__main__":
    main()
