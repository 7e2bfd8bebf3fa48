"""The ``.llm`` accessor: a thin door onto ``dfllm.predict``, and the verbs, for every frame kind."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from typing_extensions import Unpack

from dfllm._api import apredict, predict
from dfllm._finetune import finetune
from dfllm.config.options import PredictOptions
from dfllm.outputs.verbs import classify, extract
from dfllm.outputs.verbs import filter as filter_rows
from dfllm.prompt.template import Template
from dfllm.runtime.progress import RunStats


class Verbs:
    """``classify``, ``extract`` and ``filter``: thin doors onto ``predict`` (``dfllm.outputs.verbs``),
    for every frame with an ``.llm`` accessor, lazy ones included."""

    _frame: Any

    def classify(self, column: str, labels: Sequence[str], *, engine: Any = "local", model: str | None = None,
                 target: str | None = None, **options: Unpack[PredictOptions]) -> Any:
        """A ``{column}_label`` column (or ``target``): one of ``labels`` per row, categorical."""
        return classify(self._frame, column, labels, engine=engine, model=model, target=target, **options)

    def extract(self, column: str, fields: Any, *, engine: Any = "local", model: str | None = None,
                target: str | None = None, **options: Unpack[PredictOptions]) -> Any:
        """Typed ``{column}_{field}`` columns: ``fields`` is a list of names or any ``schema`` form."""
        return extract(self._frame, column, fields, engine=engine, model=model, target=target, **options)

    def filter(self, template: str, *, engine: Any = "local", model: str | None = None,
               **options: Unpack[PredictOptions]) -> Any:
        """The rows the model answers "yes" for ``template``, a yes/no question about each row."""
        return filter_rows(self._frame, template, engine=engine, model=model, **options)


class LLMAccessor(Verbs):
    """``df.llm.predict(engine, model, template, target, **options)``; see ``dfllm.predict``."""

    def __init__(self, df: Any) -> None:
        self._frame = df

    def predict(self, engine: Any, model: str | None = None, template: str | Template | None = None,
                target: str | None = None, *, stats: RunStats | None = None,
                **options: Unpack[PredictOptions]) -> Any:
        return predict(self._frame, engine, model, template, target, stats=stats, **options)

    async def apredict(self, engine: Any, model: str | None = None, template: str | Template | None = None,
                       target: str | None = None, *, stats: RunStats | None = None,
                       **options: Unpack[PredictOptions]) -> Any:
        return await apredict(self._frame, engine, model, template, target, stats=stats, **options)

    def finetune(self, engine: Any, base_model: str, **options: Any) -> Any:
        return finetune(engine, base_model, self._frame, **options)


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
