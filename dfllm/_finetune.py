"""Fine-tuning (Anyscale Endpoints and OpenAI): validate chat rows, upload JSONL, run the job.

Files and jobs go through the HTTP engine's boundary (``OpenAICompatibleEngine.request_json``),
so the provider's auth header, the error mapping and the scrubbing of secrets are those of
predictions. Transient failures (connection errors, timeouts, 408/409, 429, 5xx) are retried
with ``runtime.retry``'s backoff and the server's Retry-After, within the engine's
``max_retries`` and ``max_retry_time_s``. The request that creates the job is retried only when
the server said it did not take it (a 429, or a 503 naming a wait): after a reset, a timeout or
another 5xx the job may exist, and a second one would be paid for twice.
"""

from __future__ import annotations

import json
import random
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dfllm import frames
from dfllm._exceptions import (
    AuthenticationError,
    EngineError,
    FineTuneError,
    ParameterError,
    RateLimitError,
    ServerError,
)
from dfllm.config.engines import EngineConfig, resolve_engine
from dfllm.config.options import OPTION_BY_NAME
from dfllm.engines.http import OpenAICompatibleEngine
from dfllm.prompt.template import is_null
from dfllm.runtime.progress import interactive
from dfllm.runtime.retry import backoff_s, retry_after_cause, server_wait_s, wait_refused
from dfllm.runtime.sync import run_sync

ROLES = ("system", "user", "assistant")
_TERMINAL = ("succeeded", "failed", "cancelled")


def chats_from_frame(df: Any, *, role_column: str = "role", content_column: str = "content",
                     chat_id_column: str | None = None) -> list[list[dict[str, str]]]:
    """Group message rows into chats: by ``chat_id_column``, else a new chat at each system row.

    Raises one ``FineTuneError`` listing every problem with its chat and message number.
    """
    names = frames.column_names(df)
    if chat_id_column is None and "chat_id" in names:
        chat_id_column = "chat_id"
    missing = [c for c in (role_column, content_column, chat_id_column) if c and c not in names]
    if missing:
        raise FineTuneError(f"Fine-tuning data lacks columns {missing}; it has {names}. "
                            "Give one message per row with 'role' and 'content' columns.")
    roles = frames.column_values(df, role_column)
    contents = frames.column_values(df, content_column)
    ids = frames.column_values(df, chat_id_column) if chat_id_column else None
    chats: list[list[dict[str, str]]] = []
    by_id: dict[Any, int] = {}  # chat id -> position in chats
    problems: list[str] = []
    for row, (role, content) in enumerate(zip(roles, contents, strict=True)):
        if ids is not None:
            number = by_id.setdefault(ids[row], len(chats))
            if number == len(chats):
                chats.append([])
        else:
            if not chats or role == "system":
                chats.append([])
            number = len(chats) - 1
        chat = chats[number]
        where = f"chat {number + 1}, message {len(chat) + 1} (row {row})"
        if role not in ROLES:
            problems.append(f"{where}: role {role!r} is not one of {list(ROLES)}.")
        if is_null(content):
            problems.append(f"{where}: content is missing (null); every message needs text.")
        elif not isinstance(content, str):
            problems.append(f"{where}: content must be text, got {type(content).__name__} {content!r}.")
        chat.append({"role": str(role), "content": "" if is_null(content) else str(content)})
    for number, chat in enumerate(chats, start=1):
        problems += _chat_problems(number, chat)
    if problems:
        listed = "\n  - ".join(problems)
        raise FineTuneError(f"{len(problems)} problems in the fine-tuning data:\n  - {listed}")
    return chats


def _chat_problems(number: int, chat: list[dict[str, str]]) -> list[str]:
    roles = [m["role"] for m in chat]
    problems = []
    body = roles[1:] if roles and roles[0] == "system" else roles
    if "system" in body:
        problems.append(f"chat {number}: a system message may only come first.")
    if "user" not in body or "assistant" not in body:
        problems.append(f"chat {number}: needs at least one user and one assistant message, has {roles}.")
    for i, role in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if role in ("user", "assistant") and role != expected:
            offset = len(roles) - len(body)
            problems.append(f"chat {number}, message {i + offset + 1}: expected {expected} (turns alternate "
                            f"user/assistant, starting with user), got {role}.")
            break
    if body and body[-1] != "assistant":
        problems.append(f"chat {number}: must end with an assistant message, ends with {body[-1]}.")
    return problems


