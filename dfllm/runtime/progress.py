"""What a run did (``RunStats``: requests, cache hits, retries, 429s, tokens) and its progress bar."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunStats:
    """Counters of one ``predict`` call; ``dfllm.last_run()`` returns the latest."""

    rows: int = 0
    skipped_null_rows: int = 0
    unique_prompts: int = 0
    cache_hits: int = 0
    requests: int = 0  # HTTP requests sent, retries included
    retries: int = 0
    repairs: int = 0  # re-asks of answers that did not fit the schema
    rate_limited: int = 0  # 429 answers
    succeeded: int = 0  # unique prompts answered by the provider in this run
    failed_rows: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    elapsed_s: float = 0.0
    learned_rpm: float | None = None  # x-ratelimit-limit-requests as the server last said it
    # A header rate too low for the rows left within max_retry_time_s: taken as a hint, not obeyed.
    slow_header_rpm: float | None = None
    slow_header_tpm: float | None = None
    cache_write_failures: int = 0  # answers the cache could not keep: a re-run pays for them again
    errors: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # also emitted as RuntimeWarning

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def deduplicated(self) -> int:
        return self.rows - self.skipped_null_rows - self.unique_prompts


def interactive() -> bool:
    """A terminal or a notebook kernel: where a progress bar helps rather than litters logs."""
    ipython = sys.modules.get("IPython")
    if ipython is not None:
        # Running inside a kernel, not merely having imported ipykernel somewhere.
        shell = ipython.get_ipython()
        if shell is not None and getattr(shell, "kernel", None) is not None:
            return True
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class Progress:
    """A tqdm bar over unique prompts, or nothing. Refreshes itself at most ~10 times a second."""

    def __init__(self, enabled: bool | None, total: int, stats: RunStats) -> None:
        self._stats = stats
        self._bar: Any = None
        if enabled or (enabled is None and interactive() and total > 0):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, unit="row", desc="dfllm", mininterval=0.1, smoothing=0.05)

    def advance(self, n: int = 1) -> None:
        bar = self._bar
        if bar is not None:
            bar.update(n)
            if bar.n == bar.total or bar.n % 256 == 0:
                s = self._stats
                bar.set_postfix(cached=s.cache_hits, retries=s.retries, r429=s.rate_limited, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            s = self._stats
            self._bar.set_postfix(cached=s.cache_hits, retries=s.retries, r429=s.rate_limited, refresh=False)
            self._bar.close()
