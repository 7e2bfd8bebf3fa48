"""The fake provider's prompt cache: what a provider would serve from its cache, deterministically.

Like OpenAI's, it serves the longest beginning of a prompt (its messages in order: system first)
that an earlier request sent too, in whole blocks, and nothing below a minimum length. The
fake's tokens are 4 characters; a block is 16 of them (OpenAI: 128 tokens, from 1,024).
"""

from __future__ import annotations

from typing import Any

BLOCK_CHARS = 64  # 16 of the fake's 4-character tokens


def prompt_text(messages: list[Any]) -> str:
    """The messages as the cache reads them: each role and text in order, unambiguously joined."""
    return "".join(f"{m.get('role', '')}\x00{m.get('content', '')}\x00" for m in messages if isinstance(m, dict))


class PromptCache:
    """Prefixes seen so far, as the hashes of their whole blocks (a few integers a request)."""

    def __init__(self, min_tokens: int | None = 32) -> None:
        self.min_tokens = min_tokens  # None: no prompt cache, every request reports 0 cached tokens
        self._seen: set[int] = set()

    def serve(self, messages: list[Any], prompt_tokens: int) -> int:
        """The cached tokens of this request's prompt; remembers its prefixes for later ones."""
        if self.min_tokens is None:
            return 0
        text = prompt_text(messages)
        prefixes = [hash(text[:end]) for end in range(BLOCK_CHARS, len(text) + 1, BLOCK_CHARS)]
        matched = 0
        for prefix in prefixes:  # every block before a seen prefix was seen with it
            if prefix not in self._seen:
                break
            matched += 1
        self._seen.update(prefixes)
        tokens = matched * BLOCK_CHARS // 4
        return min(tokens, prompt_tokens) if tokens >= self.min_tokens else 0

    def clear(self) -> None:
        self._seen.clear()
