"""``choices``: map a model's free text onto one of the allowed labels, or say it could not.

A label is never guessed: an answer maps to a label when it is that label (up to case, spaces
and surrounding punctuation), or when a short answer holds exactly one label, never negated
("not positive" is not ``positive``). Anything else is a ``LabelError`` with the raw text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from dfllm._exceptions import LabelError

_EDGE = re.compile(r"^[\s\"'`*_.,:;!?()\[\]{}<>-]+|[\s\"'`*_.,:;!?()\[\]{}<>-]+$")
# A label "found inside" an answer only counts when the answer is short: a long ramble that
# happens to contain a label is not an answer we should trust.
SHORT_ANSWER_WORDS = 16
# Words that turn a label after them into its opposite: "not positive", "isn't negative",
# "never relevant". A contraction's n't needs its apostrophe ("sentiment" ends in "nt" too).
_NEGATION = re.compile(
    r"(?<!\w)(?:not|no|never|neither|nor|cannot|without|isnt|arent|wasnt|werent|dont|doesnt|didnt)(?!\w)"
    r"|n['\u2019]t(?!\w)"
)


def _plain(text: str) -> str:
    return " ".join(_EDGE.sub("", text).casefold().split())


def label_problems(choices: Sequence[str]) -> list[str]:
    """Labels an answer could never tell apart: equal up to case, spaces and edge punctuation."""
    by_plain: dict[str, list[str]] = {}
    for label in choices:
        by_plain.setdefault(_plain(label), []).append(label)
    problems = [
        f"choices {same!r} differ only by case, spaces or punctuation, so an answer could not tell them apart; "
        "keep one of them, or reword them to differ in letters or digits."
        for key, same in by_plain.items() if key and len(same) > 1
    ]
    problems += [
        f"choice {label!r} has no letters or digits, so no answer could be matched to it; reword it."
        for label in by_plain.get("", [])
    ]
    return problems


def normalise_label(answer: str, choices: Sequence[str]) -> str:
    """The label ``answer`` means: exact up to case/space/punctuation, or the one label inside it."""
    plain = _plain(answer)
    by_plain = {_plain(c): c for c in choices}
    if plain in by_plain:
        return by_plain[plain]
    if len(plain.split()) <= SHORT_ANSWER_WORDS:
        found = _label_inside(plain, by_plain)
        if found is not None:
            return found
    raise LabelError(
        f"The answer {answer[:200]!r} is not exactly one of the choices {list(choices)} (a negated label, "
        "several labels or none). Make the prompt ask for exactly one label, or lower temperature."
    )


def _label_inside(plain: str, by_plain: dict[str, str]) -> str | None:
    """The one label ``plain`` holds, none of its mentions negated; None when that is not so."""
    spans = [
        (match.start(), match.end(), key) for key in by_plain if key
        for match in re.finditer(rf"(?<!\w){re.escape(key)}(?!\w)", plain)
    ]
    # "not relevant" holds "relevant": a mention inside a longer label's mention is that label's.
    mentions = sorted((start, end, key) for start, end, key in spans
                      if not any(s <= start and end <= e and (s, e) != (start, end) for s, e, _ in spans))
    if len({key for _, _, key in mentions}) != 1:
        return None
    # The label's own words ("not relevant", "no") are no negation of it: blank the mentions out.
    rest = list(plain)
    for start, end, _ in mentions:
        rest[start:end] = " " * (end - start)
    before_last = "".join(rest[:mentions[-1][0]])
    if _NEGATION.search(before_last):
        return None
    return by_plain[mentions[0][2]]
