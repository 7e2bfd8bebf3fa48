"""Named engines: ``create_engine`` is dfllm's ``CREATE ML_ENGINE name FROM provider USING ...``.

The registry holds configuration only (provider, key, base URL, default options). Sessions are
opened by ``EngineConfig.connect()`` inside the running loop, for one run, and closed after it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import urllib.parse
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from dfllm._exceptions import (
    ConfigurationError,
    MissingAPIKeyError,
    ParameterError,
    UnknownEngineError,
    did_you_mean,
)
from dfllm.config.options import LOCAL_NAMES, OPTION_NAMES, option_problems, unknown_option_problems
from dfllm.config.secrets import Secret, looks_like_key, shown_url
from dfllm.engines.base import Capabilities, Engine, is_engine
from dfllm.engines.kinds import KINDS, Endpoint, ProviderKind
from dfllm.engines.providers import PROVIDERS, Provider, needs_key

_ENGINES: dict[str, EngineConfig] = {}


@dataclass(frozen=True)
class EngineConfig:
    """A provider connection: where, how to authenticate, and default options. Holds no session."""

    name: str
    provider: Provider
    base_url: str
    headers: Mapping[str, str | Secret] = field(default_factory=dict, repr=False)
    options: Mapping[str, Any] = field(default_factory=dict)
    model_path: str | None = None  # local engine: a GGUF file
    # Headers that choose where a request goes (Portkey's config, provider, virtual key...).
    routing: Mapping[str, str | Secret] = field(default_factory=dict, repr=False)
    # How this server takes a schema, when the provider's default is wrong for it (STRUCTURED_OUTPUTS).
    structured_outputs: str | None = None
    # A caller's name for an answer space the other fields do not capture (a key that routes).
    cache_namespace: str | None = None

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return (
            f"EngineConfig(name={self.name!r}, provider={self.provider.name!r}, "
            f"base_url={self.shown_base_url!r}{', ' + shown if shown else ''})"
        )

    @property
    def shown_base_url(self) -> str:
        """``base_url`` fit for a message: any part that looks like a key masked (``shown_url``)."""
        return shown_url(self.base_url)

    @property
    def capabilities(self) -> Capabilities:
        """The provider's capabilities (a gateway's: those of the provider it routes to), with
        structured outputs as this engine was told."""
        found = self.provider.upstream_capabilities.get(self.upstream or "", self.provider.capabilities)
        if self.structured_outputs is None:
            return found
        told = STRUCTURED_OUTPUTS[self.structured_outputs]
        return replace(found, json_schema=told.json_schema, json_mode=told.json_mode)

    @property
    def upstream(self) -> str | None:
        """The provider a gateway forwards to, where this engine shows it; None where it is unknown.

        A config that decides the route (a saved config's id, or JSON naming a provider, targets or a
        virtual key) overrides the provider parameter, as the gateway does: it shows a provider only
        when every target reaches the same one by name. A virtual key hides its provider.
        """
        provider = self.provider
        if provider.upstream_config_param is not None:
            config = self.routing.get(provider.header_params[provider.upstream_config_param])
            decides, named = _config_route(config.reveal() if isinstance(config, Secret) else config)
            if decides:
                return named
        if any(provider.header_params[p] in self.routing for p in provider.upstream_hiding_params):
            return None
        if provider.upstream_param is not None:
            named_header = self.routing.get(provider.header_params[provider.upstream_param])
            return named_header if isinstance(named_header, str) else None
        return None

    @property
    def kind(self) -> ProviderKind:
        return KINDS[self.provider.kind]

    @property
    def endpoint(self) -> Endpoint:
        """What this engine's provider kind needs to reach it."""
        return Endpoint(self.base_url, self.headers, identity=self.identity, capabilities=self.capabilities,
                        auth_hint=self.provider.auth_hint, local_names=LOCAL_NAMES)

    @property
    def identity(self) -> str:
        """What, besides the request, decides an answer: part of every cache key.

        Provider, base URL and every routing header. A secret that routes (a virtual key, a
        config that may hold a provider key) enters only as a keyed hash; the identity itself is
        only ever hashed into cache keys, never stored.
        """
        routing = {
            header: _keyed_hash(value.reveal()) if isinstance(value, Secret) else value
            for header, value in sorted(self.routing.items())
        }
        parts: list[Any] = [self.provider.name, self.provider.kind, self.base_url, routing]
        if self.cache_namespace is not None:
            parts.append(self.cache_namespace)
        return json.dumps(parts, separators=(",", ":"))

    def connect(self) -> Engine:
        """Open an engine for one run. Call inside the running event loop."""
        return self.kind.connect(self.endpoint)


