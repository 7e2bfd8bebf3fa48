"""The embedding kind: many rows' texts in one request, and the dispatch that groups them.

``EmbedSpec`` makes one ``EmbedTask`` of several rows (``group``), which the executor sends
through the same chain as a chat task (window, pace, ``tpm`` by its tokens, cluster gate,
retries): so rate limits, retries and the cache hold for embeddings as for predictions.

``GroupedDispatch`` is how grouped work reaches the engine: the pending rows in requests of at
most ``batch_size`` inputs and ``max_tokens`` tokens, several in flight; each input's vector
settles its row (cached as it arrives). A request the provider refuses as invalid (a 400) is
split in halves until the input that caused it stands alone: that row's error, the rest answered.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from dfllm._exceptions import BadRequestError, SchemaError
from dfllm.engines.base import Completion
from dfllm.engines.tasks import EmbedTask, Message
from dfllm.outputs.vectors import stored
from dfllm.runtime.dispatch import Outcome, Settle, Work, run_workers

# OpenAI's limit on one /embeddings request's tokens (its 2,048 inputs bound embed_batch_size).
MAX_REQUEST_TOKENS = 300_000


@dataclass(frozen=True)
class EmbedSpec:
    """The embedding kind: what every request of one call shares."""

    kind: ClassVar[str] = EmbedTask.kind
    # What a chat kind's readers (estimate, the stream's image clean-up) find on every spec: none here.
    system: ClassVar[None] = None
    params: ClassVar[dict[str, Any]] = {}
    images: ClassVar[None] = None
    image_detail: ClassVar[str] = "auto"
    max_image_side: ClassVar[None] = None

    model: str
    dimensions: int | None = None
    timeout_s: float = 120.0
    batch_size: int = 256
    max_tokens: int = MAX_REQUEST_TOKENS

    def build(self, work: Work) -> EmbedTask:
        return self.group([work])

    def group(self, works: Sequence[Work]) -> EmbedTask:
        return EmbedTask(self.model, tuple(w.prompt for w in works), self.dimensions, self.timeout_s)

    def size(self, task: EmbedTask) -> int:
        return sum(_tokens(text) for text in task.inputs)

    async def send(self, engine: Any, task: EmbedTask) -> Completion:
        return await engine.embed(task)  # type: ignore[no-any-return]

    def reask(self, task: EmbedTask, turns: tuple[Message, ...]) -> EmbedTask:
        raise TypeError("an embedding is never asked again")


Attempt = Callable[[Any, float], Awaitable[Outcome]]
Check = Callable[[Completion], Completion | SchemaError]


class GroupedDispatch:
    """Sends the pending rows in groups; ``attempt`` is the executor's chain for one task, ``check``
    the output's verdict on each row's vector."""

    def __init__(self, spec: EmbedSpec, attempt: Attempt, check: Check, clock: Callable[[], float],
                 workers: int) -> None:
        self._spec, self._attempt, self._check, self._clock, self._workers = spec, attempt, check, clock, workers

    async def __call__(self, pending: Iterator[int], count: int, work: Sequence[Work], settle: Settle) -> None:
        groups = self._groups(pending, work)
        requests = count // max(1, self._spec.batch_size) + 1
        await run_workers(self._run(groups, work, settle) for _ in range(min(self._workers, requests)))

    def _groups(self, pending: Iterator[int], work: Sequence[Work]) -> Iterator[list[int]]:
        """Positions in groups within the request limits, lazily (a queue that costs no memory per row)."""
        group: list[int] = []
        tokens = 0
        for i in pending:
            cost = _tokens(work[i].prompt)
            if group and (len(group) >= self._spec.batch_size or tokens + cost > self._spec.max_tokens):
                yield group
                group, tokens = [], 0
            group.append(i)
            tokens += cost
        if group:
            yield group

    async def _run(self, groups: Iterator[list[int]], work: Sequence[Work], settle: Settle) -> None:
        for group in groups:
            await self._send(group, work, settle)

    async def _send(self, group: list[int], work: Sequence[Work], settle: Settle) -> None:
        """One request for ``group``; its outcome settles the rows, or a 400 is split to find the input at fault."""
        await self._settle(group, await self._request(group, work), work, settle)

    async def _request(self, group: list[int], work: Sequence[Work]) -> Outcome:
        return await self._attempt(self._spec.group([work[i] for i in group]), self._clock())

    async def _settle(self, group: list[int], outcome: Outcome, work: Sequence[Work], settle: Settle) -> None:
        if isinstance(outcome, BadRequestError) and len(group) > 1:
            await self._split(group, outcome, work, settle)
            return
        if not isinstance(outcome, Completion):
            for i in group:
                settle(i, outcome)
            return
        share = outcome.prompt_tokens // len(group)
        for i, vector in zip(group, outcome.values or (), strict=True):
            settle(i, self._check(Completion(stored(vector), prompt_tokens=share, values=(vector,))))

    async def _split(self, group: list[int], refused: BadRequestError, work: Sequence[Work], settle: Settle) -> None:
        """Both halves asked again: when both are refused with the very words the whole was, the request
        itself is at fault (a ``dimensions`` the model lacks, a chat model), not an input: every row
        takes that error, rather than about two requests a row to find none."""
        halves = (group[: len(group) // 2], group[len(group) // 2:])
        outcomes = [await self._request(half, work) for half in halves]
        if all(isinstance(o, BadRequestError) and str(o) == str(refused) for o in outcomes):
            for i in group:
                settle(i, refused)
            return
        for half, outcome in zip(halves, outcomes, strict=True):
            await self._settle(half, outcome, work, settle)


def _tokens(text: str) -> int:
    """A text's tokens, estimated at 4 characters a token (what a request's token budget holds)."""
    return len(text) // 4 + 1

