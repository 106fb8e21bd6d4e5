"""The conda environment files: they parse, and pin what requirements.txt pins.

Conda channels are out of reach here, so the env files are checked
statically; the pip install from requirements.txt is what runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
# conda-forge names that differ from the PyPI distribution pinned in requirements.txt
CONDA_TO_PYPI = {"python-duckdb": "duckdb"}
NOT_ON_PYPI = {"python", "pip", "libvips", "s5cmd"}


def pinned_requirements() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


@pytest.mark.parametrize("env", sorted((REPO / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_env_pins_match_requirements(env: Path) -> None:
    spec = yaml.safe_load(env.read_text())
    assert spec["channels"][0] == "conda-forge"
    pins = pinned_requirements()
    checked = 0
    for dep in spec["dependencies"]:
        if isinstance(dep, dict):
            for line in dep["pip"]:
                name, _, version = line.partition("==")
                assert pins[name] == version, line
                checked += 1
            continue
        name, _, version = (part.strip() for part in dep.partition("="))
        if name in NOT_ON_PYPI:
            continue
        assert pins[CONDA_TO_PYPI.get(name, name)] == version, dep
        checked += 1
    assert checked >= 8


def test_every_rule_uses_an_env_that_exists() -> None:
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    assert 'ENV = "../../envs/slidestock.yaml"' in common
    assert (REPO / "workflow" / "rules" / "../../envs/slidestock.yaml").resolve().is_file()
