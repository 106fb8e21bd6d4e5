"""The GDC path: TCGA SVS files read with HTTP Range requests, or downloaded whole.

``{api}/data/{file_id}`` serves the file (with Range support), ``{api}/files/{file_id}``
its metadata. A token for controlled-access data is sent as ``X-Auth-Token``
and never logged or recorded.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from slidestock.errors import FetchError, MissingObjectError

log = logging.getLogger(__name__)
T = TypeVar("T")

BLOCK_BYTES = 16 * 1024
# Tiles closer than this are fetched in one request: a few wasted bytes beat a round trip.
COALESCE_GAP_BYTES = 16 * 1024
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_TRANSIENT = (500, 502, 503, 504, 429)


class RangeNotSupportedError(FetchError):
    """The server answered a Range request with the whole file."""


def retrying(
    what: str, action: Callable[[], T], attempts: int, backoff_s: float, exhausted: type[FetchError] = FetchError
) -> T:
    """``action()``, tried ``attempts`` times with exponential backoff on network errors and 5xx/429.

    Other HTTP errors (404, 403) fail at once. When every attempt failed to
    connect at all (refused, name resolution, connect timeout), ``exhausted``
    says the last reason; any other last failure is a :class:`FetchError`.
    """
    last = ""
    never_connected = True
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except urllib.error.HTTPError as err:
            if err.code in (404, 410):
                raise MissingObjectError(f"{what}: HTTP {err.code} {err.reason}: the server has no such file") from None
            if err.code not in _TRANSIENT:
                raise FetchError(f"{what}: HTTP {err.code} {err.reason}") from None
            last, never_connected = f"HTTP {err.code}", False
        except urllib.error.URLError as err:  # raised before a connection was made
            last = f"{type(err).__name__}: {err.reason}"
        except (ConnectionError, TimeoutError, OSError) as err:
            last, never_connected = f"{type(err).__name__}: {err}", False
        log.warning("%s: attempt %d/%d failed: %s", what, attempt, attempts, last)
        if attempt < attempts:
            time.sleep(backoff_s * 2 ** (attempt - 1))
    tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
    raise (exhausted if never_connected else FetchError)(f"{what}: {tries} failed; last: {last}")


@dataclass
class GdcClient:
    """HTTP access to one GDC-like API, with retries and a byte count."""

    api: str
    token: str | None = field(default=None, repr=False)
    attempts: int = 4
    backoff_s: float = 1.0
    timeout_s: float = 60.0
    # The file's own bytes (ranges, downloads); the API's answers about it are counted apart.
    bytes_fetched: int = 0
    api_bytes: int = 0
    requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"User-Agent": "slidestock"}
        if self.token:
            headers["X-Auth-Token"] = self.token
        return {**headers, **(extra or {})}

    def _count(self, n_bytes: int, api: bool = False) -> None:
        with self._lock:
            if api:
                self.api_bytes += n_bytes
            else:
                self.bytes_fetched += n_bytes
            self.requests += 1

    def _retrying(self, what: str, action: Callable[[], T]) -> T:
        return retrying(what, action, self.attempts, self.backoff_s)

    def metadata(self, file_id: str) -> dict[str, Any]:
        """``file_name``, ``file_size``, ``md5sum`` of a file, from ``/files/{id}``."""
        url = f"{self.api.rstrip('/')}/files/{file_id}?fields=file_name,file_size,md5sum,data_format"

        def get() -> dict[str, Any]:
            request = urllib.request.Request(url, headers=self._headers())
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                body = answer.read()
            self._count(len(body), api=True)
            data = json.loads(body).get("data", {})
            if not isinstance(data, dict) or "file_size" not in data:
                raise FetchError(f"/files/{file_id}: no file_size in the answer")
            return data

        result: dict[str, Any] = self._retrying(f"metadata of {file_id}", get)
        return result

    def read_range(self, file_id: str, start: int, length: int) -> bytes:
        """Bytes ``start`` to ``start + length - 1`` of a file (one Range request)."""
        url = f"{self.api.rstrip('/')}/data/{file_id}"
        end = start + length - 1

        def get() -> bytes:
            request = urllib.request.Request(url, headers=self._headers({"Range": f"bytes={start}-{end}"}))
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                if answer.status != 206:
                    raise RangeNotSupportedError(f"{file_id}: the server answered a Range request with {answer.status}")
                match = _CONTENT_RANGE.match(answer.headers.get("Content-Range", ""))
                if not match or int(match.group(1)) != start:
                    raise FetchError(
                        f"{file_id}: Content-Range {answer.headers.get('Content-Range')!r} for {start}-{end}"
                    )
                body: bytes = answer.read()
            if len(body) != min(length, int(match.group(2)) - start + 1):
                raise ConnectionError(f"short body: {len(body)} of {length} bytes")
            self._count(len(body))
            return body

        result: bytes = self._retrying(f"{file_id} bytes {start}-{end}", get)
        return result

    def download(self, file_id: str, dest: Path, size_bytes: int, md5: str) -> int:
        """The whole file into ``dest``, resuming from what is there after a dropped connection.

        The result is checked against the manifest's size and md5; a mismatch
        deletes it.
        """
        url = f"{self.api.rstrip('/')}/data/{file_id}"
        dest.parent.mkdir(parents=True, exist_ok=True)

        def get() -> None:
            have = dest.stat().st_size if dest.exists() else 0
            if have >= size_bytes:
                return
            headers = self._headers({"Range": f"bytes={have}-"} if have else None)
            request = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                mode = "ab" if have and answer.status == 206 else "wb"
                with dest.open(mode) as out:
                    while chunk := answer.read(1 << 20):
                        out.write(chunk)
                        self._count(len(chunk))
            if dest.stat().st_size < size_bytes:
                raise ConnectionError(f"stream ended at {dest.stat().st_size} of {size_bytes} bytes")

        self._retrying(f"download of {file_id}", get)
        actual = dest.stat().st_size
        if actual != size_bytes:
            dest.unlink(missing_ok=True)
            raise FetchError(f"{file_id}: downloaded {actual} bytes; expected {size_bytes} (manifest size)")
        digest = md5_file(dest)
        if digest != md5:
            dest.unlink(missing_ok=True)
            raise FetchError(f"{file_id}: md5 {digest}; expected {md5} (manifest md5)")
        return actual


def md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class BlockCache:
    """Reads through aligned blocks, so many small directory reads become few requests."""

    def __init__(self, client: GdcClient, file_id: str, size_bytes: int, block_bytes: int = BLOCK_BYTES) -> None:
        self.client = client
        self.file_id = file_id
        self.size_bytes = size_bytes
        self.block_bytes = block_bytes
        self.blocks: dict[int, bytes] = {}

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset + length > self.size_bytes:
            raise FetchError(f"{self.file_id}: read of {length} bytes at {offset} is past the end ({self.size_bytes})")
        first, last = offset // self.block_bytes, (offset + length - 1) // self.block_bytes
        missing = [b for b in range(first, last + 1) if b not in self.blocks]
        if missing:
            start = missing[0] * self.block_bytes
            end = min((missing[-1] + 1) * self.block_bytes, self.size_bytes)
            data = self.client.read_range(self.file_id, start, end - start)
            for b in range(missing[0], missing[-1] + 1):
                lo = b * self.block_bytes - start
                self.blocks[b] = data[lo : lo + self.block_bytes]
        return self.cached(offset, length) or b""

    def cached(self, offset: int, length: int) -> bytes | None:
        """The bytes of a range that the blocks read already hold whole, else None (nothing is fetched)."""
        first, last = offset // self.block_bytes, (offset + length - 1) // self.block_bytes
        if length <= 0 or any(b not in self.blocks for b in range(first, last + 1)):
            return None
        joined = b"".join(self.blocks[b] for b in range(first, last + 1))
        skip = offset - first * self.block_bytes
        return joined[skip : skip + length]

    def fetch(self, ranges: Sequence[tuple[int, int]], parallel: int = 4) -> list[bytes]:
        """The bytes of each range: from the blocks read already where they hold it, the rest by Range requests
        (coalesced, several in flight). No byte the cache holds is fetched again."""
        held = [self.cached(offset, length) for offset, length in ranges]
        wanted = [r for r, data in zip(ranges, held, strict=True) if data is None]
        fetched = iter(fetch_ranges(self.client, self.file_id, wanted, parallel) if wanted else [])
        return [data if data is not None else next(fetched) for data in held]


def coalesce(ranges: Sequence[tuple[int, int]], gap_bytes: int = COALESCE_GAP_BYTES) -> list[tuple[int, int]]:
    """Merge (offset, length) ranges whose gap is at most ``gap_bytes``; sorted by offset."""
    merged: list[tuple[int, int]] = []
    for offset, length in sorted(r for r in ranges if r[1] > 0):
        if merged and offset - (merged[-1][0] + merged[-1][1]) <= gap_bytes:
            start = merged[-1][0]
            merged[-1] = (start, max(merged[-1][0] + merged[-1][1], offset + length) - start)
        else:
            merged.append((offset, length))
    return merged


def fetch_ranges(client: GdcClient, file_id: str, ranges: Sequence[tuple[int, int]], parallel: int = 4) -> list[bytes]:
    """The bytes of each (offset, length) range, fetched as coalesced requests, several in flight."""
    groups = coalesce(ranges)
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        bodies = list(pool.map(lambda g: client.read_range(file_id, g[0], g[1]), groups))
    starts = [g[0] for g in groups]
    out = []
    for offset, length in ranges:
        if length == 0:
            out.append(b"")
            continue
        i = bisect.bisect_right(starts, offset) - 1
        lo = offset - starts[i]
        out.append(bodies[i][lo : lo + length])
    return out
