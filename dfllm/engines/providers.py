"""Providers are data: where to send requests, how to authenticate, and which defaults apply.

Adding an OpenAI-compatible vendor is one ``register_provider(Provider(...))`` call, never a
subclass. ``kind`` names how its engines are built (``"http"``: the OpenAI-compatible HTTP
engine; ``"local"``: llama.cpp in process), see ``dfllm.engines.kinds``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dfllm._exceptions import ParameterError
from dfllm.engines.base import Capabilities
from dfllm.engines.kinds import KINDS


@dataclass(frozen=True)
class Provider:
    """How to reach one vendor's OpenAI-compatible API.

    ``key_params`` are the USING names that carry the key (the seed's name first);
    ``header_params`` map further USING names to the request header they fill;
    ``secret_params`` are those of them whose value is a credential (masked, scrubbed, and
    only keyed-hashed into the cache identity). ``key_required_off_default``: False when a
    self-hosted server of this API (any base_url other than the default) may need no key.
    ``auth_hint`` is the advice given when the provider refuses the credentials.
    ``model_defaults`` are the seed's ``CREATE MODEL`` defaults: ``create_model`` applies them
    (shown in the model's repr), a plain ``predict`` through the engine does not.

    A gateway names the provider it forwards to with ``upstream_param`` (a USING parameter, also
    read as ``"provider"`` from the JSON of ``upstream_config_param``); ``upstream_capabilities``
    says how each upstream takes a schema through it. An upstream not listed there, or one hidden
    (behind a parameter of ``upstream_hiding_params``, such as a virtual key, or a config routing
    to several) gets ``capabilities``; ``structured_outputs=`` overrides both.
    ``models_hint`` is added when listing models through it fails.
    """

    name: str
    base_url: str | None
    key_env: str | None
    key_params: tuple[str, ...] = ("api_key",)
    key_required: bool = True
    auth_header: str = "Authorization"
    auth_prefix: str = "Bearer "
    header_params: Mapping[str, str] = field(default_factory=dict)
    secret_params: frozenset[str] = frozenset()
    key_required_off_default: bool = True
    auth_hint: str | None = None
    model_defaults: Mapping[str, Any] = field(default_factory=dict)
    default_model: str | None = None
    finetunable_models: tuple[str, ...] | None = None  # None: this provider cannot fine-tune
    model_card_url: str | None = None  # ``{model}`` is replaced by the model id
    kind: str = "http"
    capabilities: Capabilities = field(default_factory=Capabilities)
    upstream_param: str | None = None
    upstream_config_param: str | None = None
    upstream_capabilities: Mapping[str, Capabilities] = field(default_factory=dict)
    upstream_hiding_params: tuple[str, ...] = ()
    models_hint: str | None = None


_JSON_SCHEMA = Capabilities(json_schema=True, json_mode=True)
# OpenAI's whole API: schemas, the Batch API (/files, /batches) and image parts. A server of the same
# API may lack the Batch API (dfllm asks /batches before uploading anything, and says so clearly
# when it answers 404) or serve a text-only model (which answers each row with images a 400).
_OPENAI_API = Capabilities(json_schema=True, json_mode=True, batch_jobs=True, images=True)

PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        Provider(
            name="openai",
            base_url="https://api.openai.com/v1",
            key_env="OPENAI_API_KEY",
            key_params=("openai_api_key", "api_key"),
            capabilities=_OPENAI_API,
            finetunable_models=("gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06", "gpt-4.1-mini-2025-04-14",
                                "gpt-4.1-2025-04-14", "gpt-3.5-turbo-0125"),
        ),
        Provider(
            # vLLM, Ollama, llama.cpp's server, LM Studio...: an OpenAI-compatible server you run.
            name="openai_compatible",
            base_url=None,
            key_env=None,
            key_params=("api_key",),
            key_required=False,
            # vLLM, llama.cpp's server, Ollama and SGLang all take OpenAI's json_schema response_format;
            # Some such servers and gateways serve /v1/batches; dfllm asks before uploading.
            capabilities=_OPENAI_API,
        ),
        Provider(
            name="mindsdb_inference",
            base_url="https://llm.mdb.ai",
            key_env="MINDSDB_API_KEY",
            key_params=("mindsdb_inference_api_key", "api_key"),
        ),
        Provider(
            name="anyscale_endpoints",
            base_url="https://api.endpoints.anyscale.com/v1",
            key_env="ANYSCALE_API_KEY",
            key_params=("anyscale_endpoints_api_key", "api_key"),
            capabilities=Capabilities(json_mode=True),
            # Anyscale's list of fine-tunable models (its docs, "Fine Tuning - Supported models").
            finetunable_models=(
                "meta-llama/Llama-2-7b-chat-hf",
                "meta-llama/Llama-2-13b-chat-hf",
                "meta-llama/Llama-2-70b-chat-hf",
                "mistralai/Mistral-7B-Instruct-v0.1",
                "mistralai/Mixtral-8x7B-Instruct-v0.1",
                "meta-llama/Meta-Llama-3-8B-Instruct",
                "meta-llama/Meta-Llama-3-70B-Instruct",
            ),
            model_card_url="https://huggingface.co/{model}",
        ),
        Provider(
            name="portkey",
            base_url="https://api.portkey.ai/v1",
            key_env="PORTKEY_API_KEY",
            key_params=("portkey_api_key", "api_key"),
            auth_header="x-portkey-api-key",
            auth_prefix="",
            header_params={
                "virtual_key": "x-portkey-virtual-key",
                "provider": "x-portkey-provider",
                "config": "x-portkey-config",
                # Where the gateway forwards `provider=` requests: any OpenAI-compatible server.
                "custom_host": "x-portkey-custom-host",
            },
            # A config can hold the upstream key (its `api_key`); a virtual key stands for one.
            secret_params=frozenset({"virtual_key", "config"}),
            # The open-source gateway you run yourself checks no Portkey key.
            key_required_off_default=False,
            auth_hint=(
                "The request went through the Portkey gateway, so the refused key may be the upstream "
                "provider's (provider_api_key, the virtual_key, or the api_key inside config) rather than "
                "portkey_api_key: check each."
            ),
            # The seed's CREATE MODEL defaults: claude-2.1, 100 tokens.
            model_defaults={"max_tokens": 100},
            default_model="claude-2.1",
            upstream_param="provider",
            upstream_config_param="config",
            # The gateway passes OpenAI's response_format through to OpenAI unchanged. No Batch API:
            # the open-source gateway (1.15.2) passes uploads and jobs through but answers 500 to every
            # /files/{id}/content, so a job's answers could not be read after it was paid for
            # (tests/engines/test_portkey_gateway_batches.py).
            upstream_capabilities={"openai": _JSON_SCHEMA},
            # A virtual key stands for a provider and its key: where it routes is not visible here.
            upstream_hiding_params=("virtual_key",),
            models_hint=(
                "The open-source Portkey gateway lists models only through Portkey's hosted service, and "
                "its /v1/models fails when a provider, virtual key or config is given. List the models at "
                "the upstream provider instead (an engine created for it, e.g. dfllm.create_engine('up', "
                "'openai', api_key=...)), or give the model id directly."
            ),
        ),
        Provider(
            name="local",
            base_url=None,
            key_env=None,
            key_params=(),
            key_required=False,
            default_model="smollm2-135m",
            kind="local",
            capabilities=Capabilities(choices=True, json_schema=True, json_mode=True),
        ),
    )
}


def needs_key(provider: Provider, base_url: str | None) -> bool:
    """Whether an engine of ``provider`` at ``base_url`` must have a key (a self-hosted gateway may not)."""
    at_default = base_url is None or base_url == provider.base_url
    return provider.key_required and (provider.key_required_off_default or at_default)


def register_provider(provider: Provider, *, replace: bool = False) -> Provider:
    """Add a provider, so ``create_engine(name, provider.name, ...)`` and ``predict`` know it.

    An existing name is refused unless ``replace=True``: silently redefining ``openai`` would
    send keys somewhere else.
    """
    if not isinstance(provider, Provider):
        raise ParameterError(f"register_provider takes a dfllm.Provider, got {type(provider).__name__}.")
    if provider.kind not in KINDS:
        raise ParameterError(f"Provider {provider.name!r} has kind {provider.kind!r}; kinds: {sorted(KINDS)}.")
    if provider.name in PROVIDERS and not replace:
        raise ParameterError(f"A provider named {provider.name!r} already exists; pass replace=True to redefine it.")
    PROVIDERS[provider.name] = provider
    return provider
