"""The one error hierarchy. Every exception dfllm raises is a ``DfllmError``.

```
DfllmError
├── ConfigurationError        raised before any request: bad input the caller can fix
│   ├── UnknownEngineError    the engine name is neither created nor a known provider
│   ├── MissingAPIKeyError    no key given and none in the provider's environment variable
│   ├── TemplateError         the template names columns the frame lacks, or is malformed
│   ├── ParameterError        an option or USING parameter is unknown or out of range
│   └── CacheError            the cache file cannot be opened: corrupt, foreign, not writable
├── EngineError               one request failed; ``status``, ``retryable``, ``retry_after`` (+ its header)
│   ├── AuthenticationError   401/403: the key is wrong; stops the whole run at once
│   ├── BadRequestError       400/404/422 and other 4xx: the request itself is wrong; not retried
│   ├── RateLimitError        429: carries ``retry_after`` (seconds) when the server said
│   ├── ServerError           5xx, 408, 409: the provider failed; retried
│   ├── TransportError        connection refused/reset, timeout: retried
│   ├── RedirectError         3xx to a completion request: never followed (keys, method, body); not retried
│   └── ResponseFormatError   2xx whose body is not a usable answer: not retried, never cached
│       ├── RefusalError      the model refused, or the provider's filter withheld the answer
│       └── IncompleteAnswerError  the answer was cut off (finish_reason "length") or has no text
├── LabelError                the answer matched none of ``choices`` (raw text in the message)
├── SchemaError               the answer does not fit ``schema``, after every re-ask; carries ``raw``
├── FineTuneError             a fine-tuning job failed or its data is invalid
└── BatchError                some rows failed; ``.partial`` holds every answer that arrived
```

Messages say what was wrong, the offending value, and the fix. They never contain a secret.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Sequence
from typing import Any


class DfllmError(Exception):
    """Base class of every error raised by dfllm."""


class ConfigurationError(DfllmError, ValueError):
    """Bad input found before any request was sent. ``problems`` lists each one."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"{len(self.problems)} problems:\n{lines}"
        super().__init__(message)


class UnknownEngineError(ConfigurationError):
    """The engine name is neither a created engine nor a known provider."""


class MissingAPIKeyError(ConfigurationError):
    """No API key was given and the provider's environment variable is empty."""


class TemplateError(ConfigurationError):
    """The prompt template is malformed or names columns the frame does not have."""


class ParameterError(ConfigurationError):
    """An option or USING parameter is unknown, of the wrong type or out of range."""


class CacheError(ConfigurationError):
    """The cache file cannot be used: corrupt, not a dfllm cache, a directory, not writable."""


class EngineError(DfllmError):
    """One request failed. ``status`` is the HTTP status where there was one."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        retry_after_header: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        # Seconds the server asked us to wait, if it said: finite and >= 0, but possibly huge
        # (``Retry-After: 1e9``); the caller caps it by its own budget.
        self.retry_after = retry_after
        # The header that said so, as received (``"retry-after: 1e9"``), to name it in a message.
        self.retry_after_header = retry_after_header


class AuthenticationError(EngineError):
    """The provider refused the credentials (401/403). Retrying cannot help."""


class BadRequestError(EngineError):
    """The provider rejected the request itself (400, 404, 422, other 4xx)."""


class RateLimitError(EngineError):
    """The provider asked us to slow down (429)."""

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        status: int | None = 429,
        retry_after: float | None = None,
        retry_after_header: str | None = None,
    ) -> None:
        super().__init__(message, status=status, retry_after=retry_after, retry_after_header=retry_after_header)


class ServerError(EngineError):
    """The provider failed (5xx), timed out the request (408) or hit a conflict (409)."""

    retryable = True


class TransportError(EngineError):
    """The request never got an HTTP answer: refused, reset or timed out."""

    retryable = True


class RedirectError(EngineError):
    """The server answered a request with a redirect (3xx).

    Never followed: a redirect can carry the key headers to another host, and a 301/302 turns
    the POST into a bodyless GET whose answer is not an answer to the prompt.
    """


class ResponseFormatError(EngineError):
    """A successful status whose body is not a usable chat completion."""


class RefusalError(ResponseFormatError):
    """The model refused (``message.refusal``) or the provider's filter withheld the answer."""


class IncompleteAnswerError(ResponseFormatError):
    """The answer was cut off (``finish_reason: "length"``) or carries no text (tool calls only).

    ``text`` holds the cut-off text (None when there was none), for a caller that can still use
    a prefix (a label that was complete before the limit).
    """

    def __init__(self, message: str, *, status: int | None = None, text: str | None = None) -> None:
        super().__init__(message, status=status)
        self.text = text


class LabelError(DfllmError):
    """The model's answer matched none of the allowed ``choices``."""


class SchemaError(DfllmError):
    """The model's answer does not fit the ``schema``; ``raw`` is its text, ``problem`` says why."""

    def __init__(self, message: str, *, raw: str = "", problem: str = "", repairable: bool = True) -> None:
        super().__init__(message)
        self.raw = raw
        self.problem = problem or message
        self.repairable = repairable  # False: asking again cannot help (the answer was cut off)


class FineTuneError(DfllmError):
    """Fine-tuning data is invalid, or the provider's job failed."""


class BatchError(DfllmError):
    """Some rows failed. Every answer that did arrive is kept in ``partial``.

    ``partial`` is the result frame with null in the target column for failed rows;
    ``errors`` maps row position to its exception.
    """

    def __init__(self, partial: Any, errors: dict[int, BaseException], total: int, *, stats: Any = None,
                 scope: str | None = None) -> None:
        self.partial = partial
        self.errors = errors
        self.stats = stats  # the run's RunStats
        causes = Counter(_cause(e) for e in errors.values())
        lines = "\n".join(f"  {n} x {cause}" for cause, n in causes.most_common())
        advice = (f"The failures are {scope}." if scope else
                  "The other rows' answers are kept: use `err.partial`, or pass errors='null' "
                  "to get them with an error column instead of an exception.")
        super().__init__(f"{len(errors)} of {total} rows failed:\n{lines}\n{advice}")


def _cause(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text[:160]}"


def did_you_mean(word: str, options: Sequence[str]) -> str:
    """A " Did you mean 'x'?" suffix for a misspelt name, or "" when nothing is close."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""
