"""The GDC source: an SVS page read by Range requests (or the file downloaded whole), reduced and written."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from functools import partial
from pathlib import Path

import pyvips

from slidestock.errors import DecodeError, FetchError, SlidestockError
from slidestock.gdcapi import BLOCK_BYTES, BlockCache, GdcClient, RangeNotSupportedError, fetch_ranges
from slidestock.levels import Level, choose_level
from slidestock.output import write_output
from slidestock.provenance import Facts, Fetched, Part, Timed
from slidestock.reduce import openslide_region
from slidestock.slide import SlideJob, slide_target
from slidestock.svs import choose_page, decode_page
from slidestock.tiff import ReadRange, tile_locations

log = logging.getLogger(__name__)


TileGetter = Callable[[list[tuple[int, int]]], list[bytes]]


# GDC files up to this size are downloaded whole: range reads of their directory and tiles would move as much.
SMALL_FILE_BYTES = 4 * BLOCK_BYTES


# What a level read yields: its facts as they are known, then (returned) the image and the level's µm/px.
LevelRead = Generator[Part, None, tuple[pyvips.Image, float | None]]


def fetch_and_downsample(job: SlideJob) -> Iterator[Part]:
    """Read the SVS directory with Range requests, fetch only the chosen page's tiles, downsample.

    With ``mode: whole``, or when the server ignores Range, the whole file is
    downloaded (resumable, checked against the manifest md5) and deleted after.
    Yields what it learns as it goes.
    """
    plan = job.plan
    if job.gdc is None:
        raise SlidestockError(f"{plan.slide_id}: a GDC slide, but no gdc settings were given")
    file_id, size = plan.gdc_file_id, plan.instance_size
    client = GdcClient(job.gdc.api, job.gdc.token, attempts=job.attempts)
    meta = client.metadata(file_id)
    if int(meta["file_size"]) != size:
        raise FetchError(f"{file_id}: the GDC API says {meta['file_size']} bytes; the manifest says {size}")
    item = f"{plan.slide_id} (GDC {file_id})"
    t0 = time.monotonic()
    yield Facts("source", {"url": f"{job.gdc.api.rstrip('/')}/data/{file_id}", "gdc_file_id": file_id})
    yield Facts("gdc", {"mode": job.gdc.mode, "file_size_bytes": size})
    with tempfile.TemporaryDirectory(prefix="slidestock-", dir=job.tmpdir) as scratch:
        whole = _svs_whole(client, file_id, size, plan.md5, Path(scratch), job, item)
        if job.gdc.mode == "range" and size <= SMALL_FILE_BYTES:
            # The directory reads alone would move about this much: the file whole costs no more.
            yield Facts("gdc", {"mode": f"whole (a file of {size} bytes: no larger than its directory reads)"})
            image, spacing = yield from whole
        elif job.gdc.mode == "range":
            try:
                cache = BlockCache(client, file_id, size)
                parallel = job.gdc.parallel
                tiles = partial(fetch_ranges, client, file_id, parallel=parallel)
                image, spacing = yield from _svs_level(cache.read, job, item, tiles)
            except (RangeNotSupportedError, DecodeError) as err:
                why = "server ignored Range" if isinstance(err, RangeNotSupportedError) else f"range read failed: {err}"
                log.warning("%s: %s; downloading the whole file", item, why)
                yield Facts("gdc", {"mode": f"whole ({why})"})
                image, spacing = yield from whole
        else:
            image, spacing = yield from whole
        yield Fetched(client.bytes_fetched)
        yield Facts("gdc", {"requests": client.requests})
        xy = None if spacing is None else (spacing, spacing)  # None: sized by the fallback
        yield write_output(job, slide_target(job, xy), image, xy)
    yield Timed({"fetch_and_downsample": round(time.monotonic() - t0, 3)})


def _svs_whole(
    client: GdcClient, file_id: str, size: int, md5: str, scratch: Path, job: SlideJob, item: str
) -> LevelRead:
    """Download the whole file (md5-checked), then read its level with our TIFF reader or, failing that, OpenSlide."""
    local = scratch / f"{file_id}.svs"
    client.download(file_id, local, size, md5)
    yield Facts("gdc", {"md5_verified": True})
    with local.open("rb") as handle:

        def read(offset: int, length: int) -> bytes:
            handle.seek(offset)
            return handle.read(length)

        try:
            return (yield from _svs_level(read, job, item, lambda ranges: [read(o, n) for o, n in ranges]))
        except DecodeError as ours:
            log.warning("%s: %s; trying OpenSlide", item, ours)
            return (yield from _openslide_level(local, job, item, ours))


def _openslide_level(path: Path, job: SlideJob, item: str, why: DecodeError) -> LevelRead:
    """The level rule over what OpenSlide sees in a local file (formats our reader does not cover)."""
    import openslide

    try:
        slide = openslide.OpenSlide(str(path))
    except openslide.OpenSlideError as err:
        raise DecodeError(f"{why}; OpenSlide cannot read it either: {err}") from err
    with slide:
        mpp = slide.properties.get(openslide.PROPERTY_NAME_MPP_X)
        base_um = float(mpp) if mpp else None
        levels = [
            Level(f"page{i}", f"page{i}", ("ORIGINAL", "PRIMARY", "VOLUME", "NONE"), dims,
                  None if base_um is None else base_um * slide.level_downsamples[i], "openslide", 0, True)
            for i, dims in enumerate(slide.level_dimensions)
        ]  # fmt: skip
        choice = choose_level(levels, job.settings.target, slide=item)
        index = int(choice.level.sop_instance_uid.removeprefix("page"))
        image = openslide_region(slide, index, choice.level.size_px)
    yield Facts(
        "level",
        {
            "reason": f"{choice.reason} (read with OpenSlide: {why})",
            "page": index,
            "n_levels": len(levels),
            "size_px": list(choice.level.size_px),
            "spacing_um": choice.spacing_um,
            "spacing_derived": choice.spacing_derived,
            "transfer_syntax": "openslide",
        },
    )
    return image, choice.spacing_um


def _svs_level(read: ReadRange, job: SlideJob, item: str, get_tiles: TileGetter) -> LevelRead:
    """Choose the page by the level rule, say why, and decode its tiles from ``get_tiles``."""
    page, choice, levels, pages = choose_page(read, job.settings.target, item)
    yield Facts(
        "level",
        {
            "reason": choice.reason,
            "page": page.index,
            "n_levels": len(levels),
            "size_px": list(page.size_px),
            "spacing_um": choice.spacing_um,
            "spacing_derived": choice.spacing_derived,
            "transfer_syntax": f"tiff-compression-{page.compression}",
            "skipped_pages": [f"{p.index}:{p.kind}" for p in pages if p.kind != "level"],
        },
    )
    tiles = get_tiles(tile_locations(read, page, item))
    return decode_page(page, tiles, item), choice.spacing_um
