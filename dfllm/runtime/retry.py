"""Retry policy: which failures are retried, how long to back off, and which waits a row can afford.

The executor applies it; nothing else retries. Every wait a server asks for (Retry-After on a
429 or 5xx, a reset after ``remaining: 0``) counts against the row's ``max_retry_time_s``: a
wait longer than what is left fails the row at once, saying who asked and for how long.
"""

from __future__ import annotations

import math
import random

from dfllm._exceptions import EngineError, RateLimitError, ServerError

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0


def backoff_s(attempt: int, rng: random.Random) -> float:
    """Exponential backoff with "equal jitter": in [d/2, d) for d = base * 2**attempt, capped.

    Each wait is longer than the one before until the cap, whatever the random draws.
    """
    full = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0**attempt)
    return full / 2 + rng.random() * full / 2


def server_wait_s(error: EngineError) -> float | None:
    """The wait the server asked for, or None when it named none we can use.

    ``inf`` stands: the server asked to wait forever. NaN, negative or non-numbers are ignored.
    """
    value = error.retry_after
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if math.isnan(value) or value < 0:
        return None
    return float(value)


def seconds_text(seconds: float) -> str:
    if math.isinf(seconds):
        return "forever (inf)"
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.3g} s"


def wait_refused(cause: str, wait: float, left: float, budget: float,
                 error: EngineError | None = None) -> EngineError:
    """The error of a row that cannot afford a wait the server asked for."""
    message = (
        f"{cause} asked to wait {seconds_text(wait)}, more than max_retry_time_s={budget:g} allows "
        f"({max(0.0, left):.0f} s left for this row). Raise max_retry_time_s to wait that long, or "
        "run again later: answers that arrived are cached."
    )
    status = error.status if error is not None else None
    header = error.retry_after_header if error is not None else None
    refused: EngineError
    if error is None or isinstance(error, RateLimitError):
        refused = RateLimitError(message, status=status, retry_after=wait, retry_after_header=header)
    else:
        refused = ServerError(message, status=status, retry_after=wait, retry_after_header=header)
    refused.__cause__ = error
    return refused


def retry_after_cause(error: EngineError, wait: float) -> str:
    """Who asked for the wait: the header as received when the engine kept it."""
    header = getattr(error, "retry_after_header", None)
    if not header:
        header = f"Retry-After: {'inf' if math.isinf(wait) else f'{wait:.15g}'}"
    answer = f" on a {error.status}" if error.status is not None else ""
    return f"the server ({header}{answer})"
