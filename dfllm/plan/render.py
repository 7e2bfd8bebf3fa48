"""Rows -> work: each row rendered once, identical prompts sharing one unit of work (sent once)."""

from __future__ import annotations

from dfllm.plan.base import ALL_NULL, UNSENDABLE, Plan
from dfllm.prompt.keys import RequestKeys
from dfllm.prompt.template import Template, UnsendableRow
from dfllm.runtime.executor import Work


def render_rows(plan: Plan, template: Template, keys: RequestKeys) -> None:
    """Fill ``plan.work`` (unique prompts with their keys) and ``plan.row_work`` (row -> work)."""
    df, adapter = plan.df, plan.adapter
    columns = {f: adapter.column_values(df, f) for f in template.fields}
    seen: dict[str, int] = {}
    row_work, work = plan.row_work, plan.work
    key, append = keys.key, row_work.append
    for prompt in template.render_columns(columns, adapter.n_rows(df)):
        if prompt is None:
            index = ALL_NULL
        elif isinstance(prompt, UnsendableRow):
            plan.unsendable[len(row_work)] = prompt.problem
            index = UNSENDABLE
        else:
            index = seen.setdefault(prompt, len(work))  # one dict operation, whether seen or new
            if index == len(work):
                work.append(Work(key(prompt), prompt))
        append(index)
