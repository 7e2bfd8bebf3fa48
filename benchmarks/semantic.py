"""sim_join at scale, and the questions sem_join sends against n * m.

    python benchmarks/semantic.py [--rows 100000] [--dim 64] [--k 10] [--block-rows 2048]

  sim_join   rows x rows random unit vectors (a pandas ArrowDtype fixed_size_list<float32> column on each
             side), k per left row: wall time, pairs scored per second, the 1M x 1M estimate from that rate,
             tracemalloc's peak (Python and numpy allocations) and the process's peak RSS over the RSS once
             both frames are built
  sem_join   the test suite's two catalogues of the same 1,000 products (fake_embedding "words", 64 dims):
             candidate pairs sem_join_estimate reports at k = 1, 5, 10 against n * m

The machine's BLAS threads are left as they are (OPENBLAS_NUM_THREADS to change them).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dfllm
from tests.drive.test_semantic import TEMPLATE, product_tables, with_vectors


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def vector_frame(rows: int, dim: int, seed: int) -> pd.DataFrame:
    vectors = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim)
    return pd.DataFrame({"id": np.arange(rows), "v": pd.arrays.ArrowExtensionArray(column)})


def bench_sim_join(rows: int, dim: int, k: int, block_rows: int) -> None:
    left, right = vector_frame(rows, dim, 1), vector_frame(rows, dim, 2)
    before = rss_mb()
    tracemalloc.start()
    start = time.perf_counter()
    out = dfllm.sim_join(left, right, left_on="v", right_on="v", k=k, block_rows=block_rows)
    wall = time.perf_counter() - start
    traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rate = rows * rows / wall
    print(f"sim_join {rows:,} x {rows:,}, dim {dim}, k {k}, block_rows {block_rows}: {wall:.1f} s "
          f"({rate / 1e6:,.0f} M pairs/s), {len(out):,} rows out")
    print(f"  memory: tracemalloc peak {traced_peak:,.0f} MiB; RSS {before:,.0f} MiB with both frames, "
          f"peak {peak:,.0f} MiB (+{peak - before:,.0f} MiB; the n*m product would be "
          f"{rows * rows * 4 / 2**30:,.1f} GiB)")
    print(f"  1M x 1M at this rate: {1e12 / rate / 3600:.1f} h (time grows with n*m; memory with the blocks "
          "and the n*k answer)")


def bench_sem_join_pairs() -> None:
    left, right = product_tables()
    left, right = with_vectors(left, "name", "pandas"), with_vectors(right, "title", "pandas")
    dfllm.create_engine("bench-judge", "openai", api_key="sk-unused", base_url="http://127.0.0.1:9/v1")
    for k in (1, 5, 10):
        found = dfllm.sem_join_estimate(left, right, "bench-judge", "gpt-4o-mini", TEMPLATE, left_on="v",
                                        right_on="v", k=k)
        print(f"sem_join k={k:>2}: {found.candidate_pairs:,} questions of {found.all_pairs:,} pairs "
              f"({found.candidate_pairs / found.all_pairs:.2%} of n * m)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--block-rows", type=int, default=2048)
    args = parser.parse_args()
    bench_sem_join_pairs()
    bench_sim_join(args.rows, args.dim, args.k, args.block_rows)


if __name__ == "__main__":
    main()
