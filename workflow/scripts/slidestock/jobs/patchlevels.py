"""The level patches are cut from, opened by its source: a DICOM level in its bucket (:class:`IdcLevel`), or an
SVS page at the GDC (:class:`GdcPage`), behind one interface (:class:`PatchLevel`).

Each gives the level's geometry and exact spacing first (for placing the
patches), then finds the tiles the patches cover (:meth:`PatchLevel.locate`),
fetches them by range and decodes them; and says what its record says about it.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from slidestock.errors import DecodeError, SlidestockError
from slidestock.image.patches import TiledLevel
from slidestock.jobs.slide import GdcSettings
from slidestock.plan.levels import Target
from slidestock.plan.rows import PlanRow
from slidestock.read.codestreams import decode_frame_data
from slidestock.read.dicom import Frame, Instance
from slidestock.read.frames import Located, locate, locate_tiles
from slidestock.read.gdcapi import BlockCache, GdcClient
from slidestock.read.objectstore import RangeClient
from slidestock.read.remote import RemoteObject, fetch_frames, open_instance
from slidestock.read.svs import choose_page, decode_tile
from slidestock.read.tiff import TiffPage, tile_locations


@dataclass(frozen=True)
class Covered:
    """The tiles the patches cover, located: which are present, their encoded sizes, and how they were found
    (``level_bytes``: the level's encoded bytes where they are not its object's size, as an SVS page's)."""

    present: Collection[int]
    sizes: Mapping[int, int]
    facts: dict[str, Any]
    level_bytes: int = 0


class PatchLevel(Protocol):
    """The level patches are cut from: geometry and spacing first, then its tiles by range.

    ``base_size_px`` is the series' level 0, which patch positions are also
    given in (``None``: the level is its own base). :meth:`fetched` is every
    byte read so far, header and directory reads included.
    """

    level: TiledLevel
    spacing_um: tuple[float, float]
    base_size_px: tuple[int, int] | None
    facts: dict[str, Any]
    # The objects the level's frames are in (a concatenation's parts in order), as the plan names them.
    urls: list[str]
    # Its place in the slide's pyramid, finest 0 (OpenSlide's level of a local copy); -1 when unknown.
    level_index: int

    def locate(self, tiles: Sequence[int]) -> Covered: ...

    def ranges(self, tiles: Sequence[int]) -> dict[int, tuple[int, int, int]]:
        """Each located tile's (part, offset, length): what :meth:`fetch` reads for it."""
        ...

    def decoding(self) -> dict[str, Any]:
        """What decoding a tile's bytes takes besides them (codec, tile size), for a reader without a header."""
        ...

    def fetch(self, tiles: Sequence[int]) -> Mapping[int, bytes]: ...

    def decode(self, tile: int, data: bytes) -> np.ndarray: ...

    def fetched(self) -> int: ...

    def requests(self) -> int: ...

    def warnings(self) -> list[str]: ...


class IdcLevel:
    """A DICOM level in its bucket (one instance, or the parts of a concatenation): headers by range, then frames."""

    def __init__(
        self, plan: PlanRow, base_size_px: tuple[int, int] | None, client: RangeClient, level_index: int = -1
    ) -> None:
        self.item, self.level_index = plan.slide_id, level_index
        parts = plan.parts or ((plan.url, plan.instance_size),)
        self.urls = [url for url, _ in parts]
        self.objects = [RemoteObject(client, url, size) for url, size in parts]
        self.instances = [open_instance(obj, plan.slide_id) for obj in self.objects]
        self.starts = _concatenation_starts(self.instances, plan.slide_id) if len(self.instances) > 1 else [0]
        header = self.header = self.instances[0].header
        spacing = header.spacing_xy_um or plan.level_spacing_um
        if spacing is None:
            raise SlidestockError(
                f"{plan.slide_id}: the patch level has no pixel spacing; expected one to size patches"
            )
        self.level = TiledLevel(header.size_px, header.tile_px, header.icc_profile)
        self.spacing_um: tuple[float, float] = spacing
        self.base_size_px = base_size_px
        self.facts: dict[str, Any] = {
            "header_bytes": sum(instance.header_bytes for instance in self.instances),
            "parts": len(self.instances),
            "transfer_syntax": header.transfer_syntax,
        }
        self.found: list[Located] = []
        self.where: dict[int, tuple[int, Frame]] = {}
        # Frames stored smaller than the tile (some converters' edge frames), placed at their tile's corner.
        self.short: list[tuple[int, int, int]] = []

    def locate(self, tiles: Sequence[int]) -> Covered:
        if len(self.instances) == 1:
            self.found = [locate_tiles(self.objects[0], self.instances[0], tiles)]
        else:  # TILED_FULL: tile t is frame t of the level, in the part whose frames start at or before it
            owner = {t: bisect.bisect_right(self.starts, t) - 1 for t in tiles}
            self.found = [
                locate(obj, instance, {t: t - self.starts[k] for t in tiles if owner[t] == k})
                for k, (obj, instance) in enumerate(zip(self.objects, self.instances, strict=True))
            ]
        self.where = {t: (k, frame) for k, located in enumerate(self.found) for t, frame in located.frames.items()}
        methods = sorted({located.method for located in self.found})
        return Covered(
            present=self.where.keys(),
            sizes={t: frame.parts[0][1] for t, (_, frame) in self.where.items()},
            facts={"located_by": ", ".join(methods), "note": " ".join(x.note for x in self.found if x.note)},
        )

    def fetch(self, tiles: Sequence[int]) -> Mapping[int, bytes]:
        out: dict[int, bytes] = {}
        for k, (obj, located) in enumerate(zip(self.objects, self.found, strict=True)):
            mine = {t: self.where[t][1] for t in tiles if self.where[t][0] == k}
            out.update(fetch_frames(obj, mine, located.items, self.item) if mine else {})
        return out

    def ranges(self, tiles: Sequence[int]) -> dict[int, tuple[int, int, int]]:
        return {t: (self.where[t][0], *self.where[t][1].parts[0]) for t in tiles if t in self.where}

    def decoding(self) -> dict[str, Any]:
        return {
            "codec": "dicom",
            "transfer_syntax": self.header.transfer_syntax,
            "tile_px": list(self.level.tile_px),
            # Per part: the spans start at their item header (offset tables, a walk), or are the data.
            "items": [located.items for located in self.found],
        }

    def decode(self, tile: int, data: bytes) -> np.ndarray:
        return decode_frame_data(data, self.where[tile][1], self.header, 1, self.short)

    def fetched(self) -> int:
        return sum(obj.fetched for obj in self.objects)

    def requests(self) -> int:
        return sum(obj.requests for obj in self.objects)

    def warnings(self) -> list[str]:
        return [
            f"{len(self.short)} frames stored smaller than the tile (frame {n}: {w} x {h} px): placed at their "
            "tile's corner, the rest background"
            for n, w, h in self.short[:1]
        ]


def _concatenation_starts(instances: Sequence[Instance], slide_id: str) -> list[int]:
    """The first frame of each part of a concatenated level (TILED_FULL, parts in frame order); checked."""
    first = instances[0].header
    starts, expected = [], 0
    for k, instance in enumerate(instances):
        ds, header = instance.ds, instance.header
        offset = int(ds.get("ConcatenationFrameOffsetNumber", -1))
        same = (header.size_px, header.tile_px, header.transfer_syntax) == (
            first.size_px,
            first.tile_px,
            first.transfer_syntax,
        )
        if offset != expected or not same or header.organization != "TILED_FULL":
            raise DecodeError(
                f"{slide_id}: part {k + 1} of the concatenated patch level starts at frame {offset + 1} "
                f"({header.organization}, {header.size_px} px); expected TILED_FULL parts of one level, "
                f"the next starting at frame {expected + 1}"
            )
        starts.append(offset)
        expected += instance.n_frames
    if expected != first.across * first.down:
        raise DecodeError(f"{slide_id}: the parts hold {expected} frames; expected {first.across * first.down}")
    return starts


@dataclass
class GdcPage:
    """An SVS file at the GDC: its directory by range, the page by the level rule at ``mpp``, then the tiles the
    patches cover."""

    client: GdcClient
    cache: BlockCache
    page: TiffPage
    item: str
    parallel: int
    level: TiledLevel
    spacing_um: tuple[float, float]
    base_size_px: tuple[int, int] | None
    facts: dict[str, Any]
    urls: list[str]
    level_index: int
    where: list[tuple[int, int]] = field(default_factory=list)

    @classmethod
    def open(cls, plan: PlanRow, gdc: GdcSettings | None, attempts: int, mpp: float) -> GdcPage:
        if gdc is None:
            raise SlidestockError(f"{plan.slide_id}: a GDC slide, but no gdc settings were given")
        item = f"{plan.slide_id} (GDC {plan.gdc_file_id})"
        client = GdcClient(gdc.api, gdc.token, attempts=attempts)
        cache = BlockCache(client, plan.gdc_file_id, plan.instance_size)
        chosen = choose_page(cache.read, Target(mpp=mpp), item)
        page, choice = chosen.page, chosen.choice
        if choice.spacing_um is None or page.tile_px is None:
            raise SlidestockError(f"{item}: page {page.index} has no spacing or is not tiled; expected a tiled level")
        return cls(
            client=client,
            cache=cache,
            page=page,
            item=item,
            parallel=gdc.parallel,
            level=TiledLevel(page.size_px, page.tile_px, None),
            spacing_um=(float(choice.spacing_um), float(choice.spacing_um)),
            base_size_px=chosen.levels[0].size_px if chosen.levels else None,
            facts={
                "page": page.index,
                "reason": choice.reason,
                "transfer_syntax": f"tiff-compression-{page.compression}",
            },
            urls=[plan.url],
            level_index=next((k for k, level in enumerate(chosen.levels) if level.page == page.index), -1),
        )

    def locate(self, tiles: Sequence[int]) -> Covered:
        self.where = tile_locations(self.cache.read, self.page, self.item)
        return Covered(
            present=range(len(self.where)),
            sizes={t: self.where[t][1] for t in tiles},
            facts={"located_by": "SVS tile directory", "note": ""},
            level_bytes=sum(length for _, length in self.where),
        )

    def fetch(self, tiles: Sequence[int]) -> Mapping[int, bytes]:
        bodies = self.cache.fetch([self.where[t] for t in tiles], parallel=self.parallel)
        return dict(zip(tiles, bodies, strict=True))

    def ranges(self, tiles: Sequence[int]) -> dict[int, tuple[int, int, int]]:
        return {t: (0, *self.where[t]) for t in tiles}

    def decoding(self) -> dict[str, Any]:
        page = self.page
        return {
            "codec": "svs",
            "page": page.index,
            "compression": page.compression,
            "photometric": page.photometric,
            "jpegtables": page.jpegtables.hex() if page.jpegtables else "",
            "tile_px": list(self.level.tile_px),
        }

    def decode(self, tile: int, data: bytes) -> np.ndarray:
        return decode_tile(self.page, data, self.item, tile)

    def fetched(self) -> int:
        return self.client.bytes_fetched

    def requests(self) -> int:
        return self.client.requests

    def warnings(self) -> list[str]:
        return []


def open_level(plan: PlanRow, base_size_px: tuple[int, int] | None, client: RangeClient, gdc: GdcSettings | None,
               attempts: int, mpp: float, level_index: int = -1) -> PatchLevel:  # fmt: skip
    """The patch level of a planned slide, opened by its source (``level_index``: the plan's, for a DICOM level)."""
    if plan.source == "gdc":
        return GdcPage.open(plan, gdc, attempts, mpp)
    return IdcLevel(plan, base_size_px, client, level_index)
