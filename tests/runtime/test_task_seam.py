"""The task seam from outside the package: a toy task kind and a toy engine that takes only it
run through the executor and the SQLite cache, with the executor's policies, never its chat path."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest

import dfllm
from dfllm.config.options import Options
from dfllm.engines.base import Completion, RateLimitState
from dfllm.engines.tasks import Message
from dfllm.runtime.executor import Executor, Outcome, Work
from dfllm.runtime.progress import RunStats
from dfllm.testing import FakeClock, MockEngine


@dataclass(frozen=True)
class Reverse:
    """The toy task: reverse a string."""

    text: str


@dataclass
class Reverser:
    """A toy engine that takes only ``"toy"`` tasks; it has no ``complete``. ``fail`` names the
    inputs answered first with the given error, once each."""

    fail: dict[str, dfllm.EngineError] = field(default_factory=dict)
    received: list[str] = field(default_factory=list)
    identity: str = "reverser"
    task_kinds: frozenset[str] = frozenset({"toy"})

    async def reverse(self, task: Reverse) -> Completion:
        self.received.append(task.text)
        if task.text in self.fail:
            raise self.fail.pop(task.text)
        return Completion(task.text[::-1], prompt_tokens=len(task.text))

    async def aclose(self) -> None:
        pass


class ReverseKind:
    kind: ClassVar[str] = "toy"

    def build(self, work: Work) -> Reverse:
        return Reverse(work.prompt)

    def size(self, task: Reverse) -> int:
        return 1000 + len(task.text)

    async def send(self, engine: Reverser, task: Reverse) -> Completion:
        return await engine.reverse(task)

    def reask(self, task: Reverse, turns: tuple[Message, ...]) -> Reverse:
        return task


@dataclass
class TokenLedger:
    """A cluster gate that lets everything through and keeps the tokens each send held."""

    held: list[int] = field(default_factory=list)

    async def acquire(self, tokens: int) -> None:
        self.held.append(tokens)

    def on_rate_limited(self, retry_after: float | None) -> None:
        pass

    def on_headers(self, state: RateLimitState) -> None:
        pass


WORDS = ["abc", "seam", "toy", "kind"]
WORK = [Work((i, 7 * i + 1), word) for i, word in enumerate(WORDS)]


def run(engine: Reverser, cache: Path, gate: TokenLedger | None = None) -> tuple[list[Outcome], RunStats]:
    clock = FakeClock()
    stats = RunStats()
    executor = Executor(engine, Options(cache=str(cache), max_retries=2), stats, ReverseKind(),
                        clock=clock, sleep=clock.sleep, gate=gate)
    return asyncio.run(executor.run(WORK)), stats


def texts(outcomes: list[Outcome]) -> list[str]:
    return [o.text if isinstance(o, Completion) else repr(o) for o in outcomes]


def test_a_toy_task_kind_is_sent_cached_and_not_sent_again(tmp_path: Path) -> None:
    cache = tmp_path / "cache.sqlite"
    engine, ledger = Reverser(), TokenLedger()
    outcomes, stats = run(engine, cache, ledger)
    assert texts(outcomes) == ["cba", "maes", "yot", "dnik"]
    assert sorted(engine.received) == sorted(WORDS)
    assert sorted(ledger.held) == sorted(1000 + len(w) for w in WORDS)  # the kind's size, not a chat estimate
    assert stats.requests == 4 and stats.prompt_tokens == sum(map(len, WORDS))

    again = Reverser()
    outcomes, stats = run(again, cache)
    assert texts(outcomes) == ["cba", "maes", "yot", "dnik"]
    assert again.received == [] and stats.cache_hits == 4 and stats.requests == 0


def test_a_retryable_failure_of_a_toy_task_is_retried_and_a_bad_one_is_not(tmp_path: Path) -> None:
    engine = Reverser(fail={"seam": dfllm.ServerError("busy", status=503),
                            "toy": dfllm.BadRequestError("no", status=400)})
    outcomes, stats = run(engine, tmp_path / "cache.sqlite")
    assert engine.received.count("seam") == 2 and engine.received.count("toy") == 1
    assert isinstance(outcomes[1], Completion) and outcomes[1].text == "maes"
    assert isinstance(outcomes[2], dfllm.BadRequestError)
    assert stats.retries == 1

    again = Reverser()
    outcomes, _ = run(again, tmp_path / "cache.sqlite")
    assert again.received == ["toy"]  # only the failed row is asked again: answers were cached
    assert texts(outcomes) == ["cba", "maes", "yot", "dnik"]


def test_an_engine_is_not_given_a_task_kind_it_does_not_declare(tmp_path: Path) -> None:
    chat_only = MockEngine()
    with pytest.raises(dfllm.ConfigurationError, match=r"takes chat tasks, not 'toy'"):
        Executor(chat_only, Options(cache=False), RunStats(), ReverseKind())  # type: ignore[misc]
    assert chat_only.requests == []
