"""The option table: every knob of a prediction, declared once.

Each ``Option`` says its name, type, default, allowed values and a one-line doc, whether it is
sent to the provider (a request body field) or read by policy, and what the local engine calls
it. Validation, the README's options table, the ``PredictOptions`` TypedDict check, the local
engine's parameter mapping and the CLI flags are all derived from ``OPTIONS``.

Options come in three layers, later ones winning: the engine's (``create_engine``), the
model's (``create_model``), the call's (``predict(..., **options)``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict

from dfllm._exceptions import ParameterError, did_you_mean
from dfllm.config.secrets import shown_value, without_keys
from dfllm.outputs.choices import label_problems
from dfllm.outputs.schema import OutputSchema, normalise_schema
from dfllm.prompt.template import surrogate_problem
from dfllm.runtime.cost import Prices
from dfllm.runtime.location import CacheLocation, cache_problem, sqlite_path

Check = Callable[[str, Any], "str | None"]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive_int(name: str, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return f"{name} must be a positive integer, got {shown_value(value)}."
    return None


def non_negative_int(name: str, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return f"{name} must be an integer >= 0, got {shown_value(value)}."
    return None


def positive_number(name: str, value: Any) -> str | None:
    if not _is_number(value) or value <= 0:
        return f"{name} must be a finite positive number, got {shown_value(value)}."
    return None


def _price(name: str, value: Any) -> str | None:
    if not _is_number(value) or value < 0:
        return f"{name} must be a price in USD per million tokens, 0 or more, e.g. 0.15, got {shown_value(value)}."
    return None


def _rpm(name: str, value: Any) -> str | None:
    # The pacer's bucket holds a minute of requests: below one a minute, no request ever fits.
    if not _is_number(value) or value < 1:
        return f"{name} must be a finite number of requests per minute, at least 1, got {shown_value(value)}."
    return None


def number_in(low: float, high: float) -> Check:
    def check(name: str, value: Any) -> str | None:
        if not _is_number(value) or not low <= value <= high:
            return f"{name} must be a number from {low:g} to {high:g}, got {shown_value(value)}."
        return None

    return check


def integer(name: str, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{name} must be an integer, got {shown_value(value)}."
    return None


def text(name: str, value: Any) -> str | None:
    return None if isinstance(value, str) else f"{name} must be a string, got {shown_value(value)}."


def flag(name: str, value: Any) -> str | None:
    return None if isinstance(value, bool) else f"{name} must be True or False, got {shown_value(value)}."


def one_of(*allowed: Any) -> Check:
    def check(name: str, value: Any) -> str | None:
        if isinstance(value, bool) or value not in allowed:
            return f"{name} must be one of {', '.join(repr(a) for a in allowed)}, got {shown_value(value)}."
        return None

    return check


def _stop(name: str, value: Any) -> str | None:
    if isinstance(value, str):
        return None
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return None
    return f"{name} must be a string or a list of strings, got {shown_value(value)}."


def _mapping(name: str, value: Any) -> str | None:
    if not isinstance(value, Mapping):
        return f"{name} must be a dict, got {shown_value(value)}."
    return _strict_json(name, value)


# Body fields dfllm sets itself: an extra_body entry for one of them would silently replace it.
RESERVED_BODY_FIELDS = ("model", "messages", "stream", "n")


def _extra_body(name: str, value: Any) -> str | None:
    if not isinstance(value, Mapping):
        return f"{name} must be a dict of extra request fields, got {shown_value(value)}."
    clash = [k for k in value if k in RESERVED_BODY_FIELDS]
    if clash:
        return (f"{name} may not set {', '.join(repr(k) for k in clash)}: dfllm sets these itself. "
                "Pass the model as predict's model argument; prompts come from the template.")
    options = [k for k in value if k in OPTION_BY_NAME]
    if options:
        return (f"{name} may not set {', '.join(repr(k) for k in options)}: pass "
                f"{' and '.join(f'{k}=...' for k in options)} as an option, where it is checked.")
    return _strict_json(name, value)


def _strict_json(name: str, value: Any) -> str | None:
    """A body field must be strict JSON: no NaN/inf (invalid JSON), no sets or other objects."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return f"{name} must be plain JSON (dicts, lists, strings, finite numbers, booleans, None): {exc}."
    return None


