"""An instance's header, read from its bucket with a few ranged GETs (the plan step).

idc-index publishes pixel spacings rounded to two significant figures; where
that cannot decide the level rule, and for the chosen level's exact output
size, the plan reads the instance's own header: the first few KB of the
object, more only when the header is longer (a large ICC profile, say).
Nothing past the shared functional groups is read.
"""

from __future__ import annotations

import io
import re
import urllib.request
from dataclasses import dataclass, field
from threading import Lock

import pydicom
from pydicom.filereader import read_partial

from slidestock.dicom import header_spacing_um
from slidestock.errors import FetchError, UnreachableError
from slidestock.fetch import endpoint_url, source_url
from slidestock.gdcapi import retrying

# Growing prefix sizes: most WSI headers fit in the first; one with a large ICC profile in a later one.
PREFIX_BYTES = (8 << 10, 64 << 10, 1 << 20, 8 << 20)
SHARED_GROUPS = 0x52009229
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def http_url(url: str, endpoint: str) -> str:
    """The anonymous HTTPS address of ``s3://bucket/key`` at the endpoint (path style for custom endpoints)."""
    bucket, _, key = source_url(url, endpoint).removeprefix("s3://").partition("/")
    custom = endpoint_url(endpoint)
    if custom is None:
        return f"https://{bucket}.s3.amazonaws.com/{key}"
    return f"{custom.rstrip('/')}/{bucket}/{key}"


@dataclass
class HeaderReader:
    """Reads instance headers over HTTP with retries; counts the bytes and requests, for the record."""

    endpoint: str
    attempts: int = 3
    backoff_s: float = 1.0
    timeout_s: float = 30.0
    bytes_fetched: int = 0
    requests: int = 0
    _lock: Lock = field(default_factory=Lock, repr=False)

    def prefix(self, url: str, length: int) -> bytes:
        """The first ``length`` bytes of the object (fewer if it is shorter).

        When every attempt fails for the network's sake, :class:`UnreachableError`: the same for every slide.
        """
        address = http_url(url, self.endpoint)
        what = f"header of {address}"
        return retrying(what, lambda: self._get(address, length), self.attempts, self.backoff_s, UnreachableError)

    def check_reachable(self, url: str) -> None:
        """Raise :class:`UnreachableError` when ``url``'s bucket cannot be reached at all; touch no object.

        Any HTTP answer (a listing, a 403, a 503) means the server is there.
        """
        key = url.removeprefix("s3://").partition("/")[2]
        root = http_url(url, self.endpoint).removesuffix(key) + "?max-keys=0"

        def ask() -> None:
            request = urllib.request.Request(root, headers={"User-Agent": "slidestock"})
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                answer.read(1 << 16)

        try:
            retrying(f"bucket {root}", ask, self.attempts, self.backoff_s, UnreachableError)
        except UnreachableError:
            raise
        except FetchError:
            pass

    def _get(self, address: str, length: int) -> bytes:
        headers = {"Range": f"bytes=0-{length - 1}", "User-Agent": "slidestock"}
        with urllib.request.urlopen(urllib.request.Request(address, headers=headers), timeout=self.timeout_s) as answer:
            # 206, or 200 with a Content-Range (rclone's S3 answers so): the range asked for.
            match = _CONTENT_RANGE.match(answer.headers.get("Content-Range", ""))
            if match and int(match.group(1)) != 0:
                raise ConnectionError(f"Content-Range {answer.headers['Content-Range']!r} for bytes 0-{length - 1}")
            # A server that ignores Range sends the whole object: read only what was asked for.
            body: bytes = answer.read(length)
        with self._lock:
            self.bytes_fetched += len(body)
            self.requests += 1
        return body

    def read(self, url: str) -> tuple[pydicom.Dataset | None, int]:
        """The instance's header up to the shared functional groups (``None`` for an object that holds none),
        and the bytes read for it.

        Reads growing prefixes until the header is complete.
        """
        fetched = 0
        for length in PREFIX_BYTES:
            data = self.prefix(url, length)
            fetched += len(data)
            parsed = parse_prefix(data)
            if parsed is not None or len(data) < length:
                return parsed, fetched
        raise FetchError(f"{url}: no complete header in the first {PREFIX_BYTES[-1]} bytes; expected DICOM WSI")

    def dataset(self, url: str) -> pydicom.Dataset | None:
        """The instance's header (see :meth:`read`)."""
        return self.read(url)[0]

    def spacing_xy_um(self, url: str) -> tuple[float, float] | None:
        """The header's (column, row) spacing in µm, ``None`` when the header has none."""
        parsed = self.dataset(url)
        return None if parsed is None else header_spacing_um(parsed)


def parse_prefix(data: bytes) -> pydicom.Dataset | None:
    """The header in ``data`` up to the shared functional groups, or ``None`` when ``data`` ends before them.

    pydicom stops quietly at the end of the bytes, so a complete header is one
    whose parse stopped at an element past the shared functional groups.
    """
    stream = io.BytesIO(data)
    try:
        ds = read_partial(stream, stop_when=lambda tag, vr, length: tag > SHARED_GROUPS)
    except (pydicom.errors.InvalidDicomError, EOFError, ValueError, OSError):
        return None
    return ds if stream.tell() < len(data) else None
