"""dfllm's Portkey engine through the real open-source Portkey gateway (npm ``@portkey-ai/gateway``),
forwarding to the fake provider: judged from what arrives upstream.

The gateway is installed with ``npm ci`` from ``tests/gateway/package-lock.json`` (pinned) into
``tests/gateway/node_modules`` (git-ignored, reused while the lockfile is unchanged) and started
once per session, bound to 127.0.0.1 only. Without ``node``/``npm`` these tests are skipped.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

import dfllm
from dfllm.testing import FakeProvider, always, sequence, status

GATEWAY_DIR = Path(__file__).resolve().parent.parent / "gateway"
ENTRY = GATEWAY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
STAMP = GATEWAY_DIR / "node_modules" / ".dfllm-lock-sha256"
UPSTREAM_KEY = "sk-upstream-0123456789abcdef"
DF = pd.DataFrame({"question": ["Where is Stockholm located?", "And Oslo?"]})


def _node_tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("the Portkey gateway tests need node (18.19+) and npm on PATH")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout
    major, minor = (int(p) for p in version.strip().lstrip("v").split(".")[:2])
    if (major, minor) < (18, 19):
        pytest.skip(f"the Portkey gateway tests need node 18.19+ (for --import), found {version.strip()}")
    return node, npm


def _install(npm: str) -> None:
    """``npm ci`` from the committed lockfile, unless node_modules already matches it."""
    lock = hashlib.sha256((GATEWAY_DIR / "package-lock.json").read_bytes()).hexdigest()
    if ENTRY.exists() and STAMP.exists() and STAMP.read_text() == lock:
        return
    # --ignore-scripts: the package's postinstall only patches its own dev dependencies.
    done = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=GATEWAY_DIR,
                          capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0 or not ENTRY.exists():
        pytest.skip(f"npm ci of the pinned Portkey gateway failed (is the npm registry reachable?): "
                    f"{(done.stderr or done.stdout)[-500:]}")
    STAMP.write_text(lock)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """The gateway's base URL and port, for the whole session."""
    node, npm = _node_tools()
    _install(npm)
    port = _free_port()
    log_path = tmp_path_factory.mktemp("gateway") / "gateway.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [node, "--import", str(GATEWAY_DIR / "loopback.mjs"), str(ENTRY), f"--port={port}", "--headless"],
            cwd=GATEWAY_DIR, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as answer:
                    if b"Gateway" in answer.read():
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Portkey gateway did not start: {log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/v1", port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _predict(engine: str, df: pd.DataFrame = DF, **options: object) -> pd.DataFrame:
    frame: pd.DataFrame = df.llm.predict(engine, "gpt-4o-mini", "{{question}}", "answer", progress=False,
                                         **options)
    return frame


def test_the_gateway_listens_on_loopback_only(gateway: tuple[str, int]) -> None:
    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not tables[0].exists():
        pytest.skip("reads the listening sockets from /proc/net (Linux)")
    listening = []
    for table in tables:
        for line in table.read_text().splitlines()[1:] if table.exists() else []:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == gateway[1]:  # 0A: LISTEN
                listening.append(local.rsplit(":", 1)[0])
    assert listening == ["0100007F"]  # 127.0.0.1, and no wildcard or IPv6 socket


def test_predict_through_the_gateway_to_a_custom_host(gateway: tuple[str, int]) -> None:
    with FakeProvider(api_key=UPSTREAM_KEY) as upstream:
        dfllm.create_engine("pk", "portkey", base_url=gateway[0], provider="openai",
                            provider_api_key=UPSTREAM_KEY, custom_host=upstream.base_url)
        result = _predict("pk", max_tokens=7, temperature=0)
        requests = upstream.chat_requests
    assert result["answer"][0].startswith("Stockholm is the capital")
    assert len(requests) == 2
    for request in requests:
        assert request.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert not [h for h in request.headers if h.lower().startswith("x-portkey")]
        assert request.body["model"] == "gpt-4o-mini"
        assert request.body["max_tokens"] == 7 and request.body["temperature"] == 0
    assert sorted(r.prompt for r in requests) == sorted(DF["question"])


def test_a_config_dict_is_sent_as_json(gateway: tuple[str, int]) -> None:
    with FakeProvider(api_key=UPSTREAM_KEY) as upstream:
        config = {"provider": "openai", "api_key": UPSTREAM_KEY, "custom_host": upstream.base_url}
        dfllm.create_engine("pk", "portkey", base_url=gateway[0], config=config)
        result = _predict("pk")
        requests = upstream.chat_requests
    assert result["answer"][1] == "gpt-4o-mini says: And Oslo?"
    assert [r.headers["Authorization"] for r in requests] == [f"Bearer {UPSTREAM_KEY}"] * 2


def test_a_429_with_retry_after_and_a_500_pass_through_and_are_retried(gateway: tuple[str, int]) -> None:
    script = sequence([status(429, retry_after=0.3), status(500)])
    with FakeProvider(api_key=UPSTREAM_KEY, script=script) as upstream:
        dfllm.create_engine("pk", "portkey", base_url=gateway[0], provider="openai",
                            provider_api_key=UPSTREAM_KEY, custom_host=upstream.base_url)
        stats = dfllm.RunStats()
        result = _predict("pk", DF.head(1), stats=stats)
        arrivals = [r.arrived_at for r in upstream.chat_requests]
    assert result["answer"][0].startswith("Stockholm is the capital")
    assert len(arrivals) == 3 and stats.rate_limited == 1 and stats.retries == 2
    assert arrivals[1] - arrivals[0] >= 0.3  # the upstream's Retry-After reached dfllm through the gateway


def test_a_refused_upstream_key_aborts_the_run_and_says_which_key(gateway: tuple[str, int]) -> None:
    with FakeProvider(api_key="sk-the-right-one-000000") as upstream:
        dfllm.create_engine("pk", "portkey", base_url=gateway[0], provider="openai",
                            provider_api_key=UPSTREAM_KEY, custom_host=upstream.base_url)
        with pytest.raises(dfllm.AuthenticationError) as info:
            _predict("pk", pd.DataFrame({"question": [f"q{i}" for i in range(20)]}), concurrency=1)
        sent = len(upstream.chat_requests)
    assert sent == 1  # the first 401 stopped the run
    assert info.value.status == 401
    assert "upstream provider's" in str(info.value) and "provider_api_key" in str(info.value)
    assert UPSTREAM_KEY not in str(info.value)


def test_gateway_retries_multiply_dfllms_and_are_warned_about(gateway: tuple[str, int]) -> None:
    with FakeProvider(api_key=UPSTREAM_KEY, script=always(status(500))) as upstream:
        config = {"provider": "openai", "api_key": UPSTREAM_KEY, "custom_host": upstream.base_url,
                  "retry": {"attempts": 1, "on_status_codes": [500]}}
        with pytest.warns(UserWarning, match="up to 2 upstream requests"):
            dfllm.create_engine("pk", "portkey", base_url=gateway[0], config=config)
        result = _predict("pk", DF.head(1), max_retries=1, errors="null")
        sent = len(upstream.chat_requests)
    assert result["answer_error"][0].startswith("ServerError")
    assert sent == (1 + 1) * (1 + 1)  # (dfllm attempts) x (gateway attempts)


def test_openai_routing_asks_for_the_schema_as_json_schema_through_the_gateway(gateway: tuple[str, int]) -> None:
    with FakeProvider(api_key=UPSTREAM_KEY) as upstream:
        dfllm.create_engine("pk", "portkey", base_url=gateway[0], provider="openai",
                            provider_api_key=UPSTREAM_KEY, custom_host=upstream.base_url)
        result = _predict("pk", schema={"city": str, "country": str}, errors="null")
        requests = upstream.chat_requests
    # One request a row, each with OpenAI's response_format as the gateway passed it on; the
    # schema is not described in a system prompt.
    assert len(requests) == 2
    for request in requests:
        assert request.body["response_format"]["type"] == "json_schema"
        assert set(request.body["response_format"]["json_schema"]["schema"]["properties"]) == {"city", "country"}
        assert [m["role"] for m in request.body["messages"]] == ["user"]
    assert result["answer_error"].isna().all() and result["answer_city"].notna().all()


def test_max_tokens_goes_upstream_only_where_a_model_sets_it(gateway: tuple[str, int]) -> None:
    with FakeProvider(api_key=UPSTREAM_KEY) as upstream:
        dfllm.create_engine("pk", "portkey", base_url=gateway[0], provider="openai",
                            provider_api_key=UPSTREAM_KEY, custom_host=upstream.base_url)
        _predict("pk", DF.head(1))
        model = dfllm.create_model("portkey_model", engine="pk", predict="answer", column="question",
                                   model="gpt-4o-mini")
        model.predict(DF.head(1), cache=False)
        dfllm.create_model("m300", engine="pk", predict="answer", column="question", model="gpt-4o-mini",
                           max_tokens=300).predict(DF.head(1), cache=False)
        sent = [r.body.get("max_tokens") for r in upstream.chat_requests]
    assert sent == [None, 100, 300]  # a plain predict sends none; the seed's default is create_model's


def test_list_models_through_the_gateway_says_the_gateways_list_failed(gateway: tuple[str, int]) -> None:
    with FakeProvider(api_key=UPSTREAM_KEY) as upstream:
        dfllm.create_engine("pk", "portkey", base_url=gateway[0], provider="openai",
                            provider_api_key=UPSTREAM_KEY, custom_host=upstream.base_url)
        with pytest.raises(dfllm.EngineError) as info:
            dfllm.list_models("pk")
    message = str(info.value)
    assert message.startswith(f"Listing the models of engine 'pk' at {gateway[0]} failed: ")
    assert "HTTP 500" in message and "The open-source Portkey gateway lists models only" in message
    assert "List the models at the upstream provider" in message and UPSTREAM_KEY not in message


# -- configuration, no gateway needed -------------------------------------------------------------

def test_config_and_upstream_keys_are_secrets_only_hashed_into_identity() -> None:
    from dfllm.config.secrets import Secret

    config = {"provider": "openai", "api_key": UPSTREAM_KEY}
    engine = dfllm.create_engine("pk", "portkey", base_url="http://127.0.0.1:8787/v1", config=config,
                                 provider_api_key="sk-another-upstream-999", virtual_key="vk-1234567890")
    assert isinstance(engine.headers["x-portkey-config"], Secret)
    assert json.loads(engine.headers["x-portkey-config"].reveal()) == config  # JSON, not a Python repr
    for secret in (UPSTREAM_KEY, "sk-another-upstream-999", "vk-1234567890"):
        assert secret not in engine.identity and secret not in repr(engine)
    other = dfllm.create_engine("pk2", "portkey", base_url="http://127.0.0.1:8787/v1",
                                config={"provider": "openai", "api_key": "sk-different-key-000"})
    assert other.identity != engine.identity  # a different config routes elsewhere: another cache namespace


def test_a_portkey_key_is_needed_only_for_portkeys_own_service() -> None:
    with pytest.raises(dfllm.MissingAPIKeyError, match="PORTKEY_API_KEY"):
        dfllm.create_engine("pk", "portkey", provider="openai", provider_api_key="sk-x")
    engine = dfllm.create_engine("pk", "portkey", base_url="http://127.0.0.1:8787/v1", provider="openai",
                                 provider_api_key="sk-x", custom_host="http://127.0.0.1:8000/v1")
    assert "x-portkey-api-key" not in engine.headers
    assert engine.headers["x-portkey-custom-host"] == "http://127.0.0.1:8000/v1"


def test_bad_config_and_custom_host_are_reported_together() -> None:
    with pytest.raises(dfllm.ConfigurationError) as info:
        dfllm.create_engine("pk", "portkey", base_url="http://127.0.0.1:8787/v1", config=42,
                            custom_host="ftp://files.example.com")
    assert "config must be a dict" in str(info.value) and "custom_host 'ftp://files.example.com'" in str(info.value)
