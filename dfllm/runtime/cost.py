"""What tokens cost at the caller's prices: the one place tokens become dollars.

Prices are the caller's own (the ``price_prompt``, ``price_cached_prompt`` and
``price_completion`` options, USD per million tokens), never built in: a table of list prices
in dfllm would go stale and show made-up costs. Without prices no cost is computed or shown.

Providers count cached prompt tokens inside ``prompt_tokens`` (OpenAI's
``usage.prompt_tokens_details.cached_tokens``); they are charged at the cached price, or at the
prompt price when none is given. A provider batch job (OpenAI's Batch API, Azure OpenAI's)
costs half: ``BATCH_DISCOUNT`` off every token.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BATCH_DISCOUNT", "Prices", "usd"]

BATCH_DISCOUNT = 0.5  # OpenAI's Batch API: 50% off prompt, cached prompt and completion tokens
_PER_MILLION = 1e-6


@dataclass(frozen=True)
class Prices:
    """USD per million tokens. ``cached_prompt`` None: cached tokens cost what other prompt tokens do."""

    prompt: float
    completion: float
    cached_prompt: float | None = None

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0, *,
             batch: bool = False) -> float:
        """USD for one answer (or a run's totals). ``cached_tokens`` are part of ``prompt_tokens``,
        as providers count them; ``batch``: paid at the batch price."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        cached_price = self.prompt if self.cached_prompt is None else self.cached_prompt
        usd = ((prompt_tokens - cached) * self.prompt + cached * cached_price
               + completion_tokens * self.completion) * _PER_MILLION
        return usd * (1 - BATCH_DISCOUNT) if batch else usd


def usd(amount: float) -> str:
    """``$1,234.56``; under a dollar to four places (``$0.0042``), and ``<$0.0001`` below that."""
    if amount == 0 or amount >= 1:
        return f"${amount:,.2f}"
    return f"${amount:.4f}" if amount >= 0.0001 else "<$0.0001"
