"""Prompts: template parsing and rendering, and request keys (the cache identity of a request)."""
