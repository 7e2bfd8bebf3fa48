"""A string that never shows itself: API keys live in ``Secret`` from the moment they arrive."""

from __future__ import annotations

import base64
import binascii
import json
import re
import urllib.parse
from collections.abc import Iterable
from typing import Any


class Secret:
    """Holds a credential; ``repr``/``str`` print a mask, ``reveal()`` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def scrub(self, text: str) -> str:
        """Remove the secret, in every form it may be echoed (see ``secret_forms``), from text."""
        return Scrubber([self])(text)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling would write the key to disk (caches, multiprocessing): refuse.
        raise TypeError("dfllm.Secret cannot be pickled; pass the API key again in the new process.")


# Forms shorter than this are not scrubbed on their own: replacing "x" or "abc" everywhere would
# garble every message, and no real credential is that short (the whole header value still is).
_MIN_FORM = 6
_SECRET_KEY_WORDS = ("key", "secret", "token", "password", "authorization", "credential")


def secret_forms(value: str) -> set[str]:
    """Every form in which a secret header value may come back in a provider's answer.

    The value itself; without an auth scheme (``"Bearer sk-..."`` -> ``"sk-..."``); a Basic
    value's decoded ``user:password`` and password; for a JSON value (a Portkey config), every
    string under a key that names a credential (``api_key``, ``aws_secret_access_key``...), at
    any depth. Then each of those as encoders write it: URL-encoded (either hex case, or as a
    form), JSON-escaped, and inside base64 (see ``_base64_cores``).
    """
    forms = {value}
    scheme, _, rest = value.partition(" ")
    if rest and scheme.lower() in ("bearer", "basic", "token"):
        forms.add(rest.strip())
        if scheme.lower() == "basic":
            forms |= _basic_credentials(rest.strip())
    forms |= _json_credentials(value)
    for form in list(forms):
        forms |= _encoded_forms(form)
    return {f for f in forms if f == value or len(f) >= _MIN_FORM}


def _encoded_forms(form: str) -> set[str]:
    quoted = urllib.parse.quote(form, safe="")
    escaped = json.dumps(form)[1:-1]
    return {
        quoted,
        re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), quoted),
        urllib.parse.quote_plus(form),
        escaped,
        escaped.replace("/", "\\/"),  # JSON encoders that escape '/' (PHP's, for one)
        json.dumps(form, ensure_ascii=False)[1:-1],
        *_base64_cores(form),
    }


def _base64_cores(form: str) -> set[str]:
    """Base64 text found in the encoding of any text that contains ``form``.

    Base64 encodes 3 bytes at a time, so the encoding of ``form`` inside a longer text (``user:key``
    in a Basic header) depends on its offset modulo 3; for each offset, the whole 3-byte groups
    that lie within ``form`` always encode the same way. Scrubbing those leaves at most two bytes
    of the secret at either end, encoded.
    """
    data = form.encode()
    cores = set()
    for skip in range(3):
        whole = data[skip:][: (len(data) - skip) // 3 * 3]
        if whole:
            cores.add(base64.b64encode(whole).decode())
            cores.add(base64.urlsafe_b64encode(whole).decode())
    return cores


def _basic_credentials(encoded: str) -> set[str]:
    try:
        decoded = base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, ValueError):
        return set()
    return {decoded, decoded.partition(":")[2]}


def _json_credentials(value: str) -> set[str]:
    if not value.lstrip().startswith(("{", "[")):
        return set()
    try:
        payload = json.loads(value)
    except (ValueError, RecursionError):
        return set()
    found: set[str] = set()
    stack: list[tuple[str, Any]] = [("", payload)]
    while stack:
        name, node = stack.pop()
        if isinstance(node, dict):
            stack.extend((str(k), v) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((name, v) for v in node)
        elif isinstance(node, str) and any(word in name.lower() for word in _SECRET_KEY_WORDS):
            found.add(node)
    return found


class Scrubber:
    """Removes every form of a set of secrets from text (longest first, so a ``Bearer`` value
    is masked whole before its bare key is looked for)."""

    __slots__ = ("_forms",)

    def __init__(self, secrets: Iterable[Secret]) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if secret.reveal():
                forms |= secret_forms(secret.reveal())
        self._forms = sorted(forms, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for form in self._forms:
            if form in text:
                text = text.replace(form, "***")
        return text

    def __repr__(self) -> str:
        return f"Scrubber({len(self._forms)} forms)"


# Vendors' key prefixes: a segment with one (at its start or after a non-alphanumeric) is a key,
# whatever follows: OpenAI sk-/sk-proj-, Anthropic sk-ant-, Stripe-style sk_live_, Groq gsk_,
# Hugging Face hf_, GitHub ghp_/github_pat_, GitLab glpat-, NVIDIA nvapi-, xAI xai-, Perplexity
# pplx-, Replicate r8_, Fireworks fw_, Cerebras csk-, Slack xox?-, Google AIza, AWS key ids, JWTs.
_KEY_PREFIX = re.compile(
    r"(?<![A-Za-z0-9])(?:sk|pk|rk|gsk|hf|ghp|gho|ghu|ghs|ghr|github_pat|glpat|nvapi|xai|pplx|r8|fw|csk|xox[abposr])[-_]"
    r"[A-Za-z0-9_\-]{6,}|(?<![A-Za-z0-9])(?:AIza[A-Za-z0-9_\-]{20,}|A[KS]IA[A-Z0-9]{16}(?![A-Za-z0-9])"
    r"|eyJ[A-Za-z0-9_\-]{8,}\.)",
    re.I,
)
# Where a segment is an identifier, however random it looks: a UUID, or hex only (a Cloudflare
# account id, a commit or a hash: identifiers far more often than secrets in a base URL).
_IDENTIFIER = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]+|[0-9A-F]+")
# Runs of one character class; a capital starting a lowercase word is part of it (Llama, Instruct).
_CLASS_RUN = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_LETTER_RUN = re.compile(r"[a-z]+|[A-Z]+")
_VOWELS = frozenset("aeiouyAEIOUY")
_MIN_RANDOM = 20  # characters of letters and digits before a segment can look random
_MIN_LETTERS = 16  # letters in one run of one case before it is tested for word structure


def looks_like_key(part: str) -> bool:
    """Whether one path segment of a URL (or a parameter's name) looks like a credential.

    Masking a name is not harmless: what this calls a key is masked in the engine's repr and
    messages and scrubbed from every answer's text, so an ordinary name taken for a key would
    vanish from results. The rule leans on structure, not on length or mixed characters alone:

    - a vendor's key prefix (``_KEY_PREFIX``): always a key;
    - a UUID or a hex-only segment: an identifier (a Cloudflare account id, a hash), shown;
    - 20 or more letters and digits that change class at least every 2.9 characters on average
      (``Xk9fQ2mZ7pL4wR8tY3vB6nC1``): random base62/base64url/base36. Names are runs of words
      and numbers: ``Meta-Llama-3.1-70B-Instruct-Turbo`` changes class every 4.5 characters,
      ``deepseekr1distillqwen32b`` every 4, ``gpt4o20240806deployment`` every 4.6. Measured on
      20,000 uniform random base62 tokens: 1.6% at 24 characters change class less often and are
      not caught (1.2% at 32), the price of showing names (the busiest seen: every 3 characters);
    - a run of 16 or more letters of one case with no word structure: under a quarter vowels,
      or 6 consonants in a row (``qzmvbtkwhxjfplrngdycsaeo``). Words and concatenated names
      (``customersupportassistant``, ``accountsdeveloperplayground``) have both.
    """
    if _KEY_PREFIX.search(part):
        return True
    body = "".join(c for c in part if c.isascii() and c.isalnum())
    if not body or _IDENTIFIER.fullmatch(part) or _IDENTIFIER.fullmatch(body):
        return False
    if len(body) >= _MIN_RANDOM and len(_CLASS_RUN.findall(body)) / len(body) >= 0.35:
        return True
    return any(len(run) >= _MIN_LETTERS and _no_word_structure(run) for run in _LETTER_RUN.findall(part))


# What splits a pasted value into the tokens a key could be (a key holds none of these).
_TOKEN_SEPARATORS = re.compile(r"[\s\"'`,;:=()\[\]{}<>]+")


def key_tokens(value: Any) -> list[str]:
    """The tokens of the strings in ``value`` (however nested) that look like a key: a message that
    would quote such a value (``temperature=sk-proj-...`` pasted in the wrong place) must not."""
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found += [token for token in _TOKEN_SEPARATORS.split(item) if token and looks_like_key(token)]
        elif isinstance(item, dict):
            stack += [*item, *item.values()]
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack += item
    return found


def may_hold_key(value: Any) -> bool:
    return bool(key_tokens(value))


def without_keys(message: str, value: Any) -> str:
    """``message`` with every key-like token of ``value`` replaced by its size, as written or as a repr."""
    for token in sorted(set(key_tokens(value)), key=len, reverse=True):
        hidden = f"({len(token)} characters, not shown: it may hold a key)"
        message = message.replace(token, hidden).replace(repr(token)[1:-1], hidden)
    return message


def shown_value(value: Any) -> str:
    """``value`` as a message quotes it (its repr), or only its size where it may hold a key."""
    if may_hold_key(value):
        size = len(value) if isinstance(value, str) else len(repr(value))
        return f"a value ({size} characters, not shown: it may hold a key)"
    return repr(value)


def _no_word_structure(letters: str) -> bool:
    vowels = sum(c in _VOWELS for c in letters)
    longest_consonants = max(len(r) for r in re.split("[aeiouyAEIOUY]", letters))
    return vowels * 4 < len(letters) or longest_consonants >= 6


def url_secrets(url: str) -> list[Secret]:
    """The parts of ``url`` that look like credentials: path segments (see ``looks_like_key``),
    every query value, and a user:password. Sent as given, never shown."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return [Secret(url)]
    found = [urllib.parse.unquote(s) for s in parts.path.split("/") if looks_like_key(urllib.parse.unquote(s))]
    found += [value for _, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True) if value]
    found += [p for p in (parts.username, parts.password) if p]
    if parts.query:
        found.append(parts.query)
    if parts.fragment:
        found.append(parts.fragment)
    return [Secret(value) for value in found]


def shown_url(url: str) -> str:
    """``url`` as fit for a message or repr: a user:password, a query and a fragment become ``***``,
    and so does every path segment that looks like a credential."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # an unclosed IPv6 bracket: nothing of it is shown
        return "***"
    netloc = parts.netloc
    if parts.username or parts.password:
        netloc = "***@" + netloc.rsplit("@", 1)[-1]
    path = "/".join("***" if looks_like_key(urllib.parse.unquote(s)) else s for s in parts.path.split("/"))
    return urllib.parse.urlunsplit((parts.scheme, netloc, path, "***" if parts.query else "",
                                    "***" if parts.fragment else ""))