def create_engine(name: str, provider: str, /, **using: Any) -> EngineConfig:
    """Create (or replace) a named engine, like MindsDB's ``CREATE ML_ENGINE``.

    ``using`` takes the provider's key parameter (``api_key`` or the seed's name, such as
    ``mindsdb_inference_api_key``), ``base_url``, provider headers (Portkey's ``virtual_key``,
    ``provider``, ``provider_api_key``, ``config``) and default options for every prediction
    (``max_tokens``, ``temperature``, ``rpm``, ``concurrency``...).

    ``name`` and ``provider`` are positional-only, so Portkey's ``provider=`` USING parameter
    (the upstream vendor it routes to) cannot collide with them.
    """
    if not isinstance(name, str) or not name:
        raise ParameterError(f"Engine name must be a non-empty string, got {name!r}.")
    config = configure(name, provider, using)
    _ENGINES[name] = config
    return config


def drop_engine(name: str) -> None:
    """Forget a named engine (``DROP ML_ENGINE``)."""
    if _ENGINES.pop(name, None) is None:
        raise UnknownEngineError(f"No engine named {name!r}. Engines: {sorted(_ENGINES)}.")


# The config fields by which a Portkey config chooses where a request goes.
_ROUTING_FIELDS = ("provider", "virtual_key", "targets")


def _config_route(config_text: str | None) -> tuple[bool, str | None]:
    """Whether a gateway config decides where requests go, and the one provider it then reaches.

    A saved config's id (not JSON) decides, to a provider not visible from here. A JSON config
    decides when it has a routing field at its top; each target inherits its parent's provider
    and virtual key, as the gateway's configs do. The provider is known only when every leaf
    target names the same one and none holds a virtual key (it stands for a provider we cannot see).
    """
    if not config_text:
        return False, None
    try:
        config = json.loads(config_text)
    except (ValueError, RecursionError):
        return True, None
    if not isinstance(config, dict) or not any(k in config for k in _ROUTING_FIELDS):
        return False, None
    named: set[str] = set()
    stack: list[tuple[Any, int, Any]] = [(config, 0, None)]
    while stack:
        node, depth, inherited = stack.pop()
        if not isinstance(node, dict) or depth > 8 or node.get("virtual_key") is not None:
            return True, None
        provider = node.get("provider", inherited)
        targets = node.get("targets")
        if targets is None:
            if not isinstance(provider, str):
                return True, None
            named.add(provider)
        elif isinstance(targets, list) and targets:
            stack.extend((target, depth + 1, provider) for target in targets)
        else:
            return True, None
    return True, (named.pop() if len(named) == 1 else None)


def _keyed_hash(value: str) -> str:
    return hashlib.blake2b(value.encode(), key=b"dfllm routing identity", digest_size=16).hexdigest()