def _choices(name: str, value: Any) -> str | None:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        return f"{name} must be a list of labels, e.g. ['positive', 'negative'], got {shown_value(value)}."
    if not all(isinstance(c, str) and c.strip() for c in value):
        return f"{name} must be a list of non-empty strings, e.g. ['positive', 'negative'], got {shown_value(value)}."
    if len(set(value)) < 2 or len(set(value)) != len(value):
        return f"{name} needs at least two labels, each once, got {shown_value(list(value))}."
    problems = label_problems(value) + [p for c in value if (p := surrogate_problem(f"{name} label {c!r}", c))]
    return " ".join(problems) or None


def _system(name: str, value: Any) -> str | None:
    return text(name, value) or surrogate_problem(name, value)


def _schema(name: str, value: Any) -> str | None:
    try:
        normalise_schema(value)
    except ParameterError as exc:
        return " ".join(exc.problems)
    return None


# Each request in flight holds a connection (a file descriptor) and a worker; past a few thousand a
# run fails on "too many open files" or meets every provider's own cap, rather than going faster.
MAX_CONCURRENCY = 4096


def _concurrency(name: str, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CONCURRENCY:
        return (f"{name} must be a positive integer, at most {MAX_CONCURRENCY:,} (requests in flight at once, each "
                f"holding a connection), got {shown_value(value)}. Use rpm= to set a rate.")
    return None


def _progress(name: str, value: Any) -> str | None:
    return None if value is None or isinstance(value, bool) else (
        f"{name} must be True, False or None (on when interactive), got {shown_value(value)}.")


# Each re-ask sends the whole conversation so far (every answer and its problem) again: a model
# that has not fit after this many will not, and the row's cost grows with the square of the count.
MAX_REPAIRS = 10


def _embed_batch_size(name: str, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2048:
        return f"{name} must be a whole number from 1 to 2048 (texts per request), got {shown_value(value)}."
    return None


def _folder(name: str, value: Any) -> str | None:
    if not isinstance(value, (str, Path)) or not str(value).strip():
        return f"{name} must be a folder path (str or pathlib.Path), got {shown_value(value)}."
    if not Path(value).expanduser().is_dir():
        return f"{name}={shown_value(str(value))} is not a folder: give the folder the image files are in."
    return None


def _max_repairs(name: str, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_REPAIRS:
        return (f"{name} must be an integer from 0 to {MAX_REPAIRS}, got {shown_value(value)}: each re-ask sends the "
                f"whole conversation so far again. Use max_repairs={MAX_REPAIRS} at most.")
    return None


@dataclass(frozen=True)
class Option:
    """One option: how it is checked, documented, sent and named elsewhere."""

    name: str
    type: str  # as the README shows it
    default: Any
    doc: str
    check: Check
    sent: bool = False  # a request body field (sampling parameter) rather than policy
    local: str | None = None  # llama-cpp-python's name for it; None: the local engine ignores it
    default_text: str | None = None  # how the README shows the default, when not repr(default)
    # How the command line's text becomes a value; None: parsed by ``type`` (see dfllm.cli).
    parse: Callable[[str], Any] | None = None

    @property
    def shown_default(self) -> str:
        return self.default_text if self.default_text is not None else repr(self.default)


_PROVIDERS = "provider's"
OPTIONS: tuple[Option, ...] = (
    # Sent to the provider as top-level body fields.
    Option("max_tokens", "int", None, "most tokens to generate", positive_int, sent=True, local="max_tokens",
           default_text=_PROVIDERS),
    Option("max_completion_tokens", "int", None, "OpenAI's newer name for max_tokens", positive_int, sent=True,
           local="max_tokens", default_text=_PROVIDERS),
    Option("temperature", "float", None, "sampling temperature, 0 to 2", number_in(0, 2), sent=True,
           local="temperature", default_text=_PROVIDERS),
    Option("top_p", "float", None, "nucleus sampling, 0 to 1", number_in(0, 1), sent=True, local="top_p",
           default_text=_PROVIDERS),
    Option("top_k", "int", None, "sample from the k most likely tokens", positive_int, sent=True, local="top_k",
           default_text=_PROVIDERS),
    Option("min_p", "float", None, "minimum token probability, 0 to 1", number_in(0, 1), sent=True,
           local="min_p", default_text=_PROVIDERS),
    Option("seed", "int", None, "sampling seed, for reproducible answers", integer, sent=True, local="seed",
           default_text=_PROVIDERS),
    Option("stop", "str | list[str]", None, "stop sequences", _stop, sent=True, local="stop",
           default_text=_PROVIDERS),
    Option("presence_penalty", "float", None, "-2 to 2", number_in(-2, 2), sent=True, local="presence_penalty",
           default_text=_PROVIDERS),
    Option("frequency_penalty", "float", None, "-2 to 2", number_in(-2, 2), sent=True,
           local="frequency_penalty", default_text=_PROVIDERS),
    Option("repetition_penalty", "float", None, "vLLM/llama.cpp repetition penalty", positive_number, sent=True,
           local="repeat_penalty", default_text=_PROVIDERS),
    Option("logit_bias", "dict", None, "token id -> bias", _mapping, sent=True, local="logit_bias",
           default_text=_PROVIDERS),
    Option("user", "str", None, "end-user id for the provider's abuse monitoring", text, sent=True,
           default_text="none"),
    Option("prompt_cache_key", "str", None, "OpenAI: routes requests sharing a long prefix (system prompt, "
           "fixed instructions) to the same prompt cache, for more cached_tokens", text, sent=True,
           default_text="none"),
    Option("reasoning_effort", "str", None, "reasoning models: 'minimal', 'low', 'medium' or 'high'",
           one_of("minimal", "low", "medium", "high"), sent=True, default_text=_PROVIDERS),
    Option("extra_body", "dict", None, "further request body fields (not model, messages, stream, n)",
           _extra_body, sent=True, default_text="none"),
    # Read by policy; never sent as such.
    Option("system", "str", None, "system prompt", _system, default_text="none"),
    Option("choices", "list[str]", None,
           "the answer must be one of these labels (local: grammar-constrained; HTTP: normalised, "
           "else a row error with the raw text)", _choices, default_text="none"),
    Option("schema", "dict", None,
           "answers as typed columns {target}_{field}: a pydantic model class, a JSON Schema dict, or "
           "{'field': type}; see Structured outputs", _schema, default_text="none"),
    Option("schema_columns", "str", "fields", "'fields': one typed column {target}_{field} per schema field; "
           "'struct': one struct column {target} holding them all", one_of("fields", "struct")),
    Option("max_repairs", "int", 2, f"re-asks of a row whose answer does not fit the schema, 0 to {MAX_REPAIRS}, "
           "showing the model its answer and the validation error, within max_retry_time_s; then a row error",
           _max_repairs),
    Option("concurrency", "int", 64, f"requests in flight at most, 1 to {MAX_CONCURRENCY:,}", _concurrency),
    Option("rpm", "float", None, "client-side requests per minute; without it dfllm reads x-ratelimit-* "
           "headers or learns from 429s; at least 1", _rpm, default_text="learned"),
    Option("tpm", "float", None, "client-side tokens per minute", positive_number, default_text="learned"),
    Option("timeout_s", "float", 120.0, "seconds per request", positive_number),
    Option("max_retries", "int", 6, "retries on connection errors, timeouts, 408, 409, 429, 5xx; never on "
           "other 4xx", non_negative_int),
    Option("max_retry_time_s", "float", 600.0, "total seconds one row may spend retrying and waiting, "
           "server-requested waits included", positive_number),
    Option("errors", "str", "raise", "'raise': one BatchError after all rows, with the partial frame as "
           "err.partial; 'null': null answer plus a {target}_error column", one_of("raise", "null")),
    Option("image_detail", "str", "auto", "{{image:column}} cells: OpenAI's detail, 'low' (85 tokens an image), "
           "'high' (tiles of 512 px) or 'auto'", one_of("low", "high", "auto")),
    Option("max_image_side", "int", None, "{{image:column}} cells: downscale (Pillow) so the longer side is at most "
           "this many pixels before sending, which cuts image tokens", positive_int, default_text="none"),
    Option("image_root", "path", None, "{{image:column}} cells that are local paths must be under this folder "
           "(symlinks followed); the command reads local image paths only when it is given", _folder,
           default_text="any path (the command: none)"),
    Option("dimensions", "int", None, "embed: the vectors' length, for models that can shorten them (OpenAI's "
           "text-embedding-3)", positive_int, default_text="the model's"),
    Option("embed_batch_size", "int", 256, "embed: texts per request, 1 to 2,048 (OpenAI's most)", _embed_batch_size),
    Option("mode", "str", "online", "'online': one request per unique prompt, now; 'batch': one provider batch "
           "job (OpenAI's Batch API, half the price, answers within 24 h), resumed by running the same call "
           "again; see Batch mode", one_of("online", "batch")),
    Option("batch_timeout_s", "float", 86400.0, "mode='batch': seconds to wait for the jobs; rows still "
           "unanswered then are row errors, and the same call run again collects them", positive_number),
    Option("batch_poll_s", "float", 5.0, "mode='batch': seconds before the first poll of a job; each wait is "
           "1.5 times the one before, up to a minute", positive_number),
    Option("cache", "bool | path | url", True, "persistent SQLite cache ($DFLLM_CACHE_DIR or the user cache dir); "
           "False, a file path, or a URL / dfllm.FsspecCache (one object per answer on any fsspec path)",
           cache_problem),
    Option("progress", "bool", None, "a tqdm bar; on when interactive", _progress, default_text="auto"),
    Option("usage_columns", "bool", False, "add {target}_prompt_tokens, {target}_cached_tokens (of the prompt, "
           "served from the provider's prompt cache) and {target}_completion_tokens", flag),
    Option("price_prompt", "float", None, "USD per million prompt tokens; with price_completion, RunStats.cost_usd, "
           "the summary line and estimate show the cost (online and batch)", _price, default_text="none"),
    Option("price_cached_prompt", "float", None, "USD per million prompt tokens served from the provider's "
           "prompt cache", _price, default_text="price_prompt"),
    Option("price_completion", "float", None, "USD per million completion tokens", _price, default_text="none"),
)

OPTION_BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
OPTION_NAMES = frozenset(OPTION_BY_NAME)
SENT_OPTIONS = frozenset(o.name for o in OPTIONS if o.sent)
# The local engine's parameter names, derived from the table.
LOCAL_NAMES: dict[str, str] = {o.name: o.local for o in OPTIONS if o.local is not None}


class PredictOptions(TypedDict, total=False):
    """The options ``predict`` takes as keywords: IDEs complete them and mypy checks them.

    Kept in step with ``OPTIONS`` by a test.
    """

    max_tokens: int
    max_completion_tokens: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    seed: int
    stop: str | list[str]
    presence_penalty: float
    frequency_penalty: float
    repetition_penalty: float
    logit_bias: dict[str, float]
    user: str
    prompt_cache_key: str
    reasoning_effort: str
    extra_body: dict[str, Any]
    system: str | None
    choices: list[str] | tuple[str, ...] | None
    schema: Any
    schema_columns: Literal["fields", "struct"]
    max_repairs: int
    concurrency: int
    rpm: float | None
    tpm: float | None
    timeout_s: float
    max_retries: int
    max_retry_time_s: float
    errors: Literal["raise", "null"]
    image_detail: Literal["low", "high", "auto"]
    max_image_side: int | None
    image_root: str | Path | None
    dimensions: int | None
    embed_batch_size: int
    mode: Literal["online", "batch"]
    batch_timeout_s: float
    batch_poll_s: float
    cache: bool | str | Path | CacheLocation
    progress: bool | None
    usage_columns: bool
    price_prompt: float
    price_cached_prompt: float
    price_completion: float


DEFAULT_CONCURRENCY: int = OPTION_BY_NAME["concurrency"].default


@dataclass(frozen=True)
class Options:
    """Validated options of one call. ``params`` are the body fields sent to the provider."""

    system: str | None = None
    choices: tuple[str, ...] | None = None
    schema: OutputSchema | None = None
    schema_columns: Literal["fields", "struct"] = "fields"
    max_repairs: int = OPTION_BY_NAME["max_repairs"].default
    concurrency: int = OPTION_BY_NAME["concurrency"].default
    rpm: float | None = None
    tpm: float | None = None
    timeout_s: float = OPTION_BY_NAME["timeout_s"].default
    max_retries: int = OPTION_BY_NAME["max_retries"].default
    max_retry_time_s: float = OPTION_BY_NAME["max_retry_time_s"].default
    errors: Literal["raise", "null"] = "raise"
    image_detail: Literal["low", "high", "auto"] = "auto"
    max_image_side: int | None = None
    image_root: str | Path | None = None
    dimensions: int | None = None
    embed_batch_size: int = OPTION_BY_NAME["embed_batch_size"].default
    mode: Literal["online", "batch"] = "online"
    batch_timeout_s: float = OPTION_BY_NAME["batch_timeout_s"].default
    batch_poll_s: float = OPTION_BY_NAME["batch_poll_s"].default
    cache: bool | str | Path | CacheLocation = True
    progress: bool | None = None
    usage_columns: bool = False
    price_prompt: float | None = None
    price_cached_prompt: float | None = None
    price_completion: float | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def cache_path(self) -> Path | None:
        """The SQLite file the ``cache`` option names (None: no cache, or another kind of store)."""
        return sqlite_path(self.cache)

    @property
    def prices(self) -> Prices | None:
        """The prices the call gave (``build_options`` makes sure both are given, or neither)."""
        if self.price_prompt is None or self.price_completion is None:
            return None
        return Prices(self.price_prompt, self.price_completion, self.price_cached_prompt)


def completion_budget(params: Mapping[str, Any]) -> int | None:
    """The most tokens one answer may take, under either of the names providers use."""
    budget = params.get("max_tokens") or params.get("max_completion_tokens")
    return int(budget) if budget else None


def unknown_option_problems(names: list[str], extra_valid: frozenset[str] = frozenset()) -> list[str]:
    valid = sorted(OPTION_NAMES | extra_valid)
    return [
        f"Unknown option {name!r}.{did_you_mean(str(name), valid)} Valid options: {', '.join(valid)}."
        for name in names
        if name not in OPTION_NAMES and name not in extra_valid
    ]


def option_problems(values: Mapping[str, Any]) -> list[str]:
    """Every problem with known options' values (None means "not set" and is always fine)."""
    problems = []
    for name, value in values.items():
        option = OPTION_BY_NAME.get(name)
        if option is None or value is None:
            continue
        problem = option.check(name, value) or _unsendable_text(name, value)
        if problem:
            # Checks quote values by shown_value; this also holds for the ones that quote a part of it.
            problems.append(without_keys(problem, value))
    return problems


def _unsendable_text(name: str, value: Any) -> str | None:
    """A lone surrogate anywhere in an option's strings (``stop``, ``user``, ``extra_body``...): no request can
    carry it, and the cache key could not be written either."""
    if isinstance(value, str):
        return surrogate_problem(name, value)
    if isinstance(value, Mapping):
        items: list[Any] = [*value.keys(), *value.values()]
        return next((p for v in items if (p := _unsendable_text(name, v))), None)
    if isinstance(value, (list, tuple)):
        return next((p for v in value if (p := _unsendable_text(name, v))), None)
    return None


def build_options(layers: list[Mapping[str, Any]]) -> tuple[Options, list[str]]:
    """Merge option layers and validate them. Returns the options and every problem found."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    problems = unknown_option_problems([str(k) for k in merged])
    problems += option_problems(merged)
    if merged.get("schema_columns") == "struct" and merged.get("schema") is None:
        problems.append("schema_columns='struct' packs a schema's fields into one column: pass schema= too, "
                        "or leave schema_columns out.")
    if merged.get("schema") is not None and merged.get("choices") is not None:
        problems.append("choices and schema cannot be combined: use choices for one label, or a schema field "
                        "typed Literal['a', 'b'] for labels among other fields.")
    problems += _price_problems(merged)
    if problems:
        return Options(), problems
    params = {k: v for k, v in merged.items() if k in SENT_OPTIONS and k != "extra_body" and v is not None}
    if isinstance(merged.get("extra_body"), Mapping):
        params.update(merged["extra_body"])
    policy = {k: v for k, v in merged.items() if k in OPTION_NAMES and k not in SENT_OPTIONS and v is not None}
    if "choices" in policy:
        policy["choices"] = tuple(policy["choices"])
    if "schema" in policy:
        policy["schema"] = normalise_schema(policy["schema"])
    return Options(**policy, params=params), []


def _price_problems(merged: Mapping[str, Any]) -> list[str]:
    """A cost needs the prompt and the completion price: one alone would show a cost too low."""
    given = [name for name in ("price_prompt", "price_cached_prompt", "price_completion")
             if merged.get(name) is not None]
    if not given or {"price_prompt", "price_completion"} <= set(given):
        return []
    missing = [name for name in ("price_prompt", "price_completion") if name not in given]
    return [f"{' and '.join(given)} given without {' and '.join(missing)}: "
            "a cost needs the prompt and the completion price (USD per million tokens). Give both, e.g. "
            "price_prompt=0.15, price_completion=0.6, or neither."]


def options_table_markdown() -> str:
    """The README's options table, generated from ``OPTIONS``."""
    lines = ["| option | default | meaning |", "|---|---|---|"]
    lines += [f"| `{o.name}` | {o.shown_default} | {o.doc} |" for o in OPTIONS]
    return "\n".join(lines)
