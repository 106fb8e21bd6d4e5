"""The level patches are cut from, opened by its source: a DICOM level in its bucket, or an SVS page at the GDC.

Each gives the level's geometry and exact spacing first (for placing the
patches), then, for the tiles the patches cover, where they lie, how to fetch
them by range and how to decode them; and what its record says about it.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from slidestock.dicom import decode_frame_data
from slidestock.errors import DecodeError, SlidestockError
from slidestock.gdcapi import BlockCache, GdcClient
from slidestock.levels import Target
from slidestock.objectstore import RangeClient
from slidestock.patches import TiledLevel
from slidestock.planrow import PlanRow
from slidestock.remote import (
    RemoteLevel,
    RemoteObject,
    fetch_frames,
    locate_frame_numbers,
    locate_frames,
    read_level_header,
)
from slidestock.slide import GdcSettings
from slidestock.svs import choose_page, decode_tile
from slidestock.tiff import tile_locations


@dataclass
class OpenedLevel:
    """The level patches are cut from, opened by its source: geometry and spacing first, then its tiles by range.

    ``locate(tiles)`` finds those tiles and returns which are present, how to
    fetch and decode them, and what the record says about how they were found.
    ``fetched()`` is every byte read so far, header and directory reads included.
    """

    level: TiledLevel
    spacing_um: tuple[float, float]
    base_size_px: tuple[int, int] | None
    facts: dict[str, Any]
    locate: Callable[[Sequence[int]], Tiles]
    fetched: Callable[[], int]
    requests: Callable[[], int]
    warnings: Callable[[], list[str]] = list


@dataclass(frozen=True)
class Tiles:
    """Located tiles: which are present, their encoded sizes, how to fetch and decode them, and how they were found."""

    present: Collection[int]
    sizes: Mapping[int, int]
    fetch: Callable[[Sequence[int]], Mapping[int, bytes]]
    decode: Callable[[int, bytes], np.ndarray]
    facts: dict[str, Any]
    # The level's encoded bytes where they are not its object's size (an SVS page among a file's pages).
    level_bytes: int = 0


def open_idc(plan: PlanRow, base_size_px: tuple[int, int] | None, client: RangeClient) -> OpenedLevel:
    """A DICOM level in its bucket (one instance, or the parts of a concatenation): headers by range, then frames.

    ``base_size_px`` is the series' level 0 (from the patch plan), which patch positions are also given in.
    """
    parts = plan.parts or ((plan.url, plan.instance_size),)
    objects = [RemoteObject(client, url, size) for url, size in parts]
    levels = [read_level_header(obj, plan.slide_id) for obj in objects]
    starts = _concatenation_starts(levels, plan.slide_id) if len(levels) > 1 else [0]
    header = levels[0].header
    spacing = header.spacing_xy_um or plan.level_spacing_um
    if spacing is None:
        raise SlidestockError(f"{plan.slide_id}: the patch level has no pixel spacing; expected one to size patches")

    def locate(tiles: Sequence[int]) -> Tiles:
        if len(levels) == 1:
            found = [locate_frames(objects[0], levels[0], tiles)]
        else:  # TILED_FULL: tile t is frame t of the level, in the part whose frames start at or before it
            owner = {t: bisect.bisect_right(starts, t) - 1 for t in tiles}
            found = [
                locate_frame_numbers(obj, level, {t: t - starts[k] for t in tiles if owner[t] == k})
                for k, (obj, level) in enumerate(zip(objects, levels, strict=True))
            ]
        where = {t: (k, frame) for k, located in enumerate(found) for t, frame in located.frames.items()}

        def fetch(wanted: Sequence[int]) -> Mapping[int, bytes]:
            out: dict[int, bytes] = {}
            for k, (obj, located) in enumerate(zip(objects, found, strict=True)):
                mine = {t: where[t][1] for t in wanted if where[t][0] == k}
                out.update(fetch_frames(obj, mine, located.items, plan.slide_id) if mine else {})
            return out

        methods = sorted({located.method for located in found})
        return Tiles(
            present=where.keys(),
            sizes={t: frame.parts[0][1] for t, (_, frame) in where.items()},
            fetch=fetch,
            decode=lambda tile, data: decode_frame_data(data, where[tile][1], header, 1, short),
            facts={"located_by": ", ".join(methods), "note": " ".join(x.note for x in found if x.note)},
        )

    # Frames stored smaller than the tile (some converters' edge frames), placed at their tile's corner.
    short: list[tuple[int, int, int]] = []

    return OpenedLevel(
        level=TiledLevel(header.size_px, header.tile_px, header.icc_profile),
        spacing_um=spacing,
        base_size_px=base_size_px,
        facts={
            "header_bytes": sum(level.header_bytes for level in levels),
            "parts": len(levels),
            "transfer_syntax": header.transfer_syntax,
        },
        locate=locate,
        fetched=lambda: sum(obj.fetched for obj in objects),
        requests=lambda: sum(obj.requests for obj in objects),
        warnings=lambda: [
            f"{len(short)} frames stored smaller than the tile (frame {n}: {w} x {h} px): placed at their "
            "tile's corner, the rest background"
            for n, w, h in short[:1]
        ],
    )


def _concatenation_starts(levels: Sequence[RemoteLevel], slide_id: str) -> list[int]:
    """The first frame of each part of a concatenated level (TILED_FULL, parts in frame order); checked."""
    first = levels[0].header
    starts, expected = [], 0
    for k, level in enumerate(levels):
        ds, header = level.ds, level.header
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
        expected += int(ds.get("NumberOfFrames", 1))
    if expected != first.across * first.down:
        raise DecodeError(f"{slide_id}: the parts hold {expected} frames; expected {first.across * first.down}")
    return starts


def open_gdc(plan: PlanRow, gdc: GdcSettings | None, attempts: int, mpp: float) -> OpenedLevel:
    """An SVS file at the GDC: its directory by range, the page by the level rule at ``mpp``, then the tiles the
    patches cover."""
    if gdc is None:
        raise SlidestockError(f"{plan.slide_id}: a GDC slide, but no gdc settings were given")
    file_id, item = plan.gdc_file_id, f"{plan.slide_id} (GDC {plan.gdc_file_id})"
    client = GdcClient(gdc.api, gdc.token, attempts=attempts)
    cache = BlockCache(client, file_id, plan.instance_size)
    chosen = choose_page(cache.read, Target(mpp=mpp), item)
    page, choice, levels = chosen.page, chosen.choice, chosen.levels
    if choice.spacing_um is None or page.tile_px is None:
        raise SlidestockError(f"{item}: page {page.index} has no spacing or is not tiled; expected a tiled level")
    spacing = float(choice.spacing_um)

    def locate(tiles: Sequence[int]) -> Tiles:
        where = tile_locations(cache.read, page, item)

        def fetch(wanted: Sequence[int]) -> Mapping[int, bytes]:
            bodies = cache.fetch([where[t] for t in wanted], parallel=gdc.parallel)
            return dict(zip(wanted, bodies, strict=True))

        return Tiles(
            present=range(len(where)),
            sizes={t: where[t][1] for t in tiles},
            fetch=fetch,
            decode=lambda tile, data: decode_tile(page, data, item, tile),
            facts={"located_by": "SVS tile directory", "note": ""},
            level_bytes=sum(length for _, length in where),
        )

    return OpenedLevel(
        level=TiledLevel(page.size_px, page.tile_px, None),
        spacing_um=(spacing, spacing),
        base_size_px=levels[0].size_px if levels else None,
        facts={"page": page.index, "reason": choice.reason, "transfer_syntax": f"tiff-compression-{page.compression}"},
        locate=locate,
        fetched=lambda: client.bytes_fetched,
        requests=lambda: client.requests,
    )
