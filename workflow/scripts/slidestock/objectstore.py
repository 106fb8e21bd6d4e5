"""Byte ranges of objects in the public buckets, read anonymously with obstore.

obstore (the Rust object_store crate) sends the GETs, retries what may pass
(5xx, timeouts, dropped connections) with backoff, and times out a request that
stalls. Ranges are merged here only where they touch or lie a few bytes apart
(the item headers between frames), so next to nothing is fetched that was not
asked for (object_store's own ``get_ranges`` merges ranges up to 1 MiB apart);
several requests are in flight at once. Every byte that arrives is counted.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import obstore
from obstore.store import S3Store

from slidestock.errors import FetchError, MissingObjectError
from slidestock.fetch import MISSING_HINT, endpoint_url, source_url

if TYPE_CHECKING:  # typing names only: obstore's stubs define them, its module does not
    from obstore.store import ClientConfig, RetryConfig

# idc-open-data and its two companions are in us-east-1; a custom endpoint ignores the region.
REGION = "us-east-1"


# Frames a TIFF directory locates lie 8 bytes apart (their item headers): fetched together.
NEAR_BYTES = 16


def touching(ranges: Sequence[tuple[int, int]], gap: int = NEAR_BYTES) -> list[tuple[int, int]]:
    """(offset, length) ranges sorted, those that overlap or lie at most ``gap`` bytes apart merged into one."""
    merged: list[tuple[int, int]] = []
    for offset, length in sorted(r for r in ranges if r[1] > 0):
        if merged and offset <= merged[-1][0] + merged[-1][1] + gap:
            start = merged[-1][0]
            merged[-1] = (start, max(start + merged[-1][1], offset + length) - start)
        else:
            merged.append((offset, length))
    return merged


@dataclass
class RangeClient:
    """Anonymous ranged reads at ``endpoint`` (``aws``, ``gcs`` or a URL), as ``fetch.endpoint`` names it."""

    endpoint: str
    attempts: int = 3
    timeout_s: float = 60.0
    parallel: int = 8
    bytes_fetched: int = 0
    requests: int = 0
    _stores: dict[str, Any] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _store(self, bucket: str) -> Any:
        with self._lock:
            if bucket not in self._stores:
                custom = endpoint_url(self.endpoint)
                options: ClientConfig = {
                    "timeout": timedelta(seconds=self.timeout_s),
                    "connect_timeout": timedelta(seconds=min(30.0, self.timeout_s)),
                    "allow_http": custom is not None and custom.startswith("http://"),
                }
                retry: RetryConfig = {
                    "max_retries": max(0, self.attempts - 1),
                    "retry_timeout": timedelta(seconds=self.timeout_s * self.attempts),
                    "backoff": {
                        "init_backoff": timedelta(seconds=0.5),
                        "max_backoff": timedelta(seconds=15),
                        "base": 2,
                    },
                }
                self._stores[bucket] = S3Store(
                    bucket,
                    endpoint=custom,
                    region=REGION,
                    skip_signature=True,
                    client_options=options,
                    retry_config=retry,
                )
            return self._stores[bucket]

    def read(self, url: str, offset: int, length: int) -> bytes:
        """``length`` bytes of ``s3://bucket/key`` from ``offset`` (fewer only at the object's end)."""
        if length <= 0:
            return b""
        bucket, _, key = source_url(url, self.endpoint).removeprefix("s3://").partition("/")
        try:
            body = bytes(obstore.get_range(self._store(bucket), key, start=offset, length=length))
        except FileNotFoundError:
            raise MissingObjectError(f"{url}: not found at {self.endpoint}: {MISSING_HINT}") from None
        except Exception as err:  # obstore's errors: the first line says the HTTP or connection cause, and retries
            reason = str(err).splitlines()[0]
            # obstore says "Generic S3 error: Error performing GET <url> in <time>, after <n> retries, ... - <cause>":
            # the cause, and how many tries it took, are what a user needs.
            tries = re.search(r"after (\d+) retries", reason)
            if " - " in reason and tries:
                reason = f"{reason.rsplit(' - ', 1)[1]} ({int(tries.group(1)) + 1} attempts)"
            if "non-partial response" in reason:
                reason = (
                    f"the server at {self.endpoint} answers a ranged GET as if it were for the whole object "
                    "(rclone serve s3 does); range reads need a server that answers partial content, as AWS and GCS do"
                )
            raise FetchError(f"{url}: bytes {offset}-{offset + length - 1}: {reason}") from None
        with self._lock:
            self.bytes_fetched += len(body)
            self.requests += 1
        return body

    def read_many(self, url: str, ranges: Sequence[tuple[int, int]]) -> tuple[dict[tuple[int, int], bytes], int, int]:
        """Each (offset, length) range's bytes, and the bytes and requests it took (touching ranges are one
        request; ``parallel`` in flight). The counts are this call's own, whatever other threads fetch."""
        groups = touching(ranges)
        with ThreadPoolExecutor(max_workers=max(1, min(self.parallel, len(groups)))) as pool:
            bodies = list(pool.map(lambda g: self.read(url, g[0], g[1]), groups))
        starts = [start for start, _ in groups]
        out: dict[tuple[int, int], bytes] = {}
        for offset, length in ranges:
            i = bisect.bisect_right(starts, offset) - 1
            out[(offset, length)] = bodies[i][offset - starts[i] : offset - starts[i] + length]
        return out, sum(len(body) for body in bodies), len(groups)
