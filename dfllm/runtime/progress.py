"""What a run did (``RunStats``: requests, cache hits, retries, 429s, tokens, cost) and its progress bar."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from dfllm.engines.base import Completion
from dfllm.runtime.cost import Prices, usd


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
    prompt_tokens: int = 0  # of the answers received, re-asked ones included; cached ones included
    cached_prompt_tokens: int = 0  # of prompt_tokens, those the provider's prompt cache served
    completion_tokens: int = 0
    # USD at the prices the call gave (price_prompt, price_completion...); None without prices.
    cost_usd: float | None = None
    elapsed_s: float = 0.0
    learned_rpm: float | None = None  # x-ratelimit-limit-requests as the server last said it
    # A header rate too low for the rows left within max_retry_time_s: taken as a hint, not obeyed.
    slow_header_rpm: float | None = None
    slow_header_tpm: float | None = None
    batch_jobs: int = 0  # mode='batch': provider batch jobs submitted in this run
    batch_jobs_attached: int = 0  # jobs an earlier run submitted, collected by this one
    batch_lines: int = 0  # requests sent in those jobs
    batch_resubmitted: int = 0  # lines sent again (a transient failure, an expired or cancelled job)
    cache_write_failures: int = 0  # answers the cache could not keep: a re-run pays for them again
    errors: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # also emitted as RuntimeWarning

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def deduplicated(self) -> int:
        return self.rows - self.skipped_null_rows - self.unique_prompts

    def add_usage(self, completion: Completion, prices: Prices | None = None, *, batch: bool = False) -> None:
        """Count an answer received from the provider (paid for; a cache hit is not): its tokens,
        and its cost at ``prices``, at the batch price when it came from a batch job."""
        self.prompt_tokens += completion.prompt_tokens
        self.cached_prompt_tokens += completion.cached_tokens
        self.completion_tokens += completion.completion_tokens
        if prices is not None:
            cost = prices.cost(completion.prompt_tokens, completion.completion_tokens, completion.cached_tokens,
                               batch=batch)
            self.cost_usd = cost if self.cost_usd is None else self.cost_usd + cost

    def summary(self) -> str:
        """One line: rows, prompts, cache hits, requests, retries, 429s, tokens (the prompt-cached
        share when there is one), failed rows, time, and the cost when prices were given."""
        cached = f" ({self.cached_prompt_tokens:,} prompt-cached)" if self.cached_prompt_tokens else ""
        cost = f", {usd(self.cost_usd)}" if self.cost_usd is not None else ""
        return (f"{self.rows:,} rows ({self.skipped_null_rows:,} all-null), "
                f"{self.unique_prompts:,} unique prompts, {self.cache_hits:,} cache hits, {self._jobs()}"
                f"{self.requests:,} requests, {self.retries:,} retries, {self.rate_limited:,} 429s, "
                f"{self.prompt_tokens:,}+{self.completion_tokens:,} tokens{cached}, "
                f"{self.failed_rows:,} failed rows, {self.elapsed_s:.1f} s{cost}")

    def _jobs(self) -> str:
        """Batch mode's part of the summary: jobs submitted and collected, lines sent and sent again."""
        if not (self.batch_jobs or self.batch_jobs_attached):
            return ""
        again = f", {self.batch_resubmitted:,} sent again" if self.batch_resubmitted else ""
        jobs = "batch job" if self.batch_jobs == 1 else "batch jobs"
        return (f"{self.batch_jobs:,} {jobs} ({self.batch_lines:,} lines{again}), "
                f"{self.batch_jobs_attached:,} collected from earlier runs, ")


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

    def note(self, text: str) -> None:
        """Say what the run waits on (a batch job's state and counts) beside the bar."""
        if self._bar is not None:
            self._bar.set_postfix_str(text)

    def close(self) -> None:
        if self._bar is not None:
            s = self._stats
            self._bar.set_postfix(cached=s.cache_hits, retries=s.retries, r429=s.rate_limited, refresh=False)
            self._bar.close()
