"""What the executor dispatches, seen from outside a task: the seam between policy and tasks.

The executor never looks inside a task. A ``TaskKind`` builds one from a row's ``Work``, says how
many tokens it will cost (for the ``tpm`` pace and the cluster's gate), sends it to an engine, and
adds the turns of a re-ask. ``RequestSpec`` is the chat kind, the one built in. A ``Dispatch``
is how a run's pending work reaches the engine: the executor's worker pool is the one built in; a
provider batch job (every pending task in one job, polled, each row settled from its output) is
the other it leaves room for.
"""

from __future__ import annotations

import asyncio
import dataclasses
from array import array
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, Protocol, TypeVar, overload

from dfllm._exceptions import EngineError, SchemaError
from dfllm.engines.base import Completion, Engine
from dfllm.engines.tasks import AnswerFormat, ChatTask, ImagePart, Message, Messages, TextPart
from dfllm.prompt.images import ImageTable, image_tokens
from dfllm.prompt.keys import Key

Outcome = Completion | EngineError | SchemaError

DEFAULT_COMPLETION_ESTIMATE = 256  # tokens an answer is taken to cost without max_tokens

EngineT = TypeVar("EngineT", contravariant=True)
TaskT = TypeVar("TaskT")


class Work(NamedTuple):
    """One unique input and its cache key. Its task is built only if it is sent."""

    key: Key
    prompt: str


class WorkList(Sequence[Work]):
    """A run's unique work, compact: the prompts in a list and the keys packed, two 64-bit
    integers each. ``work[i]`` builds the row's ``Work`` when it is asked for (a row sent): at a
    million rows a ``Work`` and its key tuple held for each would cost about 200 bytes a row,
    packed keys cost 16."""

    def __init__(self, items: Iterable[Work] = ()) -> None:
        self.prompts: list[str] = []
        self._keys = array("q")
        for key, prompt in items:
            self.append(key, prompt)

    def append(self, key: Key, prompt: str) -> None:
        self._keys.extend(key)
        self.prompts.append(prompt)

    def __len__(self) -> int:
        return len(self.prompts)

    @overload
    def __getitem__(self, index: int) -> Work: ...

    @overload
    def __getitem__(self, index: slice) -> WorkList: ...

    def __getitem__(self, index: int | slice) -> Work | WorkList:
        if isinstance(index, slice):
            return WorkList(self[i] for i in range(*index.indices(len(self))))
        prompt = self.prompts[index]  # raises IndexError first; a negative index counts from the end
        return Work((self._keys[2 * index], self._keys[2 * index + 1]), prompt)

    def key_at(self, index: int) -> Key:
        """``self[index].key``, without building the ``Work`` (a negative index counts from the end)."""
        return self._keys[2 * index], self._keys[2 * index + 1]

    def __iter__(self) -> Iterator[Work]:
        return map(Work._make, zip(self.keys(), self.prompts, strict=True))

    def __repr__(self) -> str:
        return f"WorkList({len(self)} items)"

    def keys(self) -> Iterator[Key]:
        """Every key, in order, without building a ``Work`` each (the cache's bulk lookup)."""
        packed = iter(self._keys)
        return zip(packed, packed, strict=True)


async def run_workers(workers: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run a dispatch's workers together until all are done; when one fails, or the dispatch is
    cancelled, the others are cancelled too, and awaited, before the error goes on."""
    tasks = [asyncio.ensure_future(worker) for worker in workers]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class TaskKind(Protocol[EngineT, TaskT]):
    """How one kind of task is made and moved; the executor calls nothing else on a task.

    ``kind`` is the name engines declare in ``task_kinds``. ``send`` raises what the engine raises
    (an ``EngineError`` on failure); the executor's policies (gates, retries, re-asks) wrap it.
    """

    kind: ClassVar[str]

    def build(self, work: Work) -> TaskT:
        """The task for one row's work."""
        ...

    def size(self, task: TaskT) -> int:
        """The tokens ``task`` is expected to cost, prompt and answer: what the token gates hold."""
        ...

    async def send(self, engine: EngineT, task: TaskT) -> Completion:
        """Perform ``task`` on ``engine`` once."""
        ...

    def reask(self, task: TaskT, turns: tuple[Message, ...]) -> TaskT:
        """``task`` asked again, with the turns an output's ``repair`` gave after it."""
        ...


Settle = Callable[[int, Outcome], None]


class Dispatch(Protocol):
    """How a run's pending work reaches the engine. ``pending`` yields positions into ``work``
    (``count`` of them, lazily: a queue that costs no memory per row); each is answered by calling
    ``settle(position, outcome)`` exactly once, which stores, caches and counts it. The worker
    pool (``Executor._pool_dispatch``) is the one built in; a provider batch job would submit
    the pending tasks as one job, poll it, and settle each row from the job's output."""

    async def __call__(self, pending: Iterator[int], count: int, work: Sequence[Work], settle: Settle) -> None: ...


@dataclass(frozen=True)
class RequestSpec:
    """The chat kind: what every chat task of one call shares; the prompt is the per-row part."""

    kind: ClassVar[str] = ChatTask.kind

    model: str
    params: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    choices: tuple[str, ...] = ()
    timeout_s: float = 120.0
    json_schema: dict[str, Any] | None = None
    answer_format: AnswerFormat = "text"
    schema_name: str = "answer"
    images: ImageTable | None = None  # the plan's images, when the template has {{image:column}}
    image_detail: str = "auto"
    max_image_side: int | None = None

    def build(self, work: Work) -> ChatTask:
        user = self._user(work.prompt)
        # Made as the task's own list type, which the task keeps as it is rather than copying.
        messages = Messages((Message.of_text("system", self.system), user) if self.system else (user,))
        return ChatTask(self.model, messages, self.params, self.choices, self.timeout_s, self.json_schema,
                        self.answer_format, self.schema_name)

    def size(self, task: ChatTask) -> int:
        return estimate_tokens(task)

    def _user(self, prompt: str) -> Message:
        """The row's message: its text, with its images where the template put them."""
        if self.images is None or "\0" not in prompt:
            return Message.of_text("user", prompt)
        return Message("user", (TextPart(piece) if isinstance(piece, str) else
                                ImagePart(piece, self.image_detail, self.max_image_side)
                                for piece in self.images.split(prompt)))

    async def send(self, engine: Engine, task: ChatTask) -> Completion:
        if task.has_images:  # images read, downscaled and encoded off the event loop
            task = await asyncio.to_thread(task.loaded)
        return await engine.complete(task)

    def reask(self, task: ChatTask, turns: tuple[Message, ...]) -> ChatTask:
        return dataclasses.replace(task, messages=task.messages + turns)


def estimate_tokens(request: ChatTask) -> int:
    """Prompt estimate (4 characters a token, an image as a 1024-pixel square at its detail) plus the
    completion budget (``max_tokens``)."""
    prompt = sum(len(m.text()) for m in request.messages) // 4 + 1
    prompt += sum(image_tokens(1024, 1024, part.detail) for m in request.messages if m.has_images
                  for part in m.parts if isinstance(part, ImagePart))
    budget = request.params.get("max_tokens") or request.params.get("max_completion_tokens")
    return prompt + int(budget or DEFAULT_COMPLETION_ESTIMATE)
