"""An instance's header, read from its bucket with a few ranged GETs (the plan step).

idc-index publishes pixel spacings rounded to two significant figures; where
that cannot decide the level rule, and for the chosen level's exact output
size, the plan reads the instance's own header with :func:`slidestock.read.ranges.read_header`:
the first few KB of the object, more only when the header is longer (a large
ICC profile, say). Nothing past the shared functional groups is read.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass, field

import pydicom

from slidestock.errors import FetchError, UnreachableError
from slidestock.read.dicom import header_spacing_um
from slidestock.read.fetch import http_url
from slidestock.read.ranges import Client, http_range, read_header

# The plan reads up to the shared functional groups: the per-frame groups after them can be megabytes.
SHARED_GROUPS = 0x52009229
_HEADERS = {"User-Agent": "slidestock"}


@dataclass
class HeaderReader(Client):
    """Reads instance headers over HTTP with retries; counts the bytes and requests, for the record."""

    endpoint: str
    timeout_s: float = field(default=30.0, kw_only=True)

    def range(self, url: str, offset: int, length: int) -> tuple[bytes, int]:
        """Bytes of the object from ``offset`` (fewer at its end), and the bytes that arrived for them; a server
        that sends the whole object will do.

        When every attempt fails for the network's sake, :class:`UnreachableError`: the same for every slide.
        """
        address = http_url(url, self.endpoint)

        def get() -> tuple[bytes, int]:
            return http_range(address, offset, length, _HEADERS, self.timeout_s, whole_ok=True)

        body, arrived = self.retry.run(f"header of {address}", get, UnreachableError)
        self.count(arrived)
        return body, arrived

    def check_reachable(self, url: str) -> None:
        """Raise :class:`UnreachableError` when the server of ``url`` cannot be reached at all.

        One HEAD of the object: any HTTP answer (its size, a 403, a 404, a 503), or a
        connection made that waits for one, means the server is there. A bucket listing
        would say the same, but some stand-in servers read every object to answer one.
        """
        address = http_url(url, self.endpoint)

        def ask() -> None:
            request = urllib.request.Request(address, headers=_HEADERS, method="HEAD")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s):
                    pass
            except (urllib.error.HTTPError, TimeoutError):
                pass  # an answer, or a connection that waits for one: the server is there (the object is s5cmd's)

        try:
            self.retry.run(f"object {address}", ask, UnreachableError)
        except UnreachableError:
            raise
        except FetchError:
            pass

    def read(self, url: str) -> tuple[pydicom.Dataset | None, int]:
        """The instance's header up to the shared functional groups (``None`` for an object that holds none),
        and the bytes read for it."""
        arrived: list[int] = []

        def prefix(offset: int, length: int) -> bytes:
            body, moved = self.range(url, offset, length)
            arrived.append(moved)
            return body

        found = read_header(prefix, SHARED_GROUPS + 1, url)
        return (None if found is None else found.ds), sum(arrived)

    def dataset(self, url: str) -> pydicom.Dataset | None:
        """The instance's header (see :meth:`read`)."""
        return self.read(url)[0]

    def spacing_xy_um(self, url: str) -> tuple[float, float] | None:
        """The header's (column, row) spacing in µm, ``None`` when the header has none."""
        parsed = self.dataset(url)
        return None if parsed is None else header_spacing_um(parsed)
