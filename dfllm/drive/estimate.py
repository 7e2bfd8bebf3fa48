"""``dfllm.estimate``: what a prediction would send, cost and take, without sending anything.

It plans the call exactly as ``predict`` does (same validation, same unique prompts, same cache
keys), looks the keys up in the cache, and counts the tokens of the prompts that would go out:
with tiktoken where it is installed and its encoding loads, else four characters a token (and
says so). Time comes from the limits the call sets and a latency you assume; cost only from
the prices the call gives (``price_prompt``, ``price_completion``: USD per million tokens),
since any built-in price table would go stale. The cost is shown online and in batch mode side
by side (``runtime.cost``: a batch job costs half), before any prompt-cache discount, which the
provider decides.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from typing_extensions import Unpack

from dfllm._exceptions import ConfigurationError, ParameterError
from dfllm.config.options import Options, PredictOptions, completion_budget
from dfllm.frames import lazy_predict_for
from dfllm.plan import ALL_NULL, Plan, make_plan
from dfllm.prompt.images import tokens_of
from dfllm.prompt.template import Template
from dfllm.runtime.cache import Cache
from dfllm.runtime.cost import usd
from dfllm.runtime.stores import FsspecCache, Store

_ASSUMED_COMPLETION_TOKENS = 256  # the executor's own assumption when nothing bounds an answer
_TOKENS_PER_MESSAGE = 4  # chat formatting around each message (role, separators)


@dataclass(frozen=True)
class Estimate:
    """The numbers ``estimate`` found; ``str()`` gives a short report."""

    rows: int
    skipped_null_rows: int
    unique_prompts: int
    cache_hits: int
    requests: int  # unique prompts not in the cache: what would be sent, before any retry
    prompt_tokens: int
    completion_tokens: int
    tokenizer: str
    completion_basis: str
    latency_s: float
    wall_s: float
    bound_by: str
    cost_usd: float | None  # online, at the prices the call gave; None without prices
    batch_cost_usd: float | None  # the same requests as a provider batch job (mode='batch')
    hint: str | None = None  # how the template could use the provider's prompt cache better

    def __str__(self) -> str:
        lines = [
            f"rows                 {self.rows:,} ({self.skipped_null_rows:,} all-null, not sent)",
            f"unique prompts       {self.unique_prompts:,}",
            f"cache hits           {self.cache_hits:,}",
            f"requests to send     {self.requests:,}",
            f"prompt tokens        {self.prompt_tokens:,} ({self.tokenizer})",
            f"completion tokens    {self.completion_tokens:,} ({self.completion_basis})",
            f"wall time            {_duration(self.wall_s)} (bound by {self.bound_by}; "
            f"{self.latency_s:g} s latency assumed)",
        ]
        if self.cost_usd is not None and self.batch_cost_usd is not None:
            lines.append(f"cost                 online {usd(self.cost_usd)}, batch {usd(self.batch_cost_usd)} "
                         "(at the prices given; before prompt-cache discounts)")
        if self.hint is not None:
            lines.append(f"prompt cache         {self.hint}")
        return "\n".join(lines)


def estimate(df: Any, engine: Any, model: str | None = None, template: str | Template | None = None,
             target: str | None = None, *, latency_s: float = 1.0, completion_tokens: int | None = None,
             **options: Unpack[PredictOptions]) -> Estimate:
    """Rows, unique prompts, cache hits, requests, tokens, time and cost of a ``predict`` call.

    Same arguments as ``predict``, plus: ``latency_s``, the seconds one request is assumed to
    take; ``completion_tokens``, the answer length to assume per request (default: the longest
    choice, else ``max_tokens``, else 256). With ``price_prompt`` and ``price_completion``
    (options, USD per million tokens) the cost online and as a batch job. Sends no request.
    """
    if lazy_predict_for(df) is not None:
        raise ParameterError(f"estimate reads an eager frame; collect or compute a sample of the "
                             f"{type(df).__name__} first, e.g. lf.head(10_000).collect().")
    problems = assumption_problems(latency_s, completion_tokens)
    try:
        plan = make_plan(df, engine, model, template, target, options)
    except ConfigurationError as exc:
        raise ConfigurationError([*exc.problems, *problems]) from None
    if problems:
        raise ParameterError(problems)
    estimator = Estimator(plan, latency_s=latency_s, completion_tokens=completion_tokens)
    try:
        estimator.add(plan)
        return estimator.result()
    finally:
        estimator.close()


def assumption_problems(latency_s: Any, completion_tokens: Any, names: Callable[[str], str] = str) -> list[str]:
    """What is wrong with the estimate's own assumptions, all at once (``names``: how to call them)."""
    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    problems = []
    if not number(latency_s) or latency_s <= 0:
        problems.append(f"{names('latency_s')} must be a positive number of seconds per request, got {latency_s!r}.")
    if completion_tokens is not None and (isinstance(completion_tokens, bool) or not isinstance(
            completion_tokens, int) or completion_tokens <= 0):
        problems.append(f"{names('completion_tokens')} must be a positive integer, got {completion_tokens!r}.")
    return problems