def finetune(engine: Any, base_model: str, df: Any, *, role_column: str = "role",
             content_column: str = "content", chat_id_column: str | None = None,
             validation_fraction: float = 0.1, seed: int = 0, min_examples: int = 10,
             n_epochs: int | None = None, context_length: int | None = None, suffix: str | None = None,
             poll_interval_s: float = 2.0, max_poll_interval_s: float = 30.0, timeout_s: float = 24 * 3600,
             progress: bool | None = None, sleep: Callable[[float], None] = time.sleep,
             clock: Callable[[], float] = time.monotonic) -> str:
    """Fine-tune ``base_model`` on chat rows and return the fine-tuned model id (usable in predict).

    Chats of fewer than ``min_examples`` are refused; ``validation_fraction`` of the chats
    (shuffled with ``seed``) become the validation file. Polls every ``poll_interval_s``,
    growing to ``max_poll_interval_s``, until ``timeout_s`` has passed on ``clock``.
    """
    config = resolve_engine(engine)
    if not isinstance(config, EngineConfig) or config.provider.finetunable_models is None:
        name = getattr(config, "provider", None)
        raise ParameterError(
            f"Fine-tuning needs an 'anyscale_endpoints' or 'openai' engine, got {getattr(name, 'name', config)!r}."
        )
    if not 0 <= validation_fraction < 1:
        raise ParameterError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}.")
    chats = chats_from_frame(df, role_column=role_column, content_column=content_column,
                             chat_id_column=chat_id_column)
    if len(chats) < min_examples:
        raise FineTuneError(f"Fine-tuning needs at least {min_examples} chats, got {len(chats)}. Add examples.")
    shuffled = chats[:]
    random.Random(seed).shuffle(shuffled)
    n_validation = int(len(shuffled) * validation_fraction)
    if len(shuffled) - n_validation < min_examples:
        n_validation = len(shuffled) - min_examples
    validation, training = shuffled[:n_validation], shuffled[n_validation:]
    if base_model not in config.provider.finetunable_models:
        warnings.warn(
            f"{base_model!r} is not in {config.provider.name}'s list of fine-tunable models "
            f"{list(config.provider.finetunable_models)}; the provider will probably refuse the job.",
            UserWarning, stacklevel=2,
        )
    hyperparameters = {k: v for k, v in {"n_epochs": n_epochs, "context_length": context_length}.items()
                       if v is not None}
    return _run_job(config, base_model, training, validation, hyperparameters, suffix,
                    poll_interval_s, max_poll_interval_s, timeout_s, progress, sleep, clock)


def _jsonl(chats: list[list[dict[str, str]]]) -> bytes:
    return "".join(json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in chats).encode()


def _run_job(config: EngineConfig, base_model: str, training: list[list[dict[str, str]]],
             validation: list[list[dict[str, str]]], hyperparameters: dict[str, int], suffix: str | None,
             poll_s: float, max_poll_s: float, timeout_s: float, progress: bool | None,
             sleep: Callable[[float], None], clock: Callable[[], float]) -> str:
    client = _Client.for_engine(config, sleep, clock)
    show = progress or (progress is None and interactive())
    train_id = client.upload("train.jsonl", _jsonl(training))
    val_id = client.upload("validation.jsonl", _jsonl(validation)) if validation else None
    body: dict[str, Any] = {"model": base_model, "training_file": train_id}
    if val_id is not None:
        body["validation_file"] = val_id
    if suffix is not None:
        body["suffix"] = suffix
    if hyperparameters:
        body["hyperparameters"] = hyperparameters
    job = _job(client.call("Creating the fine-tuning job", "POST", "fine_tuning/jobs", json_body=body,
                           creates=True))
    deadline = client.clock() + timeout_s
    interval = poll_s
    while job["status"] not in _TERMINAL:
        if client.clock() > deadline:
            raise FineTuneError(f"Fine-tuning job {job['id']} still {job['status']} after {timeout_s:g}s; "
                                "it keeps running at the provider: poll it later.")
        if show:
            print(f"dfllm: fine-tuning job {job['id']}: {job['status']}", flush=True)
        sleep(interval)
        interval = min(max_poll_s, interval * 1.5)
        job = _job(client.call(f"Polling fine-tuning job {job['id']}", "GET", f"fine_tuning/jobs/{job['id']}",
                               unfinished=f" The job keeps running at the provider: poll job {job['id']} later."))
    model = job.get("fine_tuned_model")
    if job["status"] != "succeeded" or not isinstance(model, str) or not model:
        error = job.get("error")
        reason = error.get("message") if isinstance(error, dict) else None
        raise FineTuneError(f"Fine-tuning job {job['id']} ended {job['status']}: {reason or job['status']}")
    return model


