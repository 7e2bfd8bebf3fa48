"""``choices``: map a model's free text onto one of the allowed labels, or say it could not."""

from __future__ import annotations

import re
from collections.abc import Sequence

from dfllm._exceptions import LabelError

_EDGE = re.compile(r"^[\s\"'`*_.,:;!?()\[\]{}<>-]+|[\s\"'`*_.,:;!?()\[\]{}<>-]+$")
# A label "found inside" an answer only counts when the answer is short: a long ramble that
# happens to contain a label is not an answer we should trust.
SHORT_ANSWER_WORDS = 16


def _plain(text: str) -> str:
    return " ".join(_EDGE.sub("", text).casefold().split())


def normalise_label(answer: str, choices: Sequence[str]) -> str:
    """The label ``answer`` means: exact up to case/space/punctuation, or the one label inside it."""
    plain = _plain(answer)
    by_plain = {_plain(c): c for c in choices}
    if plain in by_plain:
        return by_plain[plain]
    if len(plain.split()) <= SHORT_ANSWER_WORDS:
        found = [
            label for key, label in by_plain.items()
            if key and re.search(rf"(?<!\w){re.escape(key)}(?!\w)", plain)
        ]
        # "not positive" contains "positive": keep only labels not inside another found label.
        found = [f for f in found if not any(f != g and _plain(f) in _plain(g) for g in found)]
        if len(found) == 1:
            return found[0]
    raise LabelError(
        f"The answer {answer[:200]!r} matches none of the choices {list(choices)}. "
        "Make the prompt ask for exactly one label, or lower temperature."
    )
