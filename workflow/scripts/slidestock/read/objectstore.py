"""Byte ranges of objects in the public buckets, read anonymously with obstore.

obstore (the Rust object_store crate) sends the GETs, retries what may pass
(5xx, timeouts, dropped connections) with backoff, and times out a request that
stalls, as :class:`slidestock.read.ranges.Retry` says. Ranges are merged only
where they touch or lie a few bytes apart (the item headers between frames), so
next to nothing is fetched that was not asked for (object_store's own
``get_ranges`` merges ranges up to 1 MiB apart); several requests are in flight
at once. A server that answers ranged GETs with 200 and the range's
Content-Range (rclone's does), which obstore refuses, is read over plain HTTP
instead. Every byte that arrives is counted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import obstore
from obstore.store import S3Store

from slidestock.errors import FetchError, MissingObjectError, RangeNotSupportedError
from slidestock.read.fetch import MISSING_HINT, endpoint_url, http_url, source_url
from slidestock.read.ranges import MAX_BACKOFF_S, Client, Fetched, Range, fan_out, http_range

if TYPE_CHECKING:  # typing names only: obstore's stubs define them, its module does not
    from obstore.store import ClientConfig, RetryConfig, S3Config

# idc-open-data and its two companions are in us-east-1; a custom endpoint ignores the region.
REGION = "us-east-1"


# Frames a TIFF directory locates lie 8 bytes apart (their item headers): fetched together.
NEAR_BYTES = 16
_WHOLE_OBJECT = (
    "answers a ranged GET as if it were for the whole object; range reads need a server that answers partial "
    "content, as AWS and GCS do"
)


@dataclass
class RangeClient(Client):
    """Anonymous ranged reads at ``endpoint`` (``aws``, ``gcs`` or a URL), as ``fetch.endpoint`` names it;
    ``parallel`` requests in flight."""

    endpoint: str
    parallel: int = field(default=8, kw_only=True)
    backoff_s: float = field(default=0.5, kw_only=True)
    _stores: dict[str, Any] = field(default_factory=dict, repr=False, kw_only=True)
    # Set once the server has answered a ranged GET with 200 and a Content-Range (or by a forked reader, where
    # obstore's runtime cannot follow): read over HTTP from then on.
    plain_http: bool = field(default=False, repr=False, kw_only=True)

    def _store(self, bucket: str) -> Any:
        with self._lock:
            if bucket not in self._stores:
                custom = endpoint_url(self.endpoint)
                retry = self.retry
                options: ClientConfig = {
                    "timeout": timedelta(seconds=retry.timeout_s),
                    "connect_timeout": timedelta(seconds=min(30.0, retry.timeout_s)),
                    "allow_http": custom is not None and custom.startswith("http://"),
                }
                retries: RetryConfig = {
                    "max_retries": max(0, retry.attempts - 1),
                    "retry_timeout": timedelta(seconds=retry.timeout_s * retry.attempts),
                    "backoff": {
                        "init_backoff": timedelta(seconds=retry.backoff_s),
                        "max_backoff": timedelta(seconds=MAX_BACKOFF_S),
                        "base": 2,
                    },
                }
                # obstore takes no endpoint=None: AWS is its default, named by leaving the endpoint out.
                config: S3Config = {"region": REGION, "skip_signature": True}
                if custom is not None:
                    config["endpoint"] = custom
                self._stores[bucket] = S3Store(bucket, config=config, client_options=options, retry_config=retries)
            return self._stores[bucket]

    def read(self, url: str, offset: int, length: int) -> bytes:
        """``length`` bytes of ``s3://bucket/key`` from ``offset`` (fewer only at the object's end)."""
        if length <= 0:
            return b""
        body = self._over_http(url, offset, length) if self.plain_http else self._with_obstore(url, offset, length)
        self.count(len(body))
        return body

    def _with_obstore(self, url: str, offset: int, length: int) -> bytes:
        bucket, _, key = source_url(url, self.endpoint).removeprefix("s3://").partition("/")
        try:
            return bytes(obstore.get_range(self._store(bucket), key, start=offset, length=length))
        except FileNotFoundError:
            raise MissingObjectError(f"{url}: not found at {self.endpoint}: {MISSING_HINT}") from None
        except Exception as err:  # obstore's errors: the first line says the HTTP or connection cause, and retries
            reason = str(err).splitlines()[0]
            if "non-partial response" in reason:
                self.plain_http = True
                return self._over_http(url, offset, length)
            # obstore says "Generic S3 error: Error performing GET <url> in <time>, after <n> retries, ... - <cause>":
            # the cause, and how many tries it took, are what a user needs.
            tries = re.search(r"after (\d+) retries", reason)
            if " - " in reason and tries:
                reason = f"{reason.rsplit(' - ', 1)[1]} ({int(tries.group(1)) + 1} attempts)"
            raise FetchError(f"{url}: bytes {offset}-{offset + length - 1}: {reason}") from None

    def _over_http(self, url: str, offset: int, length: int) -> bytes:
        address, headers = http_url(url, self.endpoint), {"User-Agent": "slidestock"}
        what = f"{url}: bytes {offset}-{offset + length - 1}"
        try:
            return self.retry.run(what, lambda: http_range(address, offset, length, headers, self.timeout_s)[0])
        except RangeNotSupportedError:
            raise FetchError(f"{what}: the server at {self.endpoint} {_WHOLE_OBJECT}") from None
        except MissingObjectError:
            raise MissingObjectError(f"{url}: not found at {self.endpoint}: {MISSING_HINT}") from None

    def read_many(self, url: str, ranges: Sequence[Range]) -> Fetched:
        """Each (offset, length) range's bytes, and the bytes and requests it took (touching ranges are one
        request; ``parallel`` in flight)."""
        return fan_out(lambda offset, length: self.read(url, offset, length), ranges, NEAR_BYTES, self.parallel)
