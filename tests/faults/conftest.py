"""Fault fixtures: a misbehaving proxy in front of the S3 server, and a copy of the demo objects to break."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from slidestock_testkit.s3server import S3Server, free_port
from tests.e2e.runs import REPO


@dataclass
class Proxy:
    """The fault proxy: its URL, its rules file (re-read on every request) and its log of requests."""

    url: str
    port: int
    rules: Path
    log: Path
    upstream: str
    proc: subprocess.Popen[bytes] | None = None

    def set_rules(self, rules: list[dict[str, Any]]) -> None:
        partial = self.rules.with_suffix(".partial")
        partial.write_text(json.dumps(rules))
        os.replace(partial, self.rules)

    def start(self) -> None:
        argv = [sys.executable, "-m", "slidestock_testkit.faultproxy", "--upstream", self.upstream,
                "--port", str(self.port), "--rules", str(self.rules)]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO / "testkit")}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url, timeout=1)
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"fault proxy did not start on {self.url}")

    def kill(self) -> None:
        """SIGKILL by PID: the server dies in the middle of whatever it was sending."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def requests_for(self, fragment: str, method: str = "") -> int:
        """Requests (of ``method``, or any) whose path holds ``fragment``, logged as they arrived."""
        lines = self.log.read_text().splitlines()
        return sum(fragment in line for line in lines if line.startswith(method or ("GET ", "HEAD ")))


@pytest.fixture
def proxy(s3: S3Server, tmp_path: Path) -> Iterator[Proxy]:
    port = free_port()
    made = Proxy(f"http://127.0.0.1:{port}", port, tmp_path / "rules.json", tmp_path / "proxy.log", s3.url)
    made.set_rules([])
    made.start()
    yield made
    made.kill()


@pytest.fixture
def broken_root(demo_build: dict[str, Path], tmp_path: Path) -> Path:
    """The demo's S3 folder as hard links: a test replaces (never edits) the files it breaks."""
    root = tmp_path / "s3-broken"
    shutil.copytree(demo_build["s3_root"], root, copy_function=os.link)
    return root
