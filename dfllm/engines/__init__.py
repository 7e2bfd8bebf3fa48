"""Engines: the ``Engine`` protocol, providers as data, and the concrete engines."""

from dfllm.engines._base import Completion, Engine, RateLimitState, Request
from dfllm.engines._providers import PROVIDERS, Provider

__all__ = ["PROVIDERS", "Completion", "Engine", "Provider", "RateLimitState", "Request"]
