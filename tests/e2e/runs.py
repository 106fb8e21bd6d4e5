"""Running the workflow as a user would: snakemake in a subprocess, in its own folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from slidestock_testkit.s3server import S3Server

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Run:
    workdir: Path
    scratch: Path
    config: Path
    proc: subprocess.CompletedProcess[str]


def write_config(
    path: Path, tables: dict[str, Path], endpoint: str, top: dict[str, Any] | None = None, **cohort: object
) -> Path:
    """demo.yaml with these tables, endpoint and cohort keys; ``top`` replaces whole sections."""
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config["cohort"]["tables"] = {name: str(p) for name, p in tables.items()}
    config["cohort"].update(cohort)
    config["fetch"] = {"endpoint": endpoint, "attempts": 1}
    # Nothing may reach the real GDC: a closed loopback port unless a test serves one.
    config["gdc"] = {"api": "http://127.0.0.1:9"}
    config.update(top or {})
    # Tests about other things accept failed slides; those about the exit status say otherwise.
    config.setdefault("report", {}).setdefault("accept_failures", True)
    path.write_text(yaml.safe_dump(config))
    return path


def snakemake_argv(workdir: Path, config: Path, *extra: str) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of one snakemake run in ``workdir`` (its own TMPDIR, ``workdir/scratch``)."""
    scratch = workdir / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(workdir),
        "--configfile", str(config),
        "--cores", "2",
        *extra,
    ]  # fmt: skip
    return argv, {**os.environ, "TMPDIR": str(scratch)}


def snakemake(
    workdir: Path, config: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run snakemake in ``workdir`` as a user would; ``env`` adds to the environment."""
    argv, environ = snakemake_argv(workdir, config, *extra)
    environ.update(env or {})
    return subprocess.run(argv, capture_output=True, text=True, env=environ, timeout=600, check=False)


def run_in(
    folder: Path, tables: dict[str, Path], s3: S3Server, top: dict[str, Any] | None = None, **cohort: object
) -> Run:
    folder.mkdir(parents=True, exist_ok=True)
    config = write_config(folder / "config.yaml", tables, s3.url, top, **cohort)
    proc = snakemake(folder, config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Run(folder, folder / "scratch", config, proc)


def demo_tables(demo_build: dict[str, Path]) -> dict[str, Path]:
    return {name: demo_build[name] for name in ("index", "sm_index", "sm_instance_index")}


def wait_for(condition: Callable[[], object], timeout_s: float, what: str) -> None:
    """Until ``condition()`` holds (an event: a file, a log line), polled; fails after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
