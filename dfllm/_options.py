"""Every knob of a prediction, validated in one place, all problems reported at once.

Options come in three layers, later ones winning: the engine's (``create_engine``), the
model's (``create_model``), the call's (``predict(..., **options)``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dfllm._exceptions import did_you_mean

# Sent to the provider as top-level body fields, unchanged.
SAMPLING_PARAMS = frozenset({
    "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p", "seed",
    "stop", "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias",
    "response_format", "user", "reasoning_effort", "extra_body",
})

# Policy: read by the executor, never sent.
POLICY_OPTIONS = frozenset({
    "system", "concurrency", "timeout_s", "max_retries", "max_retry_time_s", "errors", "progress",
    "rpm", "tpm", "cache", "choices", "usage_columns",
})

OPTION_NAMES = SAMPLING_PARAMS | POLICY_OPTIONS

DEFAULT_CONCURRENCY = 64


@dataclass(frozen=True)
class Options:
    system: str | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    timeout_s: float = 120.0
    max_retries: int = 6
    max_retry_time_s: float = 600.0
    errors: Literal["raise", "null"] = "raise"
    progress: bool | None = None  # None: on when interactive
    rpm: float | None = None
    tpm: float | None = None
    cache: bool | str | Path = True
    choices: tuple[str, ...] | None = None
    usage_columns: bool = False
    params: dict[str, Any] = field(default_factory=dict)

    def cache_path(self) -> Path | None:
        if self.cache is False:
            return None
        if self.cache is True:
            root = os.environ.get("DFLLM_CACHE_DIR")
            if not root:
                import platformdirs

                root = platformdirs.user_cache_dir("dfllm")
            return Path(root) / "responses.sqlite3"
        return Path(self.cache)


def _positive(name: str, value: Any, problems: list[str], *, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        want = "a positive integer" if integer else "a positive number"
        problems.append(f"{name} must be {want}, got {value!r}.")


def unknown_option_problems(names: list[str], extra_valid: frozenset[str] = frozenset()) -> list[str]:
    valid = sorted(OPTION_NAMES | extra_valid)
    return [
        f"Unknown option {name!r}.{did_you_mean(name, valid)} Valid options: {', '.join(valid)}."
        for name in names
        if name not in OPTION_NAMES and name not in extra_valid
    ]


def build_options(layers: list[Mapping[str, Any]]) -> tuple[Options, list[str]]:
    """Merge option layers and validate them. Returns the options and every problem found."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({k: v for k, v in layer.items()})
    problems = unknown_option_problems(list(merged))
    policy = {k: v for k, v in merged.items() if k in POLICY_OPTIONS}
    params = {k: v for k, v in merged.items() if k in SAMPLING_PARAMS and v is not None}
    _check_policy(policy, problems)
    _check_params(params, problems)
    if "choices" in policy and policy["choices"] is not None:
        policy["choices"] = tuple(policy["choices"])
    extra = params.pop("extra_body", None) or {}
    if isinstance(extra, Mapping):
        params.update(extra)
    if problems:
        return Options(), problems
    return Options(**policy, params=params), []


def _check_policy(policy: dict[str, Any], problems: list[str]) -> None:
    for name in ("concurrency", "max_retries"):
        if name in policy:
            value = policy[name]
            if name == "max_retries" and isinstance(value, int) and not isinstance(value, bool) and value == 0:
                continue
            _positive(name, value, problems, integer=True)
    for name in ("timeout_s", "max_retry_time_s"):
        if name in policy:
            _positive(name, policy[name], problems)
    for name in ("rpm", "tpm"):
        if policy.get(name) is not None:
            _positive(name, policy[name], problems)
    if policy.get("errors", "raise") not in ("raise", "null"):
        problems.append(f"errors must be 'raise' or 'null', got {policy['errors']!r}.")
    if policy.get("system") is not None and not isinstance(policy["system"], str):
        problems.append(f"system must be a string (the system prompt), got {policy['system']!r}.")
    if policy.get("progress") is not None and not isinstance(policy["progress"], bool):
        problems.append(f"progress must be True, False or None, got {policy['progress']!r}.")
    cache = policy.get("cache", True)
    if not isinstance(cache, (bool, str, Path)):
        problems.append(f"cache must be True, False or a file path, got {cache!r}.")
    choices = policy.get("choices")
    if choices is not None:
        if isinstance(choices, str) or not all(isinstance(c, str) and c.strip() for c in choices):
            problems.append(
                f"choices must be a list of non-empty strings, e.g. ['positive', 'negative'], got {choices!r}."
            )
        elif len(set(choices)) < 2:
            problems.append(f"choices needs at least two different labels, got {list(choices)!r}.")


def _check_params(params: dict[str, Any], problems: list[str]) -> None:
    for name in ("max_tokens", "max_completion_tokens", "top_k"):
        if name in params:
            _positive(name, params[name], problems, integer=True)
    ranges = {"temperature": (0, 2), "top_p": (0, 1), "min_p": (0, 1),
              "presence_penalty": (-2, 2), "frequency_penalty": (-2, 2)}
    for name, (low, high) in ranges.items():
        if name in params:
            value = params[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                problems.append(f"{name} must be a number from {low} to {high}, got {value!r}.")
    if "seed" in params and (isinstance(params["seed"], bool) or not isinstance(params["seed"], int)):
        problems.append(f"seed must be an integer, got {params['seed']!r}.")
    if "extra_body" in params and not isinstance(params["extra_body"], Mapping):
        problems.append(f"extra_body must be a dict of extra request fields, got {params['extra_body']!r}.")
