"""Fine-tuning (Anyscale Endpoints and OpenAI): validate chat rows, upload JSONL, run the job.

Files and jobs go through the ``openai`` SDK, the maintained client for those endpoints; its
exceptions become dfllm errors here, at this module's boundary.
"""

from __future__ import annotations

import json
import random
import time
import warnings
from collections.abc import Callable
from typing import Any

from dfllm import frames
from dfllm._exceptions import AuthenticationError, FineTuneError, ParameterError
from dfllm.config.engines import EngineConfig, resolve_engine
from dfllm.prompt.template import is_null

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
             progress: bool | None = None, sleep: Callable[[float], None] = time.sleep) -> str:
    """Fine-tune ``base_model`` on chat rows and return the fine-tuned model id (usable in predict).

    Chats of fewer than ``min_examples`` are refused; ``validation_fraction`` of the chats
    (shuffled with ``seed``) become the validation file. Polls every ``poll_interval_s``,
    growing to ``max_poll_interval_s``.
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
                    poll_interval_s, max_poll_interval_s, timeout_s, progress, sleep)


def _jsonl(chats: list[list[dict[str, str]]]) -> bytes:
    return "".join(json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in chats).encode()


def _run_job(config: EngineConfig, base_model: str, training: list[list[dict[str, str]]],
             validation: list[list[dict[str, str]]], hyperparameters: dict[str, int], suffix: str | None,
             poll_s: float, max_poll_s: float, timeout_s: float, progress: bool | None,
             sleep: Callable[[float], None]) -> str:
    import openai

    from dfllm.runtime.progress import interactive

    auth = config.headers.get("Authorization")
    key = auth.reveal().removeprefix("Bearer ") if auth is not None and not isinstance(auth, str) else "none"
    client = openai.OpenAI(api_key=key, base_url=config.base_url, max_retries=2)
    show = progress or (progress is None and interactive())
    try:
        train_file = client.files.create(file=("train.jsonl", _jsonl(training)), purpose="fine-tune")
        val_file = (client.files.create(file=("validation.jsonl", _jsonl(validation)), purpose="fine-tune")
                    if validation else None)
        job = client.fine_tuning.jobs.create(
            model=base_model, training_file=train_file.id,
            validation_file=val_file.id if val_file else None,
            suffix=suffix, extra_body={"hyperparameters": hyperparameters} if hyperparameters else None,
        )
        deadline = time.monotonic() + timeout_s
        interval = poll_s
        while job.status not in _TERMINAL:
            if time.monotonic() > deadline:
                raise FineTuneError(f"Fine-tuning job {job.id} still {job.status} after {timeout_s:g}s; "
                                    "it keeps running at the provider: poll it later.")
            if show:
                print(f"dfllm: fine-tuning job {job.id}: {job.status}", flush=True)
            sleep(interval)
            interval = min(max_poll_s, interval * 1.5)
            job = client.fine_tuning.jobs.retrieve(job.id)
    except openai.AuthenticationError as exc:
        raise AuthenticationError(f"{config.base_url} refused the API key for fine-tuning.",
                                  status=exc.status_code) from exc
    except openai.APIStatusError as exc:
        raise FineTuneError(f"{config.base_url} refused the fine-tuning request (HTTP {exc.status_code}): "
                            f"{exc.message}") from exc
    except openai.APIConnectionError as exc:
        raise FineTuneError(f"Could not reach {config.base_url} for fine-tuning: {exc}") from exc
    finally:
        client.close()
    if job.status != "succeeded" or not job.fine_tuned_model:
        reason = job.error.message if job.error is not None and job.error.message else job.status
        raise FineTuneError(f"Fine-tuning job {job.id} ended {job.status}: {reason}")
    return job.fine_tuned_model
