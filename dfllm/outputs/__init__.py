"""Outputs: one object per kind of answer (what is asked, what is keyed, how an answer is checked,
repaired and written), and the schema, label and parsing machinery behind them."""

from dfllm.outputs.base import Asked, Output
from dfllm.outputs.kinds import ChoicesOutput, SchemaOutput, TextOutput, output_for

__all__ = ["Asked", "ChoicesOutput", "Output", "SchemaOutput", "TextOutput", "output_for"]
