"""The tree reads as the flow: no module imports a stage above its own (imports inside functions count)."""

from __future__ import annotations

import ast
from pathlib import Path

import dfllm

# Lower stages first; a module may import its own stage and those before it.
STAGES = ["_exceptions", "config", "frames", "prompt", "outputs", "engines", "runtime", "plan", "drive"]
# The order within the lower stages is theirs to keep; what this guards is that none reaches plan or drive.
ABOVE = {"plan": ("drive",), **{stage: ("plan", "drive") for stage in STAGES[:-2]}}


def imported_stages(path: Path) -> set[str]:
    """The dfllm stages ``path`` imports, by the first part of each imported ``dfllm.`` module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found |= {name.split(".")[1] for name in names if name.startswith("dfllm.")}
    return found


def reaching_up(root: Path) -> list[str]:
    problems = []
    for stage, above in ABOVE.items():
        paths = sorted((root / stage).rglob("*.py")) if (root / stage).is_dir() else [root / f"{stage}.py"]
        for path in (p for p in paths if p.is_file()):
            problems += [f"{path.relative_to(root)} imports dfllm.{up}"
                         for up in sorted(imported_stages(path) & set(above))]
    return sorted(problems)


def test_no_stage_imports_a_later_stage() -> None:
    assert reaching_up(Path(dfllm.__file__).parent) == []


def test_a_lower_stage_importing_a_driver_is_found(tmp_path: Path) -> None:
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "accessor.py").write_text("def f():\n    from dfllm.drive.eager import predict\n")
    (tmp_path / "plan").mkdir()
    (tmp_path / "plan" / "make.py").write_text("from dfllm import drive\nimport dfllm.plan.base\n")
    assert reaching_up(tmp_path) == ["frames/accessor.py imports dfllm.drive", "plan/make.py imports dfllm.drive"]
