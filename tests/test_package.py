from __future__ import annotations

import dfllm


def test_all_is_complete_and_sorted() -> None:
    public = {name for name in vars(dfllm) if not name.startswith("_") and name not in ("annotations", "importlib")}
    modules = {"engines", "testing", "pandas", "polars"}
    assert sorted(dfllm.__all__) == dfllm.__all__
    assert set(dfllm.__all__) == public - modules


def test_every_error_is_a_dfllm_error() -> None:
    for name in dfllm.__all__:
        obj = getattr(dfllm, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, dfllm.DfllmError), name


def test_py_typed_is_shipped() -> None:
    from importlib.resources import files

    assert files("dfllm").joinpath("py.typed").is_file()
