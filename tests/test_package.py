from __future__ import annotations

import dfllm


def test_all_is_complete_and_sorted() -> None:
    import types

    public = {name for name, value in vars(dfllm).items()
              if not name.startswith("_") and not isinstance(value, types.ModuleType) and name != "annotations"}
    assert sorted(dfllm.__all__) == dfllm.__all__
    assert set(dfllm.__all__) == public


def test_every_error_is_a_dfllm_error() -> None:
    for name in dfllm.__all__:
        obj = getattr(dfllm, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, dfllm.DfllmError), name


def test_py_typed_is_shipped() -> None:
    from importlib.resources import files

    assert files("dfllm").joinpath("py.typed").is_file()


def test_import_registers_ddf_llm_without_loading_distributed() -> None:
    import subprocess
    import sys

    import pytest

    pytest.importorskip("dask.dataframe")
    code = ("import sys, dfllm, dask.dataframe as dd; "
            "assert hasattr(dd.DataFrame, 'llm'), 'ddf.llm is registered'; "
            "assert 'distributed' not in sys.modules, 'distributed loads only once a client is found'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
