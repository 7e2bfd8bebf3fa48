from __future__ import annotations

from collections.abc import Iterator

import pytest

import dfllm
from dfllm.config import engines as engine_registry
from dfllm.engines import PROVIDERS
from dfllm.testing import FakeProvider

KEY = "sk-test-0123456789abcdef"


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No real key ever reaches a test; each test has its own cache; engines do not leak."""
    for provider in PROVIDERS.values():
        if provider.key_env:
            monkeypatch.delenv(provider.key_env, raising=False)
    monkeypatch.setenv("DFLLM_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield
    engine_registry._ENGINES.clear()


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as server:
        yield server


@pytest.fixture
def engine(fake: FakeProvider) -> str:
    dfllm.create_engine("t", "openai", api_key=KEY, base_url=fake.base_url)
    return "t"
