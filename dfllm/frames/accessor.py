"""The ``.llm`` accessor: a thin door onto ``dfllm.predict``, and the verbs, for every frame kind.

The functions it forwards to are given by the package when it is imported (``use_drivers``):
frames are the adapters below the plan and drive stages, and do not import them.
"""

from __future__ import annotations

import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from typing_extensions import Unpack

from dfllm.config.options import PredictOptions
from dfllm.prompt.template import Template
from dfllm.runtime.progress import RunStats


def _not_given(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("dfllm's drivers are given to the accessor when dfllm is imported; import dfllm first.")


async def _not_given_async(*args: Any, **kwargs: Any) -> Any:
    return _not_given()


@dataclass
class Drivers:
    """What the accessor forwards to: ``dfllm.predict``, ``apredict``, the verbs and ``finetune``."""

    predict: Callable[..., Any] = _not_given
    apredict: Callable[..., Awaitable[Any]] = _not_given_async
    classify: Callable[..., Any] = _not_given
    extract: Callable[..., Any] = _not_given
    filter: Callable[..., Any] = _not_given
    finetune: Callable[..., Any] = _not_given
    sim_join: Callable[..., Any] = _not_given
    dedup: Callable[..., Any] = _not_given
    sem_join: Callable[..., Any] = _not_given
    embed: Callable[..., Any] = _not_given


_drivers = Drivers()


def use_drivers(drivers: Drivers) -> None:
    """Let every ``.llm`` accessor forward to these functions."""
    global _drivers
    _drivers = drivers


class Verbs:
    """``classify``, ``extract`` and ``filter``: thin doors onto ``predict`` (``dfllm.drive.verbs``),
    for every frame with an ``.llm`` accessor, lazy ones included."""

    _frame: Any

    def classify(self, column: str, labels: Sequence[str], *, engine: Any = "local", model: str | None = None,
                 target: str | None = None, image: bool = False, **options: Unpack[PredictOptions]) -> Any:
        """A ``{column}_label`` column (or ``target``): one of ``labels`` per row, categorical;
        ``image=True`` when ``column`` holds pictures."""
        return _drivers.classify(self._frame, column, labels, engine=engine, model=model, target=target,
                                 image=image, **options)

    def extract(self, column: str, fields: Any, *, engine: Any = "local", model: str | None = None,
                target: str | None = None, image: bool = False, **options: Unpack[PredictOptions]) -> Any:
        """Typed ``{column}_{field}`` columns: ``fields`` is a list of names or any ``schema`` form;
        ``image=True`` when ``column`` holds pictures (a receipt's photo)."""
        return _drivers.extract(self._frame, column, fields, engine=engine, model=model, target=target,
                                image=image, **options)

    def filter(self, template: str, *, engine: Any = "local", model: str | None = None,
               **options: Unpack[PredictOptions]) -> Any:
        """The rows the model answers "yes" for ``template``, a yes/no question about each row."""
        return _drivers.filter(self._frame, template, engine=engine, model=model, **options)


class LLMAccessor(Verbs):
    """``df.llm.predict(engine, model, template, target, **options)``; see ``dfllm.predict``."""

    def __init__(self, df: Any) -> None:
        self._frame = df

    def predict(self, engine: Any, model: str | None = None, template: str | Template | None = None,
                target: str | None = None, *, stats: RunStats | None = None,
                **options: Unpack[PredictOptions]) -> Any:
        return _drivers.predict(self._frame, engine, model, template, target, stats=stats, **options)

    async def apredict(self, engine: Any, model: str | None = None, template: str | Template | None = None,
                       target: str | None = None, *, stats: RunStats | None = None,
                       **options: Unpack[PredictOptions]) -> Any:
        return await _drivers.apredict(self._frame, engine, model, template, target, stats=stats, **options)

    def embed(self, engine: Any, model: str | None = None, template: str | Template | None = None,
              target: str | None = None, *, stats: RunStats | None = None,
              **options: Unpack[PredictOptions]) -> Any:
        """A vector column ``target`` (see ``dfllm.embed``); ``template`` may be a bare column name."""
        return _drivers.embed(self._frame, engine, model, template, target, stats=stats, **options)

    def finetune(self, engine: Any, base_model: str, **options: Any) -> Any:
        return _drivers.finetune(engine, base_model, self._frame, **options)

    def sim_join(self, right: Any, *, left_on: str, right_on: str, k: int = 5, threshold: float | None = None,
                 **options: Any) -> Any:
        """Each row beside its ``k`` most similar rows of ``right`` by cosine; see ``dfllm.sim_join``."""
        return _drivers.sim_join(self._frame, right, left_on=left_on, right_on=right_on, k=k, threshold=threshold,
                                 **options)

    def dedup(self, column: str, *, threshold: float = 0.9, **options: Any) -> Any:
        """A ``{column}_cluster`` column grouping near-duplicate vectors; see ``dfllm.dedup``."""
        return _drivers.dedup(self._frame, column, threshold=threshold, **options)

    def sem_join(self, right: Any, engine: Any, model: str | None, template: str | Template,
                 target: str = "match", **options: Any) -> Any:
        """The candidate pairs with ``right`` the model says match; see ``dfllm.sem_join``."""
        return _drivers.sem_join(self._frame, right, engine, model, template, target, **options)


def taken_by_other(cls: type, name: str = "llm") -> bool:
    """True when another package already put ``name`` on ``cls``: we refuse to replace it silently."""
    # Read through the class, pandas' and Polars' registrations both give back the accessor class.
    existing = getattr(cls, name, None)
    if existing is None or (isinstance(existing, type) and issubclass(existing, Verbs)):
        return False
    warnings.warn(
        f"{cls.__module__}.{cls.__name__}.{name} is already registered by "
        f"{getattr(existing, '__module__', '?')}; dfllm leaves it in place. "
        "Use dfllm.predict(df, ...) instead of df.llm.predict(...).",
        UserWarning,
        stacklevel=3,
    )
    return True
