"""Byte ranges of a remote object, whoever serves them: the one way each is merged, fanned out, retried and read.

Every ranged read in slidestock (IDC frames with obstore, GDC tiles and the
instance headers over HTTP) goes through these: :func:`merge` joins ranges
that lie within a gap, :func:`fan_out` fetches the merged ranges several at
a time and hands each range its bytes, :class:`Retry` tries again what may
pass, :func:`http_range` sends one ranged GET and accepts what servers answer
(206, or 200 with the range's Content-Range, or, for a prefix, the whole
object), and :func:`read_header` reads a DICOM header as growing prefixes,
fetching each byte once.
"""

from __future__ import annotations

import bisect
import io
import logging
import re
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import pydicom
from pydicom.filereader import read_partial

from slidestock.errors import FetchError, MissingObjectError, RangeNotSupportedError

log = logging.getLogger(__name__)
T = TypeVar("T")
Range = tuple[int, int]  # (offset, length)

# HTTP answers that may pass on another try; any other error status fails at once.
TRANSIENT_STATUS = (500, 502, 503, 504, 429)
MAX_BACKOFF_S = 15.0
CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class Retry:
    """How requests that may pass are tried again: ``attempts`` in all, the waits doubling from ``backoff_s``
    (at most :data:`MAX_BACKOFF_S`), each request given ``timeout_s``. obstore's clients are configured from it."""

    attempts: int = 3
    backoff_s: float = 1.0
    timeout_s: float = 60.0

    def run(self, what: str, action: Callable[[], T], exhausted: type[FetchError] = FetchError) -> T:
        """``action()``, tried again on network errors and 5xx/429; other HTTP errors (404, 403) fail at once.

        When every attempt failed to connect at all (refused, name resolution,
        connect timeout), ``exhausted`` says the last reason; any other last
        failure is a :class:`FetchError`.
        """
        last, never_connected = "", True
        for attempt in range(1, self.attempts + 1):
            try:
                return action()
            except urllib.error.HTTPError as err:
                if err.code in (404, 410):
                    raise MissingObjectError(
                        f"{what}: HTTP {err.code} {err.reason}: the server has no such file"
                    ) from None
                if err.code not in TRANSIENT_STATUS:
                    raise FetchError(f"{what}: HTTP {err.code} {err.reason}") from None
                last, never_connected = f"HTTP {err.code}", False
            except urllib.error.URLError as err:  # raised before a connection was made
                last = f"{type(err).__name__}: {err.reason}"
            except (ConnectionError, TimeoutError, OSError) as err:
                last, never_connected = f"{type(err).__name__}: {err}", False
            log.warning("%s: attempt %d/%d failed: %s", what, attempt, self.attempts, last)
            if attempt < self.attempts:
                time.sleep(self.wait_s(attempt))
        tries = f"{self.attempts} attempt{'s' if self.attempts != 1 else ''}"
        raise (exhausted if never_connected else FetchError)(f"{what}: {tries} failed; last: {last}")

    def wait_s(self, attempt: int) -> float:
        """The wait after failed attempt ``attempt`` (1 is the first)."""
        return float(min(self.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S))


@dataclass(kw_only=True)
class Client:
    """What every remote reader shares: the settings of its :class:`Retry`, and the bytes and requests it has
    moved (counted from any thread)."""

    attempts: int = 3
    backoff_s: float = 1.0
    timeout_s: float = 60.0
    bytes_fetched: int = 0
    requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def retry(self) -> Retry:
        return Retry(self.attempts, self.backoff_s, self.timeout_s)

    def count(self, n_bytes: int, requests: int = 1) -> None:
        with self._lock:
            self.bytes_fetched += n_bytes
            self.requests += requests


def merge(ranges: Sequence[Range], gap: int) -> list[Range]:
    """The ranges sorted, those that overlap or lie at most ``gap`` bytes apart joined; empty ranges dropped."""
    merged: list[Range] = []
    for offset, length in sorted(r for r in ranges if r[1] > 0):
        if merged and offset <= merged[-1][0] + merged[-1][1] + gap:
            start = merged[-1][0]
            merged[-1] = (start, max(start + merged[-1][1], offset + length) - start)
        else:
            merged.append((offset, length))
    return merged


@dataclass(frozen=True)
class Fetched:
    """Each range's bytes, and the bytes and requests it took (this call's own, whatever other threads fetch)."""

    bodies: dict[Range, bytes]
    bytes: int
    requests: int


