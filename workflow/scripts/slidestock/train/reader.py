"""Read a planned patch again at training time, from its row of ``patches.parquet`` alone.

A row says where the frames its patch covers lie (``frames``: tile, part,
offset, length), how to decode them (``decoding``) and where the patch sits on
its level; :class:`PatchReader` fetches those ranges (touching ones as one
request, several in flight, retried, anonymously from the public buckets or the
configured endpoint; GDC tiles from the GDC API), decodes and resamples them
with the workflow's own functions, and returns the RGB array: the same pixels,
byte for byte, as the PNG the workflow writes for that row. No header is read.

One reader serves a PyTorch ``DataLoader``'s workers: its clients are made per
process (after a fork, or when unpickled in a spawned worker) and shared by the
threads of one; decoded frames are kept in a cache bounded in bytes, so
patches that share frames decode them once.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from slidestock.errors import DecodeError, SlidestockError
from slidestock.image.patches import Patch, TiledLevel, crop_px, patch_pixels, patch_tiles
from slidestock.plan.rows import GDC_PREFIX
from slidestock.read.codestreams import decode_codestream
from slidestock.read.dicom import BACKGROUND, Frame
from slidestock.read.gdcapi import GdcClient, fetch_ranges
from slidestock.read.objectstore import RangeClient
from slidestock.read.remote import item_values
from slidestock.read.svs import decode_tile
from slidestock.read.tiff import TiffPage

GDC_API = "https://api.gdc.cancer.gov"
# Whether obstore's runtime ran in this process or an ancestor it was forked from: its threads do not survive a
# fork, so a forked process whose parent read with obstore reads over plain HTTP (a spawned one starts afresh).
_OBSTORE: dict[str, bool] = {"used": False, "inherited": False}
os.register_at_fork(after_in_child=lambda: _OBSTORE.update(inherited=_OBSTORE["inherited"] or _OBSTORE["used"]))
# Decoded frames kept per process: about 1,300 frames of 256 x 256 px.
CACHE_BYTES = 256 << 20
# Columns a row needs; patches.parquet has them all.
NEEDED = ("slide_id", "x_level_px", "y_level_px", "level_columns", "level_rows", "size_px", "frames", "decoding")


@dataclass(frozen=True)
class PlannedPatch:
    """What reading one patch takes, parsed from its row."""

    slide_id: str
    patch: Patch
    level: TiledLevel
    span: tuple[float, float]
    size_px: int
    urls: tuple[str, ...]
    # tile -> (part, offset, length) of each covered frame that is stored (a sparse level's others are background).
    frames: Mapping[int, tuple[int, int, int]]
    decoding: Mapping[str, Any]

    @classmethod
    def of_row(cls, row: Mapping[str, Any]) -> PlannedPatch:
        missing = [name for name in NEEDED if name not in row]
        if missing:
            raise SlidestockError(f"a patch row without {missing}; expected a row of slidestock's patches.parquet")
        slide_id = str(row["slide_id"])
        try:
            decoding = json.loads(row["decoding"])
            frames = {int(t): (int(k), int(off), int(n)) for t, k, off, n in json.loads(row["frames"])}
        except (TypeError, ValueError) as err:
            raise SlidestockError(
                f"{slide_id}: patch {row.get('patch_id')} has no frame ranges ({err}); expected the JSON lists a "
                "patch job writes in every row (a patches.parquet from before they were written: run the workflow)"
            ) from None
        tile = decoding["tile_px"]
        return cls(
            slide_id=slide_id,
            patch=Patch(0, int(row["x_level_px"]), int(row["y_level_px"]), 0.0),
            level=TiledLevel((int(row["level_columns"]), int(row["level_rows"])), (int(tile[0]), int(tile[1]))),
            span=(float(decoding["span_px"][0]), float(decoding["span_px"][1])),
            size_px=int(row["size_px"]),
            urls=tuple(decoding["urls"]),
            frames=frames,
            decoding=decoding,
        )

    @property
    def tiles(self) -> list[int]:
        """The grid indices of the tiles the patch's crop covers, row by row."""
        return patch_tiles(self.patch, crop_px(self.span), self.level)


