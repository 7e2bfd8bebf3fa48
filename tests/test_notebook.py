"""The quickstart notebook runs top to bottom in a real Jupyter kernel (whose loop is running)."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("llama_cpp")

pytestmark = pytest.mark.local
NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DFLLM_CACHE_DIR", str(tmp_path))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "\n".join(
        str(out.get("text", "")) + str(out.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs
    )
    assert "Traceback" not in outputs
    assert "1 of 3 rows failed" in outputs  # the BatchError cell
    assert "Did you mean 'concurrency'?" in outputs and "'txt'" in outputs
    assert "positive" in outputs
    assert "review_stars" in outputs and "Int64" in outputs  # the typed-columns cell
