"""Verbs: the common questions asked of a frame, each a few lines over ``predict``.

- ``classify(df, column, labels)``: one label per row, in a categorical ``{column}_label`` column.
- ``extract(df, column, fields)``: typed ``{column}_{field}`` columns (``fields``: a list of
  names, read as strings, or any ``schema`` form).
- ``filter(df, template)``: the rows the model answers "yes" for.

They build a template and options and call ``predict``: one execution path, the same cache,
limits, retries and errors. ``engine`` defaults to ``"local"`` (the bundled model, offline).
On a lazy frame (Polars LazyFrame, Dask) each verb returns a lazy frame too, and sends nothing
until it is computed.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from typing_extensions import Unpack

from dfllm import frames
from dfllm._exceptions import ParameterError
from dfllm.config.options import PredictOptions
from dfllm.drive.eager import predict
from dfllm.outputs.schema import normalise_schema

_YES_NO = ["yes", "no"]


def classify(df: Any, column: str, labels: Sequence[str], *, engine: Any = "local", model: str | None = None,
             target: str | None = None, image: bool = False, **options: Unpack[PredictOptions]) -> Any:
    """A copy of ``df`` with ``target`` (default ``{column}_label``): one of ``labels`` per row.
    ``image=True``: ``column`` holds images (see image cells), each classified as a picture."""
    shown = ", ".join(str(label) for label in labels) if _is_labels(labels) else repr(labels)
    what, cell = _subject(column, image)
    template = (f"Classify the {what} into exactly one of these labels: {shown}. Answer with the label only."
                f"\n\n{what.capitalize()}: {cell}")
    call: dict[str, Any] = {**options, "choices": list(labels) if _is_labels(labels) else labels}
    return predict(df, engine, model, template, target or f"{column}_label", **call)


def extract(df: Any, column: str, fields: Any, *, engine: Any = "local", model: str | None = None,
            target: str | None = None, image: bool = False, **options: Unpack[PredictOptions]) -> Any:
    """A copy of ``df`` with one typed column ``{target}_{field}`` per field (``target``: ``column``).
    ``image=True``: ``column`` holds images (a receipt's photo), the fields read from each picture."""
    if isinstance(fields, (list, tuple)) and all(isinstance(f, str) for f in fields):
        fields = {name: str for name in fields}
    names = _field_names(fields)
    what, cell = _subject(column, image)
    template = f"Extract these fields from the {what}: {', '.join(names)}.\n\n{what.capitalize()}: {cell}"
    call: dict[str, Any] = {**options, "schema": fields}
    return predict(df, engine, model, template, target or column, **call)


def _subject(column: str, image: bool) -> tuple[str, str]:
    """What a verb's prompt calls the cell, and its placeholder: a text, or an image."""
    return ("image", f"{{{{image:{column}}}}}") if image else ("text", f"{{{{{column}}}}}")


def filter(df: Any, template: str, *, engine: Any = "local", model: str | None = None,
           **options: Unpack[PredictOptions]) -> Any:
    """The rows of ``df`` the model answers "yes" for ``template`` (a yes/no question about the row).

    Rows answered "no", and with ``errors="null"`` rows whose answer failed, are left out; with
    ``errors="raise"`` a failed row raises ``BatchError`` as ``predict`` does.
    """
    system = options.get("system") or "Answer the question about the text with yes or no only."
    call: dict[str, Any] = {**options, "choices": _YES_NO, "system": system}
    lazy = frames.lazy_kind_for(df)
    if lazy is not None:  # the answers and the filter both stay lazy
        target = f"_dfllm_keep_{uuid.uuid4().hex[:12]}"
        return lazy.keep_yes(predict(df, engine, model, template, target, **call), target)
    adapter = frames.adapter_for(df)
    keep_rows = getattr(adapter, "keep_rows", None)
    if keep_rows is None:
        raise ParameterError(f"filter does not support {adapter.name} frames yet; use predict and filter the column.")
    existing = set(adapter.column_names(df))
    target = next(t for t in (f"_dfllm_keep{i or ''}" for i in range(len(existing) + 1))
                  if not {t, f"{t}_error"} & existing)
    answered = predict(df, engine, model, template, target, **call)
    return keep_rows(df, [answer == "yes" for answer in adapter.column_values(answered, target)])


def _is_labels(labels: Any) -> bool:
    return isinstance(labels, (list, tuple)) and all(isinstance(label, str) for label in labels)


def _field_names(fields: Any) -> list[str]:
    """The field names to mention in the prompt; the schema itself is checked by ``predict``."""
    try:
        return [key for key, _, _ in normalise_schema(fields).fields]
    except ParameterError:
        return []  # predict reports the problem with every other one
