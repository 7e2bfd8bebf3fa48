"""The progress bar: on when asked (or interactive), off otherwise; counters in its postfix."""

from __future__ import annotations

import pandas as pd
import pytest

from dfllm.runtime.progress import interactive


def test_progress_bar_shows_rows_cache_hits_retries_and_429s(engine: str, capsys: pytest.CaptureFixture[str]) -> None:
    df = pd.DataFrame({"t": [f"r{i}" for i in range(5)]})
    df.llm.predict(engine, "m", "{{t}}", "y", progress=True)
    df.llm.predict(engine, "m", "{{t}}", "y", progress=True)
    err = capsys.readouterr().err
    assert "dfllm: 100%" in err and "5/5" in err
    assert "cached=5" in err and "retries=0" in err and "r429=0" in err


def test_no_progress_bar_when_not_interactive_or_turned_off(engine: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert not interactive()  # pytest captures stderr: not a terminal
    df = pd.DataFrame({"t": ["a", "b"]})
    df.llm.predict(engine, "m", "{{t}}", "y")
    df.llm.predict(engine, "m", "{{t}}", "y", progress=False, cache=False)
    assert capsys.readouterr().err == ""
