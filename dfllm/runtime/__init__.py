"""Runtime: the executor (the one place with policy), limiter, cache, progress, the sync door."""
