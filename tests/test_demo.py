"""The demo: ``python -m dfllm.demo`` runs offline on the bundled model."""

from __future__ import annotations

import pytest


@pytest.mark.local
def test_the_demo_runs_offline_on_the_bundled_model() -> None:
    import subprocess
    import sys

    pytest.importorskip("llama_cpp")
    done = subprocess.run([sys.executable, "-m", "dfllm.demo"], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "8 rows in" in done.stdout and "on the local engine" in done.stdout
    labels = {line.split()[-1] for line in done.stdout.splitlines()[1:9]}
    assert labels <= {"positive", "neutral", "negative"}