def base_url_problems(base_url: Any) -> list[str]:
    """Why ``base_url`` is not an http(s) URL a request can go to (empty when it is).

    Messages show the URL through ``shown_url``: a key pasted into it is never quoted back.
    """
    example = "e.g. base_url='https://api.example.com/v1' or 'http://127.0.0.1:8000/v1'"
    if not isinstance(base_url, str):
        return [f"base_url must be a string URL, {example}; got {type(base_url).__name__}."]
    shown = shown_url(base_url)
    if base_url != base_url.strip() or any(c.isspace() for c in base_url):
        return [f"base_url {shown!r} contains whitespace; remove it ({example})."]
    try:
        parts = urllib.parse.urlsplit(base_url)
    except ValueError:  # an unclosed IPv6 bracket
        return [f"base_url {shown!r} is not a URL ({example})."]
    if parts.scheme not in ("http", "https"):
        return [f"base_url {shown!r} must start with http:// or https:// ({example})."]
    try:
        port = parts.port
    except ValueError:
        return [f"base_url {shown!r} has an invalid port ({example})."]
    if not parts.hostname:
        return [f"base_url {shown!r} has no host name ({example})."]
    if parts.username or parts.password:
        return ["base_url must not carry credentials (user:password@); pass the key as api_key instead."]
    if parts.query or parts.fragment:
        return [f"base_url {shown!r} must not have a query or fragment (not shown: it may hold a key); give the "
                f"API's root and pass a key as api_key ({example})."]
    del port
    return []


def connection_params(provider: Provider) -> frozenset[str]:
    """The USING names that configure the connection to ``provider`` (options aside)."""
    names = (set(provider.key_params) | set(provider.header_params) | KINDS[provider.kind].extra_params
             | {"cache_namespace", "structured_outputs"})
    if provider.header_params:
        names.add("provider_api_key")
    return frozenset(names)


_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")


def is_plain_name(name: str) -> bool:
    """Whether a parameter's name may be quoted back: an identifier of modest length that does not
    look like a key. Anything else (``api_key:sk-...``, a pasted key) may be a credential."""
    return bool(_PLAIN_NAME.fullmatch(name)) and not looks_like_key(name)


def hidden_name_problem(which: str, name: str) -> str:
    return (f"{which} has an unknown name ({len(name)} characters, not shown: it may hold a key). Name a "
            "known parameter, e.g. virtual_key=... or max_tokens=...; for the API key, use the provider's "
            "environment variable.")


def configure(name: str, provider_name: str, using: Mapping[str, Any]) -> EngineConfig:
    provider = PROVIDERS.get(provider_name)
    if provider is None:
        raise UnknownEngineError(
            f"Unknown provider {provider_name!r}.{did_you_mean(provider_name, list(PROVIDERS))} "
            f"Providers: {', '.join(PROVIDERS)}."
        )
    base_url = using.get("base_url") or provider.base_url
    key = _find_key(provider, using)
    problems = _using_problems(provider, using) + _connection_problems(name, provider, using, base_url, key)
    if problems:
        raise problems[0] if len(problems) == 1 else ConfigurationError([str(p) for p in problems])
    headers, routing = _headers(provider, using, key)
    if KINDS[provider.kind].needs_base_url and any(isinstance(v, Secret) for v in headers.values()):
        _warn_if_cleartext(name, str(base_url))
    if using.get("config") is not None and "config" in provider.header_params:
        _warn_if_gateway_retries(name, _header_text(using["config"]))
    # provider.model_defaults are the seed's CREATE MODEL defaults: create_model applies them.
    options = {k: v for k, v in using.items() if k in OPTION_NAMES}
    return EngineConfig(
        name=name,
        provider=provider,
        base_url=str(base_url or provider.kind),
        headers=headers,
        options=options,
        model_path=using.get("model_path"),
        routing=routing,
        structured_outputs=using.get("structured_outputs"),
        cache_namespace=using.get("cache_namespace"),
    )


def _using_problems(provider: Provider, using: Mapping[str, Any]) -> list[ConfigurationError]:
    """Unknown USING names (a name that may hold a key is not quoted) and bad option values."""
    connection = connection_params(provider)
    names = [str(k) for k in using]
    problems = unknown_option_problems([n for n in names if is_plain_name(n)], connection)
    problems += [hidden_name_problem("A parameter", n) for n in names
                 if not is_plain_name(n) and n not in connection and n not in OPTION_NAMES]
    problems += option_problems({k: v for k, v in using.items() if k in OPTION_NAMES})
    return [ParameterError(p) for p in problems]


