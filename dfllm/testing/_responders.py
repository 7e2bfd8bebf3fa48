"""Deterministic answers for the fake provider, chosen by name so a separate process can use them."""

from __future__ import annotations

import re
from collections.abc import Callable

Responder = Callable[[str, str], str]  # (model, prompt) -> answer

_POSITIVE = {"love", "great", "good", "excellent", "amazing", "happy", "wonderful", "best", "like"}
_NEGATIVE = {"awful", "hate", "terrible", "bad", "worst", "horrible", "sad", "broken", "poor"}


def echo(model: str, prompt: str) -> str:
    return prompt


def sentiment(model: str, prompt: str) -> str:
    """A lexicon classifier, so sentiment examples give the answers a person expects."""
    words = set(re.findall(r"[a-z]+", prompt.lower().split(":")[-1]))
    score = len(words & _POSITIVE) - len(words & _NEGATIVE)
    return "positive" if score > 0 else "negative" if score < 0 else "neutral"


def geography(model: str, prompt: str) -> str:
    if "stockholm" in prompt.lower():
        return (
            "Stockholm is the capital and largest city of Sweden. It is located on Sweden's "
            "south-central east coast, where Lake Mälaren meets the Baltic Sea."
        )
    return f"I do not know about: {prompt}"


def smart(model: str, prompt: str) -> str:
    """Sentiment for sentiment prompts, geography for Stockholm, otherwise an echo."""
    if "sentiment" in prompt.lower():
        return sentiment(model, prompt)
    if "stockholm" in prompt.lower():
        return geography(model, prompt)
    return f"{model} says: {prompt}"


RESPONDERS: dict[str, Responder] = {"echo": echo, "sentiment": sentiment, "smart": smart}