class PatchReader:
    """Patches of ``patches.parquet`` read by range: ``reader.read(row)`` is the patch's (size, size, 3) uint8 array.

    ``endpoint`` is ``fetch.endpoint``'s (``aws``, ``gcs`` or a URL); GDC rows
    are read from ``gdc_api``, with ``gdc_token`` for controlled data.
    ``parallel`` requests are in flight per patch, each tried ``attempts`` times.
    """

    def __init__(
        self,
        endpoint: str = "aws",
        *,
        gdc_api: str = GDC_API,
        gdc_token: str | None = None,
        attempts: int = 3,
        parallel: int = 8,
        timeout_s: float = 60.0,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self.endpoint, self.gdc_api, self.gdc_token = endpoint, gdc_api, gdc_token
        self.attempts, self.parallel, self.timeout_s, self.cache_bytes = attempts, parallel, timeout_s, cache_bytes
        self._fresh()

    def _fresh(self) -> None:
        """Clients, cache and counters of this process (a forked or spawned worker starts its own)."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._cached_bytes = 0
        self._s3: RangeClient | None = None
        self._gdc: GdcClient | None = None
        self.bytes_fetched = 0
        self.requests = 0

    def __getstate__(self) -> dict[str, Any]:
        keep = ("endpoint", "gdc_api", "gdc_token", "attempts", "parallel", "timeout_s", "cache_bytes")
        return {name: getattr(self, name) for name in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._fresh()

    def _mine(self) -> None:
        if self._pid != os.getpid():  # forked: the parent's clients and their connections are not this process's
            self._fresh()

    def read(self, row: Mapping[str, Any]) -> np.ndarray:
        """The patch of this ``patches.parquet`` row (a mapping, e.g. ``table.iloc[i]``), as the workflow cut it."""
        self._mine()
        planned = PlannedPatch.of_row(row)
        tiles = planned.tiles
        decoded = self._decoded(planned, tiles)
        return patch_pixels(planned.patch, tiles, planned.span, planned.size_px, planned.level, decoded)

    __call__ = read

    def _decoded(self, planned: PlannedPatch, tiles: Sequence[int]) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        wanted = []
        background = np.full((planned.level.tile_px[1], planned.level.tile_px[0], 3), BACKGROUND, dtype=np.uint8)
        with self._lock:
            for tile in tiles:
                if tile not in planned.frames:
                    out[tile] = background
                    continue
                key = (planned.urls[planned.frames[tile][0]], tile)
                if key in self._cache:
                    self._cache.move_to_end(key)
                    out[tile] = self._cache[key]
                else:
                    wanted.append(tile)
        for tile, data in self._fetch(planned, wanted).items():
            out[tile] = self._decode(planned, tile, data)
            self._keep((planned.urls[planned.frames[tile][0]], tile), out[tile])
        return out

    def _fetch(self, planned: PlannedPatch, tiles: Sequence[int]) -> dict[int, bytes]:
        """The tiles' encoded bytes, their ranges fetched per object together."""
        out: dict[int, bytes] = {}
        for part, url in enumerate(planned.urls):
            mine = {t: planned.frames[t][1:] for t in tiles if planned.frames[t][0] == part}
            if not mine:
                continue
            if url.startswith(GDC_PREFIX):
                fetched = fetch_ranges(
                    self._gdc_client(), url.removeprefix(GDC_PREFIX), list(mine.values()), self.parallel
                )
            else:
                fetched = self._s3_client().read_many(url, list(mine.values()))
            with self._lock:
                self.bytes_fetched += fetched.bytes
                self.requests += fetched.requests
            items = bool(planned.decoding.get("items", [False] * len(planned.urls))[part])
            for tile, span in mine.items():
                body = fetched.bodies[span]
                if len(body) != span[1]:
                    raise DecodeError(
                        f"{planned.slide_id}: frame {tile + 1} is cut short: {len(body)} of {span[1]} bytes"
                    )
                out[tile] = item_values(body, Frame(tile, (span,), part), planned.slide_id) if items else body
        return out

    def _decode(self, planned: PlannedPatch, tile: int, data: bytes) -> np.ndarray:
        how = planned.decoding
        if how["codec"] == "svs":
            page = TiffPage(
                index=int(how["page"]),
                size_px=planned.level.size_px,
                tile_px=planned.level.tile_px,
                compression=int(how["compression"]),
                photometric=int(how["photometric"]),
                description="",
                subfiletype=0,
                jpegtables=bytes.fromhex(how["jpegtables"]) or None,
                spacing_um=None,
                locations=None,
                byteorder="<",
                bigtiff=False,
            )
            return decode_tile(page, data, planned.slide_id, tile)
        # Frames stored smaller than the tile are placed at its corner, as the workflow does.
        return decode_codestream(data, tile, planned.slide_id, how["transfer_syntax"], planned.level.tile_px, 1, [])

    def _keep(self, key: tuple[str, int], array: np.ndarray) -> None:
        with self._lock:
            if key not in self._cache:
                self._cache[key] = array
                self._cached_bytes += array.nbytes
            while self._cached_bytes > self.cache_bytes and self._cache:
                _, dropped = self._cache.popitem(last=False)
                self._cached_bytes -= dropped.nbytes

    def _s3_client(self) -> RangeClient:
        with self._lock:
            if self._s3 is None:
                self._s3 = RangeClient(
                    self.endpoint, attempts=self.attempts, parallel=self.parallel, timeout_s=self.timeout_s
                )
                self._s3.plain_http = _OBSTORE["inherited"]
                _OBSTORE["used"] = _OBSTORE["used"] or not _OBSTORE["inherited"]
            return self._s3

    def _gdc_client(self) -> GdcClient:
        with self._lock:
            if self._gdc is None:
                self._gdc = GdcClient(self.gdc_api, self.gdc_token, attempts=self.attempts)
            return self._gdc