def _connection_problems(name: str, provider: Provider, using: Mapping[str, Any], base_url: Any,
                         key: str | None) -> list[ConfigurationError]:
    """What stops an engine of ``provider`` from being reached: no key, no or a bad base URL, bad headers."""
    problems: list[ConfigurationError] = []
    if key is None and needs_key(provider, base_url):
        problems.append(MissingAPIKeyError(_missing_key_message(name, provider)))
    if KINDS[provider.kind].needs_base_url and not base_url:
        problems.append(ParameterError(
            f"Provider {provider.name!r} needs base_url, the address of your OpenAI-compatible "
            "server, e.g. base_url='http://127.0.0.1:8000/v1'."
        ))
    elif KINDS[provider.kind].needs_base_url:
        problems += [ParameterError(p) for p in base_url_problems(base_url)]
    text_problems = _structured_outputs_problems(provider, using.get("structured_outputs"))
    namespace = using.get("cache_namespace")
    if namespace is not None and (not isinstance(namespace, str) or not namespace):
        text_problems.append(f"cache_namespace must be a non-empty string, got {namespace!r}.")
    routing_values = _routing_values(provider, using)
    text_problems += _header_param_problems(routing_values)
    sent_as_headers = {p: using[p] for p in (*provider.key_params, "provider_api_key") if using.get(p) is not None}
    text_problems += _unsendable_problems({**sent_as_headers, **routing_values})
    return problems + [ParameterError(p) for p in text_problems]


def _routing_values(provider: Provider, using: Mapping[str, Any]) -> dict[str, Any]:
    """The USING parameters sent as the provider's routing headers, by parameter name."""
    return {p: using[p] for p in provider.header_params if using.get(p) is not None}


def _headers(provider: Provider, using: Mapping[str, Any],
             key: str | None) -> tuple[dict[str, str | Secret], dict[str, str | Secret]]:
    """Every header an engine sends, and those of them that choose where a request goes."""
    headers: dict[str, str | Secret] = {}
    routing: dict[str, str | Secret] = {}
    if key is not None:
        headers[provider.auth_header] = Secret(provider.auth_prefix + key)
    for param, value in _routing_values(provider, using).items():
        text = _header_text(value)
        routing[provider.header_params[param]] = Secret(text) if param in provider.secret_params else text
    headers.update(routing)
    if using.get("provider_api_key") is not None:
        headers["Authorization"] = Secret(f"Bearer {_header_text(using['provider_api_key'])}")
    return headers, routing


# How a server takes structured outputs, for engines whose provider's default is wrong for it
# (llama-cpp-python's server refuses OpenAI's json_schema response_format with HTTP 500).
STRUCTURED_OUTPUTS = {
    "json_schema": Capabilities(json_schema=True, json_mode=True),
    "json_mode": Capabilities(json_mode=True),
    "prompt": Capabilities(),
}


def _structured_outputs_problems(provider: Provider, wanted: Any) -> list[str]:
    if wanted is None or (wanted in STRUCTURED_OUTPUTS and provider.kind == "http"):
        return []
    allowed = ", ".join(repr(k) for k in STRUCTURED_OUTPUTS)
    where = "" if provider.kind == "http" else f" (only HTTP providers take it; {provider.name!r} is {provider.kind})"
    return [
        f"structured_outputs must be one of {allowed}{where}, got {wanted!r}: how the server takes a schema "
        "(OpenAI's json_schema response_format, JSON mode, or the schema described in the prompt)."
    ]


def _header_text(value: Any) -> str:
    """A header value from a USING parameter: a mapping (a Portkey config) is sent as JSON."""
    if isinstance(value, Secret):
        return value.reveal()
    if isinstance(value, Mapping):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _header_param_problems(values: Mapping[str, Any]) -> list[str]:
    problems = []
    config = values.get("config")
    if isinstance(config, Mapping):
        try:
            json.dumps(config)
        except (TypeError, ValueError) as exc:
            problems.append(f"config must be JSON-serialisable (strings, numbers, lists, dicts): {exc}.")
    elif config is not None and not isinstance(config, (str, Secret)):
        problems.append(
            f"config must be a dict (sent as JSON) or a string (a JSON text or a saved config's id), "
            f"got {type(config).__name__}."
        )
    host = values.get("custom_host")
    if host is not None:
        parts = urllib.parse.urlsplit(str(host))
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
            problems.append(
                f"custom_host {shown_url(str(host))!r} must be the http(s) URL of an OpenAI-compatible "
                "server, without credentials, e.g. custom_host='http://127.0.0.1:8000/v1'."
            )
    return problems


