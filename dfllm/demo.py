"""``python -m dfllm.demo``: sentiment labels for a small frame, on the embedded local engine.

No API key and no network: llama.cpp runs the bundled SmolLM2-135M-Instruct model.
"""

from __future__ import annotations

import time

import pandas as pd

import dfllm

TEXTS = [
    "I love machine learning!",
    "This is awful.",
    "The package arrived on Tuesday.",
    "Best purchase I have made all year.",
    "The food was cold and the waiter was rude.",
    "Our meeting is at 3pm in room 4.",
    "Absolutely wonderful service, thank you!",
    "The app crashes every time I open it.",
]
TEMPLATE = ("Classify the sentiment of the following text as one of `positive`, `neutral` or "
            "`negative`: {{text}}")


def main() -> None:
    df = pd.DataFrame({"text": TEXTS})
    started = time.perf_counter()
    out = df.llm.predict("local", "smollm2-135m", TEMPLATE, "sentiment",
                         choices=["positive", "neutral", "negative"], temperature=0, seed=0, cache=False)
    elapsed = time.perf_counter() - started
    with pd.option_context("display.max_colwidth", 60, "display.width", 120):
        print(out.to_string(index=False))
    run = dfllm.last_run()
    assert run is not None
    print(f"\n{len(out)} rows in {elapsed:.2f}s ({len(out) / elapsed:.1f} rows/s, model load included) "
          f"on the local engine; {run.prompt_tokens} prompt + {run.completion_tokens} completion tokens.")


if __name__ == "__main__":
    main()
