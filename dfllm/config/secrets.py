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


# A URL part is taken for a credential when it starts like a vendor's key (OpenAI's sk-, Groq's
# gsk_, Hugging Face's hf_, GitHub's ghp_, Google's AIza...) or holds a random-looking run: 16 or
# more letters and digits, both mixed in. Words, versions, model and deployment names are runs of
# letters or short runs; UUIDs are runs of at most 12.
_KEY_PREFIX = re.compile(r"^(sk|pk|rk|gsk|hf|ghp|gho|github_pat|xai|key)[-_].{6,}|^AIza.{10,}", re.I)
_RANDOM_RUN = re.compile(r"(?=[A-Za-z0-9]*[0-9])(?=[A-Za-z0-9]*[A-Za-z])[A-Za-z0-9]{16,}")


def looks_like_key(part: str) -> bool:
    """Whether one path segment or query value of a URL looks like a credential."""
    return bool(_KEY_PREFIX.match(part) or _RANDOM_RUN.search(part))


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
