"""Registers ``.llm`` on ``pandas.DataFrame`` (imported by ``import dfllm`` when pandas is installed)."""

from __future__ import annotations

import pandas as pd

from dfllm._accessor import LLMAccessor, taken_by_other

if not taken_by_other(pd.DataFrame):
    pd.api.extensions.register_dataframe_accessor("llm")(LLMAccessor)