class Estimator:
    """Accumulates an estimate over batches of one call (the command's ``--dry-run`` on a file)."""

    def __init__(self, plan: Plan, *, latency_s: float = 1.0, completion_tokens: int | None = None) -> None:
        problems = assumption_problems(latency_s, completion_tokens)
        if problems:
            raise ParameterError(problems)
        self._plan = plan
        self._latency_s = latency_s
        self._count, self._tokenizer = token_counter(plan.spec.model)
        self._per_answer, self._completion_basis = self._completion_estimate(completion_tokens)
        self._cache = existing_store(plan.options.cache) if plan.info.identity is not None else None
        self._seen: set[int] = set()  # keys' rowids: a prompt repeated in a later batch is sent once
        self.rows = self.skipped = self.unique = self.hits = self.requests = 0
        self.prompt_tokens = 0

    def _completion_estimate(self, given: int | None) -> tuple[int, str]:
        if given is not None:
            return given, "as given"
        bounded = self._plan.output.completion_estimate(self._count)
        if bounded is not None:
            return bounded
        budget = completion_budget(self._plan.spec.params)
        if budget:
            return int(budget), "max_tokens each, an upper bound"
        return _ASSUMED_COMPLETION_TOKENS, f"{_ASSUMED_COMPLETION_TOKENS} each assumed; pass completion_tokens"

    def add(self, plan: Plan) -> None:
        self.rows += len(plan.row_work)
        self.skipped += plan.row_work.count(ALL_NULL)
        fresh = [w for w in plan.work if w.key[0] not in self._seen]
        self._seen.update(w.key[0] for w in fresh)
        self.unique += len(fresh)
        found = self._cache.get_many(w.key for w in fresh) if self._cache is not None else {}
        self.hits += len(found)
        system = plan.spec.system
        system_tokens = self._count(system) + _TOKENS_PER_MESSAGE if system else 0
        for item in fresh:
            if item.key in found:
                continue
            self.requests += 1
            self.prompt_tokens += system_tokens + self._prompt_tokens(plan, item.prompt) + _TOKENS_PER_MESSAGE

    def _prompt_tokens(self, plan: Plan, prompt: str) -> int:
        """The prompt's text tokens, and its images' by OpenAI's tile arithmetic (an estimate)."""
        images = plan.spec.images
        if images is None or "\0" not in prompt:
            return self._count(prompt)
        return sum(self._count(piece) if isinstance(piece, str) else
                   tokens_of(piece, plan.spec.image_detail, plan.spec.max_image_side) for piece in images.split(prompt))

    def result(self) -> Estimate:
        options = self._plan.options
        completion = self.requests * self._per_answer
        per_request = (self.prompt_tokens / self.requests if self.requests else 0) + self._per_answer
        rates = {f"concurrency {options.concurrency}": options.concurrency / self._latency_s}
        if options.rpm:
            rates[f"rpm {options.rpm:g}"] = options.rpm / 60
        if options.tpm and per_request:
            rates[f"tpm {options.tpm:g}"] = options.tpm / 60 / per_request
        bound_by = min(rates, key=lambda name: rates[name])
        if not options.rpm:
            bound_by += "; no rpm given, so the provider's own limits may slow it further"
        prices = options.prices
        online = prices.cost(self.prompt_tokens, completion) if prices is not None else None
        batch = prices.cost(self.prompt_tokens, completion, batch=True) if prices is not None else None
        template = self._plan.template
        return Estimate(self.rows, self.skipped, self.unique, self.hits, self.requests, self.prompt_tokens,
                        completion, self._tokenizer, self._completion_basis, self._latency_s,
                        self._seconds(min(rates.values())), bound_by, online, batch,
                        template.prefix_cache_hint() if template is not None else None)

    def _seconds(self, rate: float) -> float:
        """At the binding rate, but never less than the round trips the concurrency allows."""
        round_trips = math.ceil(self.requests / self._plan.options.concurrency) * self._latency_s
        return max(self.requests / rate, round_trips)

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()


def existing_store(cache: object) -> Store | None:
    """The store the ``cache`` option names, if it already exists: a dry run never creates one.

    Any backend the option can name is read (SQLite file or fsspec URL), so hits are counted
    where the run would find them.
    """
    if isinstance(cache, str) and "://" in cache:
        cache = FsspecCache(cache)
    if isinstance(cache, FsspecCache):
        import fsspec  # type: ignore[import-untyped]

        fs, root = fsspec.core.url_to_fs(cache.url, **cache.storage_options)
        return cache.open() if fs.exists(root) else None
    if cache is False:
        return None
    path = Options(cache=cache).cache_path()  # type: ignore[arg-type]
    return Cache(path) if path is not None and path.exists() else None


def token_counter(model: str) -> tuple[Callable[[str], int], str]:
    """A function counting a text's tokens for ``model``, and what it is (tiktoken or chars/4)."""
    try:
        import tiktoken
    except ImportError:
        return _chars_over_4, "estimated at 4 characters a token; install tiktoken to count"
    try:
        try:
            encoding = tiktoken.encoding_for_model(model)
        except KeyError:  # not an OpenAI model name: the current OpenAI encoding is the closest guess
            encoding = tiktoken.get_encoding("o200k_base")
    except Exception as exc:  # tiktoken downloads its encodings on first use; offline it cannot
        return _chars_over_4, f"estimated at 4 characters a token; tiktoken could not load: {type(exc).__name__}"

    def count(text: str) -> int:
        return len(encoding.encode(text, disallowed_special=()))

    return count, f"tiktoken {encoding.name}"


def _chars_over_4(text: str) -> int:
    return len(text) // 4 + 1


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
