"""The benchmark scripts are not run by the tests (they time things); what they import from the library must exist."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[2] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda path: path.name)
def test_every_name_a_benchmark_imports_from_the_library_exists(script: Path) -> None:
    imports = [
        node
        for node in ast.walk(ast.parse(script.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("slidestock", "scale"))
    ]
    assert imports, f"{script.name} imports nothing from slidestock"
    for node in imports:
        if node.module == "scale":
            continue  # a sibling benchmark, checked on its own
        module = importlib.import_module(str(node.module))
        missing = [alias.name for alias in node.names if not hasattr(module, alias.name)]
        assert not missing, f"{script.name}: {node.module} has no {', '.join(missing)}"
