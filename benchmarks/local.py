"""The local engine's overhead: dfllm ``predict`` vs a plain llama-cpp-python loop, same prompts.

    python benchmarks/local.py [--rows 64]

Both use the bundled SmolLM2-135M, temperature 0, the same labels grammar (or max_tokens for
free text). Model loading is outside the timed part for both; dfllm's instances are warmed by
one call first. Also times the README's demo end to end (``python -m dfllm.demo``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import pandas as pd

import dfllm  # noqa: F401  (registers df.llm)
from dfllm.engines.local import bundled_model_path, grammar_for

LABELS = ("positive", "neutral", "negative")
TEMPLATE = ("Classify the sentiment of the following text as one of `positive`, `neutral` or "
            "`negative`: {{text}}")


def plain_loop(prompts: list[str], threads: int, choices: bool, max_tokens: int) -> float:
    import llama_cpp
    from llama_cpp.llama_grammar import LlamaGrammar

    llm = llama_cpp.Llama(model_path=str(bundled_model_path()), n_ctx=2048, n_threads=threads,
                          n_threads_batch=threads, verbose=False)
    started = time.perf_counter()
    for prompt in prompts:
        grammar = LlamaGrammar.from_string(grammar_for(LABELS), verbose=False) if choices else None
        llm.create_chat_completion(messages=[{"role": "user", "content": prompt}], temperature=0,
                                   max_tokens=max_tokens, grammar=grammar)
    elapsed = time.perf_counter() - started
    llm.close()
    return elapsed


def with_dfllm(texts: list[str], choices: bool, max_tokens: int) -> float:
    df = pd.DataFrame({"text": texts})
    options: dict[str, object] = {"temperature": 0, "max_tokens": max_tokens, "cache": False, "progress": False}
    if choices:
        options["choices"] = list(LABELS)
    df.head(4).llm.predict("local", "smollm2-135m", TEMPLATE, "y", **options)  # load and warm
    started = time.perf_counter()
    df.llm.predict("local", "smollm2-135m", TEMPLATE, "y", **options)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=64)
    args = parser.parse_args()
    moods = ["I love it", "It is terrible", "It arrived today", "Best thing ever", "Broken again"]
    texts = [f"Review {i}: {moods[i % len(moods)]}, said customer {i}." for i in range(args.rows)]
    prompts = [TEMPLATE.replace("{{text}}", t) for t in texts]
    cores = os.cpu_count() or 1
    print(f"{args.rows} rows, SmolLM2-135M Q4_1, {cores} cores")
    for label, choices, max_tokens in (("labels (grammar)", True, 8), ("free text, 24 tokens", False, 24)):
        d = with_dfllm(texts, choices, max_tokens)
        default_threads = max(cores // 2, 1)  # llama-cpp-python's own default
        p1 = plain_loop(prompts, default_threads, choices, max_tokens)
        p_all = plain_loop(prompts, cores, choices, max_tokens)
        n = args.rows
        print(f"{label:<22} dfllm {n / d:6.1f} rows/s | plain loop (n_threads={default_threads}, default) "
              f"{n / p1:6.1f} rows/s -> ratio {p1 / d:.2f} | plain loop (n_threads={cores}) {n / p_all:6.1f} "
              f"rows/s -> ratio {p_all / d:.2f}")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dfllm.demo"], check=True, capture_output=True)
    print(f"demo (python -m dfllm.demo, 8 rows, interpreter start and model load included): "
          f"{time.perf_counter() - started:.2f}s wall")


if __name__ == "__main__":
    main()
