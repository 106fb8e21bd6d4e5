"""The conda environment files: they pin what requirements.txt pins, and name every package the jobs import.

Conda channels are out of reach here. This file checks each env statically: its
pins, and that every third-party module reachable from the rule scripts comes
from a package the env lists (through envs/pypi.tsv). tests/e2e/test_envs.py
then runs the jobs in a virtualenv built from exactly those packages.
"""

from __future__ import annotations

import ast
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "workflow" / "scripts"
ENVS = sorted((REPO / "envs").glob("*.yaml"))


def pinned_requirements() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[normalise(name)] = version
    return pins


def normalise(name: str) -> str:
    return name.lower().replace("_", "-")


def conda_to_pypi() -> dict[str, str | None]:
    table = {}
    for line in (REPO / "envs" / "pypi.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            conda, pypi = line.split("\t")
            table[conda] = None if pypi == "-" else pypi
    return table


def env_pypi_packages(env: Path) -> dict[str, str]:
    """The PyPI equivalents of an env file's packages, each with the version requirements.txt pins."""
    spec = yaml.safe_load(env.read_text())
    table, pins = conda_to_pypi(), pinned_requirements()
    packages = {}
    for dep in spec["dependencies"]:
        if isinstance(dep, dict):
            for line in dep["pip"]:
                name, _, version = line.partition("==")
                assert pins[normalise(name)] == version, line
                packages[normalise(name)] = version
            continue
        name = dep.partition("=")[0].strip()
        assert name in table, f"{env.name}: {name} has no row in envs/pypi.tsv"
        pypi = table[name]
        if pypi is not None:
            packages[normalise(pypi)] = pins[normalise(pypi)]
    return packages


def module_file(name: str) -> Path | None:
    """The file of library module ``slidestock.a.b`` (a module or a package), ``None`` for a name in a module."""
    path = SCRIPTS.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_by_jobs() -> set[str]:
    """Top-level third-party modules that the rule scripts import, directly or through the library."""
    todo = [*SCRIPTS.glob("*.py")]
    for rules in (REPO / "workflow" / "rules").glob("*.smk"):
        todo += [found for line in rules.read_text().splitlines() if line.startswith("from slidestock.")
                 for found in [module_file(line.split()[1])] if found is not None]  # fmt: skip
    seen: set[Path] = set()
    third: set[str] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "slidestock":
                    module = module_file(name)
                    if module is not None:
                        todo.append(module)
                elif parts[0] not in sys.stdlib_module_names and parts[0] != "__future__":
                    third.add(parts[0])
    return third


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_env_pins_match_requirements(env: Path) -> None:
    spec = yaml.safe_load(env.read_text())
    assert spec["channels"][0] == "conda-forge"
    assert len(env_pypi_packages(env)) >= 14


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_env_names_every_package_the_jobs_import(env: Path) -> None:
    listed = set(env_pypi_packages(env))
    owners = metadata.packages_distributions()
    imported = imported_by_jobs()
    assert {"PIL", "openslide", "pydicom", "pyvips", "duckdb", "pandas"} <= imported
    missing = {
        module: owners.get(module) for module in imported if not {normalise(d) for d in owners.get(module, [])} & listed
    }
    assert not missing, f"{env.name} lacks the packages of these imports: {missing}"


def test_every_rule_uses_an_env_that_exists() -> None:
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    assert 'ENV = "../../envs/slidestock.yaml"' in common
    assert (REPO / "workflow" / "rules" / "../../envs/slidestock.yaml").resolve().is_file()
