"""The conda env runs the workflow: its jobs in a virtualenv built from exactly the env file's packages.

No conda channel is reachable here, so the env is built from the packages'
PyPI equivalents (envs/pypi.tsv), each at the version requirements.txt pins,
with their own dependencies as conda would resolve them. Snakemake sits beside
it as it does for a conda job: its folder appended to the job's sys.path (here
through a .pth file), after the env's own packages. The demo then runs with
that interpreter, and every slide must come out as it does from the dev install.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import venv
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from slidestock_testkit import faultproxy
from slidestock_testkit.s3server import S3Server
from tests.e2e.runs import REPO, demo_tables, run_in, write_config
from tests.unit.test_envs import ENVS, env_pypi_packages, pinned_requirements

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
CACHE = REPO / ".cache" / "envs"


def build_env(env: Path) -> Path:
    """The env's virtualenv (cached by the env file and the pins); returns its python."""
    packages = env_pypi_packages(env)
    key = hashlib.sha256(env.read_bytes() + (REPO / "requirements.txt").read_bytes()).hexdigest()[:16]
    root = CACHE / f"{env.stem}-{key}"
    python = root / "bin" / "python"
    if (root / ".complete").exists():
        return python
    venv.create(root, with_pip=True, clear=True)
    pins = [f"{name}=={version}" for name, version in sorted(packages.items())]
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-c", str(REPO / "requirements.txt"), *pins], check=True, timeout=1200)
    # Snakemake and what it needs, in a folder of their own, appended to the env's sys.path.
    beside = root / "snakemake-only"
    snakemake = f"snakemake=={pinned_requirements()['snakemake']}"
    subprocess.run([*pip, "--target", str(beside), "-c", str(REPO / "requirements.txt"), snakemake], check=True,
                   timeout=1200)  # fmt: skip
    site = next((root / "lib").glob("python3*/site-packages"))
    (site / "snakemake-beside.pth").write_text(f"{beside}\n")
    (root / ".complete").write_text("\n".join(pins) + "\n")
    return python


def build_runtime_venv() -> Path:
    """A virtualenv of requirements.txt alone, as `make demo` makes it (cached by the file); returns its python."""
    key = hashlib.sha256((REPO / "requirements.txt").read_bytes()).hexdigest()[:16]
    root = CACHE / f"requirements-{key}"
    python = root / "bin" / "python"
    if not (root / ".complete").exists():
        venv.create(root, with_pip=True, clear=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "-r", str(REPO / "requirements.txt")], check=True, timeout=1200)
        (root / ".complete").write_text("requirements.txt\n")
    return python


def run_with(python: Path, folder: Path, config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    scratch = folder / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    argv = [str(python), "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(folder),
            "--configfile", str(config), "--cores", "2", *extra]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(argv, capture_output=True, text=True, env={**env, "TMPDIR": str(scratch)}, timeout=900)


def digests(folder: Path) -> dict[str, str | None]:
    found = {}
    for path in sorted((folder / "results/slides").glob("*.json")):
        record = json.loads(path.read_text())
        found[record["slide_id"]] = (record["output"] or {}).get("sha256")
    return found


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_jobs_run_in_the_env(env: Path, tmp_path: Path, demo_build: dict[str, Path], s3: S3Server) -> None:
    python = build_env(env)
    probe = subprocess.run([str(python), "-c", "import sys, pytest"], capture_output=True, text=True, check=False)
    assert probe.returncode != 0  # the dev tools are not in it: only what the env lists
    folder = tmp_path / "in-env"
    folder.mkdir()
    # Patches on too (their jobs import obstore): through the proxy, which answers ranged GETs 206.
    with faultproxy.serving(s3.url, tmp_path / "proxy.log") as url:
        server = S3Server(url, s3.pid)
        top = {"patches": {"enabled": True, "n_per_slide": 3}}
        config = write_config(folder / "config.yaml", demo_tables(demo_build), url, top)
        proc = run_with(python, folder, config)
        assert proc.returncode == 0, proc.stderr[-3000:]
        reference = run_in(tmp_path / "dev", demo_tables(demo_build), server, top)
    ours, theirs = digests(folder), digests(reference.workdir)
    assert len(ours) == 6
    assert all(ours.values())
    assert ours == theirs
    patches = [pd.read_parquet(run / "results/patches/patches.parquet") for run in (folder, reference.workdir)]
    assert len(patches[0]) == 6 * 3
    assert patches[0]["sha256"].tolist() == patches[1]["sha256"].tolist()
    # Snakemake's own report, from this env alone (it needs pygments, which no job imports).
    assert_report_zip(run_with(python, folder, config, "--report", "report.zip"), folder / "report.zip")


def assert_report_zip(proc: subprocess.CompletedProcess[str], archive: Path) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]
    with zipfile.ZipFile(archive) as packed:
        names = {Path(name).name for name in packed.namelist()}
    assert {"slides.csv", "cohort.tsv", "contact_sheet.png", "bytes.svg"} <= names


def test_report_zip_from_the_runtime_requirements_alone(
    tmp_path: Path, demo_build: dict[str, Path], s3: S3Server
) -> None:
    """Observed: `snakemake --report report.zip`, documented in README, failed from `make demo`'s install:
    `Python package pygments must be installed` (it was only in requirements-dev.txt)."""
    python = build_runtime_venv()
    probe = subprocess.run([str(python), "-c", "import pytest"], capture_output=True, text=True, check=False)
    assert probe.returncode != 0  # no dev tools: what `make demo` installs, nothing more
    run = run_in(tmp_path, demo_tables(demo_build), s3)
    assert_report_zip(run_with(python, run.workdir, run.config, "--report", "report.zip"), run.workdir / "report.zip")
