"""Engines: the ``Engine`` protocol, providers as data, and the concrete engines."""

from dfllm.engines.base import Completion, Engine, RateLimitState, Request
from dfllm.engines.providers import PROVIDERS, Provider

__all__ = ["PROVIDERS", "Completion", "Engine", "Provider", "RateLimitState", "Request"]
