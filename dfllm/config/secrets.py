"""A string that never shows itself: API keys live in ``Secret`` from the moment they arrive."""

from __future__ import annotations


class Secret:
    """Holds a credential; ``repr``/``str`` print a mask, ``reveal()`` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def scrub(self, text: str) -> str:
        """Remove the secret from text that might echo it (provider error messages)."""
        return text.replace(self._value, "***") if self._value else text

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
