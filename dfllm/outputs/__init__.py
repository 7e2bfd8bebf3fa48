"""Outputs: one object per kind of answer (``outputs.base.Output``; the kinds in ``outputs.kinds``):
what is asked, what is keyed, how an answer is checked, repaired and written; and the schema,
label and parsing machinery behind them.

Nothing is imported here: ``config.options`` reads ``outputs.choices`` and ``outputs.schema``,
and loading the kinds (which reach the engines) from this package's init would loop back to it.
"""
