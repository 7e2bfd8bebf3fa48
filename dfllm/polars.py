"""Registers ``.llm`` on ``polars.DataFrame`` (imported by ``import dfllm`` when polars is installed)."""

from __future__ import annotations

import polars as pl

from dfllm._accessor import LLMAccessor, taken_by_other

if not taken_by_other(pl.DataFrame):
    pl.api.register_dataframe_namespace("llm")(LLMAccessor)
