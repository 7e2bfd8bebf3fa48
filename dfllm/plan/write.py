"""Results -> columns: each answer fanned out to its rows, as typed columns of a new frame."""

from __future__ import annotations

from typing import Any

from dfllm._exceptions import BatchError, DfllmError, TemplateError
from dfllm.engines.base import USAGE_FIELDS, Completion
from dfllm.frames import Column, ColumnType
from dfllm.plan.base import ALL_NULL, UNSENDABLE, Plan
from dfllm.runtime.executor import Outcome
from dfllm.runtime.progress import RunStats


def write_back(plan: Plan, outcomes: list[Outcome], stats: RunStats) -> Any:
    """The result frame; raises ``BatchError`` (holding it) when rows failed and errors='raise'."""
    options, target = plan.options, plan.target
    answers, row_errors = _row_answers(plan, outcomes)
    stats.failed_rows = len(row_errors)
    for exc in row_errors.values():
        stats.errors[type(exc).__name__] = stats.errors.get(type(exc).__name__, 0) + 1
    columns = plan.output.write(target, answers)
    if options.usage_columns:
        for name in USAGE_FIELDS:
            columns[f"{target}_{name}"] = Column([
                getattr(outcomes[i], name) if i >= 0 and isinstance(outcomes[i], Completion) else None
                for i in plan.row_work
            ], ColumnType("int"))
    if options.errors == "null":
        error_texts: list[str | None] = [None] * len(plan.row_work)
        for row, exc in row_errors.items():
            error_texts[row] = f"{type(exc).__name__}: {exc}"
        columns[f"{target}_error"] = Column(error_texts)
    frame = plan.adapter.with_columns(plan.df, columns)
    if row_errors and options.errors == "raise":
        raise BatchError(frame, row_errors, len(plan.row_work), stats=stats)
    return frame


def _row_answers(plan: Plan, outcomes: list[Outcome]) -> tuple[list[Any], dict[int, BaseException]]:
    """Each row's value (None where it has none) and each failed row's error."""
    value = plan.output.value
    answers_by_work: list[Any] = []
    failed: dict[int, DfllmError] = {}  # work index -> its error
    for index, outcome in enumerate(outcomes):
        answer, error = value(outcome) if isinstance(outcome, Completion) else (None, outcome)
        answers_by_work.append(answer)
        if error is not None:
            failed[index] = error
    # The row markers are negative, so they index the Nones appended here: rows without an answer.
    answers_by_work += [None] * -min(ALL_NULL, UNSENDABLE)
    answers = [answers_by_work[index] for index in plan.row_work]
    row_errors: dict[int, BaseException] = {}
    if failed or plan.unsendable:  # else no row failed: no pass over the rows for errors
        for row, index in enumerate(plan.row_work):
            if index == UNSENDABLE:
                row_errors[row] = TemplateError(plan.unsendable[row])
            elif index in failed:
                row_errors[row] = failed[index]
    return answers, row_errors
