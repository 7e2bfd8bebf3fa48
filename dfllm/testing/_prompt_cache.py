"""The fake provider's prompt cache: what a provider would serve from its cache, deterministically.

Like OpenAI's, it serves the longest beginning of a prompt (its messages in order: system first)
that an earlier request sent too, in whole blocks, and nothing below a minimum length. The
fake's tokens are 4 characters; a block is 16 of them (OpenAI: 128 tokens, from 1,024).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

BLOCK_CHARS = 64  # 16 of the fake's 4-character tokens


def text_tokens(text: str) -> int:
    """The fake's token estimate of a text: 4 characters a token, at least 1."""
    return max(1, math.ceil(len(text) / 4))


def prompt_text(messages: list[Any]) -> str:
    """The messages as the cache reads them: each role and text in order, unambiguously joined."""
    return "".join(f"{m.get('role', '')}\x00{_content(m.get('content', ''))}\x00" for m in messages
                   if isinstance(m, dict))


def _content(content: Any) -> str:
    """A content part list as text parts and a short mark per image (its URL's hash), so the same
    picture at the same place is the same prefix without its base64 in the cache's text."""
    if not isinstance(content, list):
        return str(content)
    return "".join(str(part.get("text", "")) if part.get("type") == "text"
                   else f"\x01{hashlib.sha256(repr(part).encode()).hexdigest()[:16]}\x01"
                   for part in content if isinstance(part, dict))


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
