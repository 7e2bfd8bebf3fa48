"""``create_model``: dfllm's ``CREATE MODEL name PREDICT target USING engine, model_name, prompt_template``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pandas as pd

from dfllm._exceptions import ParameterError, did_you_mean
from dfllm.config.catalog import describe_model
from dfllm.config.engines import EngineConfig, resolve_engine
from dfllm.config.options import OPTION_NAMES, option_problems
from dfllm.prompt.template import is_null
from dfllm.runtime.sync import run_sync

_MODEL_PARAMS = ("model_name", "model", "prompt_template", "column")

_DriverT = TypeVar("_DriverT")


@dataclass
class _Drivers:
    """``predict`` / ``apredict``, given by the API module that defines them (``use_drivers``): a
    model is configuration, and configuration does not import the stages that run it."""

    predict: Callable[..., Any] | None = None
    apredict: Callable[..., Awaitable[Any]] | None = None


_drivers = _Drivers()


def use_drivers(predict: Callable[..., Any], apredict: Callable[..., Awaitable[Any]]) -> None:
    """Let ``Model.predict`` / ``Model.apredict`` run through these functions."""
    _drivers.predict, _drivers.apredict = predict, apredict


def _given(driver: _DriverT | None) -> _DriverT:
    # An explicit check, not an assert: ``python -O`` would strip an assert and call None.
    if driver is None:
        raise RuntimeError("Model.predict has no driver: dfllm.drive.eager gives them (use_drivers) "
                           "when it is imported, as `import dfllm` does; import dfllm first")
    return driver


def unpack(engine: Any, model: str | None, template: Any, target: str | None,
           ) -> tuple[Any, str | None, Any, str | None, Mapping[str, Any] | None]:
    """``(engine, model, template, target, model options)``: a ``Model`` given as the engine fills
    what the call left out (its options are then a layer below the call's); anything else is as given."""
    if not isinstance(engine, Model):
        return engine, model, template, target, None
    return (engine.engine, model or engine.model_name, template or engine.prompt_template,
            target or engine.target, engine.options)


@dataclass(frozen=True)
class Model:
    """A reusable prediction: engine, provider model id, prompt template, target column, options."""

    name: str
    engine: Any
    target: str
    model_name: str | None
    prompt_template: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def predict(self, df: Any = None, /, **kwargs: Any) -> Any:
        """``model.predict(df, **options)`` adds the target column(s) to a copy of ``df``;
        ``model.predict(text="...")`` answers one row (the keywords are its columns), like
        ``SELECT text, target FROM model WHERE text = '...'``: the answer, or with a ``schema``
        a dict of its fields. A lazy frame (Dask, Polars LazyFrame) gives back a lazy frame.
        """
        if df is not None:  # eager or lazy: predict answers both, as it does for any frame
            return _given(_drivers.predict)(df, self, **kwargs)
        return run_sync(self.apredict(df, **kwargs))

    async def apredict(self, df: Any = None, /, **kwargs: Any) -> Any:
        """The async form of ``predict``: the same frame and single-row forms."""
        apredict = _given(_drivers.apredict)
        if df is not None:
            return await apredict(df, self, **kwargs)
        if not kwargs:
            raise ParameterError(
                f"Model {self.name!r}.predict needs a DataFrame or the row's columns as keywords, "
                "e.g. model.predict(text='I love machine learning!')."
            )
        frame = await apredict(pd.DataFrame({k: [v] for k, v in kwargs.items()}), self)
        row = {name: frame[name].tolist()[0] for name in frame.columns if name not in kwargs}
        values = {name: None if is_null(value) else value for name, value in row.items()}
        if self.target in values:
            answer = values[self.target]
            return None if answer is None else str(answer)
        prefix = f"{self.target}_"
        return {name[len(prefix):]: value for name, value in values.items() if name.startswith(prefix)}

    def describe(self) -> dict[str, Any]:
        """What the provider says of this model (``/models/{id}``); Anyscale adds its model card link."""
        return describe_model(self.engine, self.model_name)


def create_model(name: str, *, engine: Any, predict: str, model_name: str | None = None,
                 prompt_template: str | None = None, **using: Any) -> Model:
    """Create a reusable model, like MindsDB's ``CREATE MODEL name PREDICT target USING ...``.

    ``using`` takes Portkey's ``column`` (the column that is the prompt) and ``model`` (a
    synonym of ``model_name``), plus any prediction option as the model's default
    (``max_tokens``, ``temperature``, ``system``, ``choices``...). The provider's own model
    defaults (Portkey's ``max_tokens=100``, from its seed) fill in what neither ``using`` nor
    the engine sets.
    """
    problems: list[str] = []
    config = resolve_engine(engine)
    if "model" in using:
        synonym = using.pop("model")
        if model_name is not None and synonym != model_name:
            problems.append(f"model={synonym!r} and model_name={model_name!r} disagree; they are synonyms "
                            "(the provider's model id). Give one of them.")
        model_name = model_name or synonym
    column = using.pop("column", None)
    valid = sorted(OPTION_NAMES | set(_MODEL_PARAMS))
    for key in using:
        if key not in OPTION_NAMES:
            problems.append(f"Unknown USING parameter {key!r}.{did_you_mean(key, valid)} Valid: {', '.join(valid)}.")
    problems += option_problems({k: v for k, v in using.items() if k in OPTION_NAMES})
    if prompt_template is None and column is not None:
        prompt_template = "{{" + str(column) + "}}"
    if prompt_template is not None and column is not None and "{{" + str(column) + "}}" not in prompt_template:
        problems.append("Give either prompt_template or column (the column that is the prompt), not both.")
    if prompt_template is None:
        problems.append("create_model needs prompt_template ('... {{text}} ...') or column='question'.")
    if not isinstance(predict, str) or not predict:
        problems.append(f"predict must name the target column, e.g. predict='sentiment', got {predict!r}.")
    if model_name is None and isinstance(config, EngineConfig):
        model_name = config.provider.default_model
    if model_name is None:
        problems.append("create_model needs model_name, the provider's model id, e.g. model_name='mistral-7b'.")
    if problems:
        raise ParameterError(problems)
    assert prompt_template is not None
    defaults: dict[str, Any] = {}
    if isinstance(config, EngineConfig):
        # The seed's CREATE MODEL defaults (Portkey: max_tokens=100), where neither the engine nor
        # USING sets them; they live in the model's options, so its repr shows them.
        defaults = {k: v for k, v in config.provider.model_defaults.items() if k not in config.options}
    # Keep the engine as given: a name is looked up again at predict time, like MindsDB.
    return Model(name, engine, predict, model_name, prompt_template, {**defaults, **using})