def fan_out(read: Callable[[int, int], bytes], ranges: Sequence[Range], gap: int, parallel: int) -> Fetched:
    """The bytes of each range: ranges within ``gap`` of each other fetched as one request by ``read(offset,
    length)``, ``parallel`` requests in flight."""
    groups = merge(ranges, gap)
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(groups) or 1))) as pool:
        bodies = list(pool.map(lambda group: read(*group), groups))
    starts = [start for start, _ in groups]
    out: dict[Range, bytes] = {}
    for offset, length in ranges:
        if length <= 0:
            out[(offset, length)] = b""
            continue
        i = bisect.bisect_right(starts, offset) - 1
        out[(offset, length)] = bodies[i][offset - starts[i] : offset - starts[i] + length]
    return Fetched(out, sum(len(body) for body in bodies), len(groups))


def http_range(
    url: str, offset: int, length: int, headers: dict[str, str], timeout_s: float, whole_ok: bool = False
) -> tuple[bytes, int]:
    """Bytes ``offset`` to ``offset + length - 1`` of the object at ``url``, by one GET with a Range header, and
    the bytes that arrived for them.

    A 206, or a 200 whose Content-Range starts at ``offset`` (rclone's S3 server
    answers so), is the range. A 200 without one is the whole object: with
    ``whole_ok`` its bytes before ``offset`` are skipped and no more than the
    range is read (fit for a prefix); without, :class:`RangeNotSupportedError`.
    A body shorter than the range, where the object does not end there, is a
    dropped connection (:class:`ConnectionError`, which :class:`Retry` retries).
    """
    asked = {**headers, "Range": f"bytes={offset}-{offset + length - 1}"}
    with urllib.request.urlopen(urllib.request.Request(url, headers=asked), timeout=timeout_s) as answer:
        said = answer.headers.get("Content-Range", "")
        match = CONTENT_RANGE.match(said)
        if match:
            if int(match.group(1)) != offset:
                raise ConnectionError(f"Content-Range {said!r} for bytes {offset}-{offset + length - 1}")
            expected = min(length, int(match.group(2)) - offset + 1)
        elif answer.status == 206:
            raise FetchError(f"{url}: a partial answer without a Content-Range for bytes {offset}-")
        elif not whole_ok:
            raise RangeNotSupportedError(f"{url}: the server answered a Range request with {answer.status}")
        else:
            skipped = len(answer.read(offset))
            if skipped < offset:
                return b"", skipped
            expected = -1
        body: bytes = answer.read(length)
    if expected >= 0 and len(body) != expected:
        raise ConnectionError(f"short body: {len(body)} of {expected} bytes")
    return body, len(body) + (offset if expected < 0 else 0)


# A DICOM header is read as prefixes of these sizes, each fetching only what the last lacked: most WSI headers fit
# in the first; one with a large ICC profile, or a sparse level's per-frame groups, in a later one.
PREFIX_BYTES = (8 << 10, 64 << 10, 1 << 20, 16 << 20)
# Past the element the header stops at: its own header (12 bytes) and, for pixel data, the offset table's item (8).
_STOP_SLACK = 20


@dataclass(frozen=True)
class Header:
    """A DICOM header read up to a stop tag: the dataset, where the element it stopped at starts and that
    element's tag (``None`` when the object ended first), and every byte read (the prefix)."""

    ds: pydicom.Dataset
    end: int
    next_tag: int | None
    prefix: bytes


def read_header(read: Callable[[int, int], bytes], stop_tag: int, what: str) -> Header | None:
    """The header before the first element at or past ``stop_tag``, read by ``read(offset, length)`` as growing
    prefixes (:data:`PREFIX_BYTES`) of which each byte is fetched once; ``None`` when the object holds no DICOM
    data set up to that element.

    A prefix is complete when the parse stopped at an element with room for
    its header; pydicom stops quietly at the end of the bytes, which is how an
    incomplete one looks.
    """
    data = b""
    for length in PREFIX_BYTES:
        more = read(len(data), length - len(data))
        data += more
        ended = len(data) < length
        parsed = parse_header(data, stop_tag, ended)
        if parsed is not None or ended:
            return parsed
    raise FetchError(f"{what}: no complete header in the first {PREFIX_BYTES[-1]} bytes; expected a DICOM WSI")


def parse_header(data: bytes, stop_tag: int, ended: bool = False) -> Header | None:
    """The header in ``data`` before ``stop_tag`` (see :func:`read_header`); ``ended``: ``data`` is the whole
    object, so a parse that reached its end is the whole header, and there is no next element."""
    stream = io.BytesIO(data)
    try:
        ds = read_partial(stream, stop_when=lambda tag, vr, length: tag >= stop_tag)
    except (pydicom.errors.InvalidDicomError, EOFError, ValueError, OSError, struct.error):
        return None
    end = stream.tell()
    if end + _STOP_SLACK <= len(data):
        group, element = struct.unpack("<HH", data[end : end + 4])
        return Header(ds, end, group << 16 | element, data)
    if ended and end < len(data):
        return Header(ds, end, None, data)
    return None
