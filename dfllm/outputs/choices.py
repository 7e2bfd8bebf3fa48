"""``choices``: map a model's free text onto one of the allowed labels, or say it could not.

A label is never guessed. Answers and labels are compared after one normalisation (Unicode NFKC,
so full-width and composed/decomposed letters are equal; case folding; apostrophe and dash
variants unified; invisible format characters dropped; runs of spaces collapsed). An answer
maps to a label when:

- it is that label, or that label wrapped in spaces, quotes, emphasis, brackets or sentence
  punctuation (``**Positive.**``). ``?`` never wraps: ``positive?`` is doubt, not an answer;
- or it is short (at most ``SHORT_ANSWER_WORDS`` words, ``SHORT_ANSWER_CHARS`` characters), holds
  exactly one label, and nothing outside that label's own words negates or doubts it: no negation
  word anywhere in the answer, before or after the label (``not``, ``no``, ``never``, ``hardly``,
  ``far from``, ``n't``, ``false``..., and common ones in other languages: ``nicht``, ``pas``,
  ``nunca``...), no ``?`` after it, no sign or prefix joined to it (``un-positive``; ``-1`` is not
  the label ``1``).

So a "no" anywhere makes an answer that is not exactly a label a ``LabelError`` ("No, negative"
is refused, not read); so does any other answer, with its raw text.

Labels that normalise to the same text, or differ only by that wrapping (``?`` included), are
refused before any request (``["Yes", "yes"]``, ``["yes.", "yes"]``): no answer could tell them
apart. Signs and symbols are part of a label: ``["-1", "0", "1"]``, ``["A", "A-", "B+"]`` and
``["+", "-"]`` are fine.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from dfllm._exceptions import LabelError

# What models wrap an answer in (guillemets and curly quotes too). Not "+" or "-": signs tell
# labels apart ("-1", "B+"). Not "?": a question mark after a label is doubt.
_WRAPPING = " \"'*_~.,:;!()[]{}<>\u00ab\u00bb\u201c\u201d\u201e\u2039\u203a"
# Two labels differing only by these are refused: "yes?" next to "yes" invites a guess.
_LABEL_WRAPPING = _WRAPPING + "?"
# A label is looked for inside an answer only when the answer is short: a long ramble that
# happens to contain a label is not an answer we should trust.
SHORT_ANSWER_WORDS = 16
SHORT_ANSWER_CHARS = 300
# Apostrophe look-alikes (acute, modifier letters, curly, prime, full-width) and dashes (hyphens,
# en/em dashes, minus sign, full-width) read as ' and -: "isn\u00b4t" is "isn't", "\u22121" is "-1".
_APOSTROPHES = "`\u00b4\u02b9\u02bb\u02bc\u02bd\u02c8\u02cb\u2018\u2019\u201b\u2032\u2035\uff07\uff40\u1fef\u1ffd"
_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe63\uff0d"
# Invisible characters (zero-width, direction marks, soft hyphen, tags) and strike-through
# overlays: dropped, so "no\u200bt" and a struck-out "n\u0336ot" read as "not".
_INVISIBLE = [0x00AD, 0x061C, 0x180E, 0xFEFF, *range(0x200B, 0x2010), *range(0x202A, 0x202F),
              *range(0x2060, 0x2065), *range(0x2066, 0x2070), *range(0xE0000, 0xE0080), *range(0x0334, 0x0339)]
_UNIFY = str.maketrans({**{c: "'" for c in _APOSTROPHES}, **{c: "-" for c in _DASHES},
                        **{chr(c): None for c in _INVISIBLE}})
# Words that negate or doubt a label anywhere in a short answer. Matched as whole words after
# normalisation; a label's own words are blanked out first, so ["relevant", "not relevant"] works.
NEGATIONS = (
    "not", "no", "nope", "nah", "never", "neither", "nor", "none", "nothing", "nobody", "hardly",
    "barely", "scarcely", "seldom", "rarely", "without", "cannot", "cant", "isnt", "arent", "wasnt",
    "werent", "dont", "doesnt", "didnt", "wont", "wouldnt", "shouldnt", "couldnt", "aint", "hasnt",
    "havent", "hadnt", "false", "untrue", "wrong", "incorrect", "less", "least", "un", "non", "anti",
    "except", "unlike", "instead", "opposite", "contrary", "lacks", "lacking", "far from",
    "anything but", "rather than", "other than", "maybe", "perhaps", "unsure", "uncertain",
    # German, French, Spanish, Portuguese, Italian, Dutch, Scandinavian, Slavic
    "nicht", "kein", "keine", "keinen", "keiner", "nie", "niemals", "nein", "weder", "ohne",
    "ne", "pas", "ni", "jamais", "aucun", "aucune", "sans", "nunca", "jamás", "nada", "ninguno",
    "ninguna", "tampoco", "sin", "não", "nao", "nem", "nenhum", "nenhuma", "mai", "nessuno",
    "senza", "niet", "geen", "nooit", "ikke", "inte", "не", "нет",
)
_NEGATION = re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, NEGATIONS)) + r")(?!\w)|n't(?!\w)")


def normal_form(text: str) -> str:
    """``text`` as labels and answers are compared; linear in its length (C-level passes only)."""
    folded = unicodedata.normalize("NFKC", text.translate(_UNIFY)).casefold()
    return " ".join(unicodedata.normalize("NFKC", folded).split())


@dataclass(frozen=True)
class _Labels:
    exact: dict[str, str]  # normal form -> label
    unwrapped: dict[str, str]  # normal form without wrapping -> label
    mention: tuple[tuple[re.Pattern[str], str], ...]  # a label standing on its own inside an answer


@lru_cache(maxsize=64)
def _labels(choices: tuple[str, ...]) -> _Labels:
    exact = {normal_form(c): c for c in choices}
    unwrapped = {form.strip(_WRAPPING): c for form, c in exact.items()}
    # Standing alone: no letter, digit, sign or joining dash at either side, and no decimal
    # point into a number ("1" is not in "-1", "0.1", "1.5" or "un-1").
    mention = tuple(
        (re.compile(rf"(?<![\w+\-])(?<!\d[.,]){re.escape(form)}(?![\w+\-])(?![.,]\d)"), c)
        for form, c in unwrapped.items() if form
    )
    return _Labels(exact, unwrapped, mention)


def label_problems(choices: Sequence[str]) -> list[str]:
    """Labels an answer could never tell apart: equal once normalised and unwrapped."""
    by_key: dict[str, list[str]] = {}
    for label in choices:
        by_key.setdefault(normal_form(label).strip(_LABEL_WRAPPING), []).append(label)
    problems = [
        f"choices {same!r} are the same label once case, Unicode width and composition, spaces, and quotes, "
        "brackets or punctuation at their ends (other than the signs + and -) are set aside, so an answer "
        "could not tell them apart; keep one of them, or reword them to differ in letters, digits or signs."
        for key, same in by_key.items() if key and len(same) > 1
    ]
    problems += [
        f"choice {label!r} is only spaces, quotes, brackets or punctuation, so no answer could be matched "
        "to it; reword it."
        for label in by_key.get("", [])
    ]
    return problems


def normalise_label(answer: str, choices: Sequence[str]) -> str:
    """The label ``answer`` means: that label (normalised, maybe wrapped), or the one label inside it."""
    labels = _labels(tuple(choices))
    text = normal_form(answer)
    unwrapped = text.strip(_WRAPPING)
    found = labels.exact.get(text) or (labels.unwrapped.get(unwrapped) if unwrapped else None)
    if found is None and len(text) <= SHORT_ANSWER_CHARS and len(text.split()) <= SHORT_ANSWER_WORDS:
        found = _label_inside(text, labels)
    if found is not None:
        return found
    raise LabelError(
        f"The answer {answer[:200]!r} is not exactly one of the choices {list(choices)} (a negated or doubted "
        "label, several labels or none). Make the prompt ask for exactly one label, or lower temperature."
    )


def _label_inside(text: str, labels: _Labels) -> str | None:
    """The one label ``text`` holds, nothing negating or doubting it; None when that is not so."""
    spans = [(match.start(), match.end(), label) for pattern, label in labels.mention
             for match in pattern.finditer(text)]
    # "not relevant" holds "relevant": a mention inside a longer label's mention is that label's.
    mentions = sorted((start, end, label) for start, end, label in spans
                      if not any(s <= start and end <= e and (s, e) != (start, end) for s, e, _ in spans))
    if len({label for _, _, label in mentions}) != 1:
        return None
    # The label's own words ("not relevant", "no") are no negation of it: a negation inside a mention
    # does not count. One that only overlaps it does: "isn't isn" holds the label "isn" in "isn't".
    if any(not any(start <= negation.start() and negation.end() <= end for start, end, _ in mentions)
           for negation in _NEGATION.finditer(text)):
        return None
    rest = list(text)
    for start, end, _ in mentions:
        rest[start:end] = " " * (end - start)
    if "?" in "".join(rest)[mentions[0][0]:]:
        return None
    return mentions[0][2]
