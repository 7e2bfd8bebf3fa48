"""The executor's pool honours the declared cap of the engine that runs, built-in or custom."""

from __future__ import annotations

import asyncio

import pandas as pd
import pytest

import dfllm
from dfllm.drive.eager import make_executor
from dfllm.engines.local import instance_count
from dfllm.plan.make import make_plan
from dfllm.testing import MockEngine

DF = pd.DataFrame({"text": ["a", "b"]})


@pytest.mark.local
def test_a_built_in_engine_opened_from_its_config_caps_the_pool_by_its_own_declaration() -> None:
    pytest.importorskip("llama_cpp")
    plan = make_plan(DF, "local", "smollm2-135m", "{{text}}", "out", {"concurrency": 64})
    assert plan.config is not None and plan.info.max_concurrency is None  # the config does not know it

    async def pool() -> int:
        engine = plan.config.connect() if plan.config is not None else None
        assert engine is not None
        try:
            return make_executor(plan, engine, dfllm.RunStats())._pool
        finally:
            await engine.aclose()

    assert asyncio.run(pool()) == instance_count() < 64


def test_a_custom_engine_caps_the_pool_by_its_declaration() -> None:
    engine = MockEngine(max_concurrency=3)
    plan = make_plan(DF, engine, "m", "{{text}}", "out", {"concurrency": 64})
    assert make_executor(plan, engine, dfllm.RunStats())._pool == 3