# What an HTTP header value cannot carry (aiohttp refuses these at request time, for every row).
_UNSENDABLE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _unsendable_problems(values: Mapping[str, Any]) -> list[str]:
    """Header values with a line break or control character: refused now, with the parameter's
    name only (the value may be a key), rather than failing every row later."""
    return [
        f"{param} contains a line break or other control character, which an HTTP header cannot carry "
        f"(often a trailing newline read from a file); pass it stripped, e.g. {param}=value.strip()."
        for param, value in values.items()
        if _UNSENDABLE.search(_header_text(value))
    ]


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _warn_if_cleartext(name: str, base_url: str) -> None:
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme == "http" and not _is_loopback(parts.hostname or ""):
        warnings.warn(
            f"Engine {name!r} sends its key in clear text to {shown_url(base_url)} (http://, not https://): anyone on "
            "the network path can read it. Use https://, or a server on this machine.",
            UserWarning,
            stacklevel=4,
        )


def _warn_if_gateway_retries(name: str, config_text: str) -> None:
    try:
        config = json.loads(config_text)
    except (ValueError, RecursionError):
        return  # a saved config's id: its retries are not visible from here
    retry = config.get("retry") if isinstance(config, dict) else None
    attempts = retry.get("attempts") if isinstance(retry, Mapping) else None
    if isinstance(attempts, (int, float)) and attempts > 0:
        warnings.warn(
            f"Engine {name!r}: the Portkey config retries {attempts:g} times, and dfllm retries too "
            f"(max_retries): each dfllm attempt becomes up to {attempts + 1:g} upstream requests. Keep one "
            "retry layer: drop `retry` from the config, or pass max_retries=0.",
            UserWarning,
            stacklevel=4,
        )


def _find_key(provider: Provider, using: Mapping[str, Any]) -> str | None:
    for param in provider.key_params:
        if using.get(param):
            value = using[param]
            return value.reveal() if isinstance(value, Secret) else str(value)
    if provider.key_env:
        return os.environ.get(provider.key_env) or None
    return None


def _missing_key_message(name: str, provider: Provider) -> str:
    params = " or ".join(repr(p) for p in provider.key_params)
    return (
        f"Engine {name!r} (provider {provider.name!r}) has no API key. Pass {params} to "
        f"dfllm.create_engine, or set the environment variable {provider.key_env}."
    )


def resolve_engine(engine: object) -> EngineConfig | Engine:
    """A created engine's name, a provider name (key from the environment), or an engine object."""
    if isinstance(engine, EngineConfig):
        return engine
    if isinstance(engine, str):
        if engine in _ENGINES:
            return _ENGINES[engine]
        if engine in PROVIDERS:
            return configure(engine, engine, {})
        known = sorted(_ENGINES) + sorted(PROVIDERS)
        raise UnknownEngineError(
            f"Unknown engine {engine!r}.{did_you_mean(engine, known)} Created engines: "
            f"{sorted(_ENGINES) or 'none'}; providers usable directly: {', '.join(PROVIDERS)}. "
            f"Create it first, e.g. dfllm.create_engine({engine!r}, 'openai', api_key=...)."
        )
    if is_engine(engine):
        return engine  # type: ignore[return-value]
    raise UnknownEngineError(
        "engine must be an engine name, a provider name or an object with async complete(request) "
        f"and aclose() methods, got {type(engine).__name__}."
    )


def list_engines() -> dict[str, EngineConfig]:
    """The engines created in this process, by name."""
    return dict(_ENGINES)
