"""A Parquet file through the ``dfllm`` command vs the same rows through in-memory ``df.llm.predict``.

    python benchmarks/pipeline.py [--rows 2000000] [--batch-rows 50000] [--concurrency 256]

Both run in their own process against a 0 ms fake provider in a third, each with a fresh cache;
each line prints rows/s and the process's peak RSS (from wait4), then the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dfllm.testing import FakeProviderProcess

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MB and stdout of one child process."""
    started = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stderr is not None
    out, err = child.stdout.read(), child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"{cmd[:4]} exited {child.returncode}:\n{err[-2000:]}")
    return wall, usage.ru_maxrss / 1024, out + err


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--batch-rows", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=256)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": "bench"}
    with tempfile.TemporaryDirectory() as tmp, FakeProviderProcess(responder="echo") as fake:
        source = Path(tmp) / "in.parquet"
        pq.write_table(pa.table({"id": pa.array(range(args.rows), pa.int64()),
                                 "t": [f"prompt {i}" for i in range(args.rows)]}), source, row_group_size=100_000)
        command = [sys.executable, "-m", "dfllm", "predict", str(source), f"{tmp}/out.parquet", "--engine", "openai",
                   "--base-url", fake.base_url, "--model", "m", "--template", "{{t}}", "--target", "y",
                   "--concurrency", str(args.concurrency), "--batch-rows", str(args.batch_rows),
                   "--cache", f"{tmp}/file.sqlite3", "--no-progress"]
        file_wall, file_rss, _ = run_measured(command, env)
        sent = fake.stats()["requests"]
        out = pq.ParquetFile(f"{tmp}/out.parquet")
        assert out.metadata.num_rows == args.rows and out.schema_arrow.names == ["id", "t", "y", "y_error"]
        last = out.read_row_group(out.num_row_groups - 1).to_pylist()[-1]
        assert last == {"id": args.rows - 1, "t": f"prompt {args.rows - 1}", "y": f"prompt {args.rows - 1}",
                        "y_error": None}
        fake.reset()
        memory_wall, memory_rss, printed = run_measured(
            [sys.executable, str(HERE / "_child.py"), fake.base_url, f"{tmp}/memory.sqlite3", str(args.rows),
             str(args.concurrency)], env)
        inner = json.loads(printed.strip().splitlines()[-1])
    print(f"file    {args.rows:,} rows Parquet -> Parquet, batches of {args.batch_rows:,}: "
          f"{args.rows / file_wall:,.0f} rows/s (process wall, start-up included), peak RSS {file_rss:.0f} MB, "
          f"requests {sent:,}")
    print(f"memory  {args.rows:,} rows df.llm.predict (pandas): {args.rows / inner['elapsed_s']:,.0f} rows/s "
          f"(predict call), {args.rows / memory_wall:,.0f} rows/s (process wall), peak RSS {memory_rss:.0f} MB")
    print(f"ratio   file/memory: {memory_wall / file_wall:.2f}x the speed (process wall), "
          f"{file_rss / memory_rss:.2f}x the peak memory")


if __name__ == "__main__":
    main()