def _job(payload: Any) -> dict[str, Any]:
    """A job object as the provider sent it, once it has the fields the loop reads."""
    if not (isinstance(payload, dict) and isinstance(payload.get("id"), str)
            and isinstance(payload.get("status"), str)):
        raise FineTuneError(f"The provider's fine-tuning job has no id and status: {str(payload)[:300]!r}")
    return payload


@dataclass
class _Client:
    """Files and jobs requests on the HTTP engine, each retried by ``runtime.retry``'s policy."""

    engine: OpenAICompatibleEngine
    max_retries: int
    max_retry_time_s: float
    sleep: Callable[[float], None]
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def for_engine(cls, config: EngineConfig, sleep: Callable[[float], None],
                   clock: Callable[[], float] = time.monotonic) -> _Client:
        # The engine chat requests use: the provider's headers (auth included) and auth hint.
        engine = OpenAICompatibleEngine(config.base_url, config.headers, auth_hint=config.provider.auth_hint)
        options = {name: config.options.get(name, OPTION_BY_NAME[name].default)
                   for name in ("max_retries", "max_retry_time_s")}
        return cls(engine, int(options["max_retries"]), float(options["max_retry_time_s"]), sleep, clock)

    def upload(self, filename: str, content: bytes) -> str:
        # A repeated upload costs nothing (an unused file), so every transient failure is retried.
        payload = self.call(f"Uploading {filename}", "POST", "files",
                            form={"purpose": "fine-tune", "file": (filename, content)})
        file_id = payload.get("id") if isinstance(payload, dict) else None
        if not isinstance(file_id, str) or not file_id:
            raise FineTuneError(f"The provider answered the upload of {filename} without a file id: "
                                f"{str(payload)[:300]!r}")
        return file_id

    def call(self, what: str, method: str, path: str, *, json_body: Any = None,
             form: Mapping[str, str | tuple[str, bytes]] | None = None, creates: bool = False,
             unfinished: str = "") -> Any:
        """The JSON answer to one request, retried while the policy allows; else a dfllm error."""
        started = self.clock()
        attempt = 0
        while True:
            try:
                return run_sync(self._once(method, path, json_body, form))
            except AuthenticationError as error:
                raise AuthenticationError(f"{what}: {error}", status=error.status) from None
            except EngineError as error:
                failure = error
            delay, refused = self._delay(failure, attempt, started, creates)
            if delay is None:
                raise _fine_tune_error(what, refused or failure, creates, unfinished) from None
            attempt += 1
            self.sleep(delay)

    def _delay(self, error: EngineError, attempt: int, started: float,
               creates: bool) -> tuple[float | None, EngineError | None]:
        """The wait before the next attempt (None: stop), and the error of a wait the budget refuses."""
        wait = server_wait_s(error)
        taken = not isinstance(error, RateLimitError) and not (
            isinstance(error, ServerError) and error.status == 503 and wait is not None)
        if not error.retryable or (creates and taken) or attempt >= self.max_retries:
            return None, None
        left = self.max_retry_time_s - (self.clock() - started)
        if wait is not None and wait > left:
            return None, wait_refused(retry_after_cause(error, wait), wait, left, self.max_retry_time_s, error)
        delay = wait if wait is not None else backoff_s(attempt, self.rng)
        return (delay, None) if delay <= left else (None, None)

    async def _once(self, method: str, path: str, json_body: Any,
                    form: Mapping[str, str | tuple[str, bytes]] | None) -> Any:
        # One loop per request (run_sync), so the session is opened and closed inside it.
        try:
            return await self.engine.request_json(method, path, json_body=json_body, form=form)
        finally:
            await self.engine.aclose()


def _fine_tune_error(what: str, error: EngineError, creates: bool, unfinished: str) -> FineTuneError:
    # A create that failed without the server saying it refused it may still have made the job.
    maybe_made = (" The job may have been created anyway: check the provider's fine-tuning jobs before "
                  "running again." if creates and not isinstance(error, RateLimitError) and error.retryable
                  else "")
    return FineTuneError(f"{what} failed: {error}{maybe_made}{unfinished}")
