"""The GDC path: TCGA SVS files read with HTTP Range requests, or downloaded whole.

``{api}/data/{file_id}`` serves the file (with Range support), ``{api}/files/{file_id}``
its metadata. A token for controlled-access data is sent as ``X-Auth-Token``
and never logged or recorded.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from slidestock.errors import FetchError
from slidestock.provenance import md5_file
from slidestock.read.ranges import Client, Fetched, Range, fan_out, http_range

log = logging.getLogger(__name__)
T = TypeVar("T")

BLOCK_BYTES = 16 * 1024
# Tiles closer than this are fetched in one request: a few wasted bytes beat a round trip.
COALESCE_GAP_BYTES = 16 * 1024


@dataclass
class GdcClient(Client):
    """HTTP access to one GDC-like API, with retries and a byte count: ``bytes_fetched`` the file's own bytes
    (ranges, downloads), ``api_bytes`` the API's answers about it."""

    api: str
    token: str | None = field(default=None, repr=False)
    attempts: int = field(default=4, kw_only=True)
    api_bytes: int = field(default=0, kw_only=True)

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"User-Agent": "slidestock"}
        if self.token:
            headers["X-Auth-Token"] = self.token
        return {**headers, **(extra or {})}

    def _retrying(self, what: str, action: Callable[[], T]) -> T:
        return self.retry.run(what, action)

    def metadata(self, file_id: str) -> dict[str, Any]:
        """``file_name``, ``file_size``, ``md5sum`` of a file, from ``/files/{id}``."""
        url = f"{self.api.rstrip('/')}/files/{file_id}?fields=file_name,file_size,md5sum,data_format"

        def get() -> dict[str, Any]:
            request = urllib.request.Request(url, headers=self._headers())
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                body = answer.read()
            self.count(0)
            with self._lock:
                self.api_bytes += len(body)
            data = json.loads(body).get("data", {})
            if not isinstance(data, dict) or "file_size" not in data:
                raise FetchError(f"/files/{file_id}: no file_size in the answer")
            return data

        result: dict[str, Any] = self._retrying(f"metadata of {file_id}", get)
        return result

    def read_range(self, file_id: str, start: int, length: int) -> bytes:
        """Bytes ``start`` to ``start + length - 1`` of a file (one Range request); a server that sends the whole
        file instead raises :class:`slidestock.errors.RangeNotSupportedError`."""
        url = f"{self.api.rstrip('/')}/data/{file_id}"

        def get() -> bytes:
            body, arrived = http_range(url, start, length, self._headers(), self.timeout_s)
            self.count(arrived)
            return body

        result: bytes = self._retrying(f"{file_id} bytes {start}-{start + length - 1}", get)
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
                self.count(0)
                mode = "ab" if have and answer.status == 206 else "wb"
                with dest.open(mode) as out:
                    while chunk := answer.read(1 << 20):
                        out.write(chunk)
                        self.count(len(chunk), requests=0)
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

    def fetch(self, ranges: Sequence[Range], parallel: int = 4) -> list[bytes]:
        """The bytes of each range: from the blocks read already where they hold it, the rest by Range requests
        (within :data:`COALESCE_GAP_BYTES` of each other merged, several in flight). No byte the cache holds is
        fetched again."""
        held = [self.cached(offset, length) for offset, length in ranges]
        wanted = [r for r, data in zip(ranges, held, strict=True) if data is None]
        fetched = fetch_ranges(self.client, self.file_id, wanted, parallel).bodies if wanted else {}
        return [data if data is not None else fetched[r] for r, data in zip(ranges, held, strict=True)]


def fetch_ranges(client: GdcClient, file_id: str, ranges: Sequence[Range], parallel: int = 4) -> Fetched:
    """The bytes of each (offset, length) range of a GDC file (see :func:`slidestock.read.ranges.fan_out`)."""
    return fan_out(
        lambda offset, length: client.read_range(file_id, offset, length), ranges, COALESCE_GAP_BYTES, parallel
    )
