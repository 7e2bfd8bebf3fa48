"""The plan stage: rows -> tasks, and results -> columns.

``make_plan`` checks a call (engine, options, model, template, target) before any request and
renders every row once: identical prompts become one unit of work with one cache key, and
``Plan.row_work`` maps each row to its work (many rows to one; a row with no request to a
negative marker). ``plan_batch`` renders a further batch with what the first plan resolved.
``write_back`` fans the answers out to their rows as typed columns of a new frame.
"""

from __future__ import annotations

from dfllm.plan.base import ALL_NULL, UNSENDABLE, Plan
from dfllm.plan.make import make_plan, plan_batch
from dfllm.plan.write import write_back

__all__ = ["ALL_NULL", "UNSENDABLE", "Plan", "make_plan", "plan_batch", "write_back"]
