"""Rows -> work: each row rendered once, identical prompts sharing one unit of work (sent once)."""

from __future__ import annotations

from collections.abc import Callable

from dfllm.plan.base import ALL_NULL, UNSENDABLE, Plan
from dfllm.prompt.images import ImageTable
from dfllm.prompt.keys import Key, RequestKeys
from dfllm.prompt.template import Template, UnsendableRow


def render_rows(plan: Plan, template: Template, keys: RequestKeys) -> None:
    """Fill ``plan.work`` (unique prompts with their keys) and ``plan.row_work`` (row -> work)."""
    df, adapter = plan.df, plan.adapter
    columns = {f: adapter.column_values(df, f) for f in template.fields}
    seen: dict[str, int] = {}
    row_work, work = plan.row_work, plan.work
    assert not work, "a plan's rows are rendered once"
    key, add, append = keys.key, work.append, row_work.append
    images = plan.spec.images
    key_of: Callable[[str], Key] = key if images is None else _keyed_by_images(keys, images)
    for prompt in template.render_columns(columns, adapter.n_rows(df), images):
        if prompt is None:
            index = ALL_NULL
        elif isinstance(prompt, UnsendableRow):
            plan.unsendable[len(row_work)] = prompt.problem
            index = UNSENDABLE
        else:
            new = len(seen)  # the work's length: every unique prompt is in seen
            index = seen.setdefault(prompt, new)  # one dict operation, whether seen or new
            if index == new:
                add(key_of(prompt), prompt)
        append(index)


def _keyed_by_images(keys: RequestKeys, images: ImageTable) -> Callable[[str], Key]:
    """The key of a prompt with images: each image named by its digest, not by this plan's markers
    (drawn anew for each plan), so that a key is the same from one run to the next."""
    return lambda prompt: keys.key(images.keyed(prompt))
