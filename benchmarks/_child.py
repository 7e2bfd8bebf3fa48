"""A dfllm run in its own process, to be killed (kill -9) or measured (peak memory) from outside.

    python benchmarks/_child.py BASE_URL CACHE_FILE ROWS CONCURRENCY [UNIQUE]
"""

from __future__ import annotations

import json
import resource
import sys
import time

import pandas as pd

import dfllm


def main() -> None:
    base_url, cache, rows, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    unique = int(sys.argv[5]) if len(sys.argv) > 5 else rows
    dfllm.create_engine("child", "openai", api_key="bench", base_url=base_url)
    df = pd.DataFrame({"t": [f"prompt {i % unique}" for i in range(rows)]})
    started = time.perf_counter()
    out = df.llm.predict("child", "m", "{{t}}", "y", concurrency=concurrency, cache=cache, progress=False)
    elapsed = time.perf_counter() - started
    run = dfllm.last_run()
    assert run is not None and out["y"].notna().all()
    print(json.dumps({"elapsed_s": elapsed, "requests": run.requests, "cache_hits": run.cache_hits,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
