"""The fake provider in its own process, so its CPU is not the client's (benchmarks)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from typing import Any


class FakeProviderProcess:
    """``with FakeProviderProcess(latency_ms=50) as fake: fake.base_url; fake.stats()``."""

    def __init__(self, **options: Any) -> None:
        self.args = [sys.executable, "-m", "dfllm.testing"]
        for key, value in options.items():
            if value is None or value is False:
                continue
            flag = "--" + key.replace("_", "-")
            self.args += [flag] if value is True else [flag, str(value)]
        self._proc: subprocess.Popen[str] | None = None
        self.base_url = ""

    def __enter__(self) -> FakeProviderProcess:
        self._proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if not line.startswith("http://127.0.0.1:"):
            self._proc.kill()
            raise RuntimeError(f"fake provider did not start: {line!r}")
        self.base_url = line
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            if self._proc.stdout is not None:
                self._proc.stdout.close()

    def _call(self, method: str, path: str) -> Any:
        root = self.base_url.rsplit("/v1", 1)[0]
        request = urllib.request.Request(f"{root}{path}", method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.loads(resp.read())

    def stats(self) -> dict[str, Any]:
        """Requests served, statuses and peak in flight, from the server's own counters."""
        return dict(self._call("GET", "/_stats"))

    def reset(self) -> None:
        self._call("POST", "/_reset")
