"""The GDC source: an SVS page read by Range requests (or the file downloaded whole), reduced and written."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyvips

from slidestock.errors import DecodeError, FetchError, RangeNotSupportedError, SlidestockError
from slidestock.image.output import write_output
from slidestock.image.reduce import openslide_level_reduced
from slidestock.jobs.slide import SlideJob, slide_target
from slidestock.plan.levels import Level, choose_level, output_size_px
from slidestock.provenance import Facts, Fetched, Part, Timed, Warned
from slidestock.read.gdcapi import BLOCK_BYTES, BlockCache, GdcClient
from slidestock.read.svs import PageTiles, choose_page, reduce_page
from slidestock.read.tiff import ReadRange

log = logging.getLogger(__name__)


# GDC files up to this size are downloaded whole: range reads of their directory and tiles would move as much.
SMALL_FILE_BYTES = 4 * BLOCK_BYTES


# What a level read yields: its facts as they are known, then (returned) the output and its level's facts.
LevelRead = Generator[Part, None, "Output"]


@dataclass(frozen=True)
class Output:
    """A page at the target's size, the page's µm/px (None: unknown) and its size."""

    image: pyvips.Image
    spacing_um: float | None
    level_size_px: tuple[int, int]


def fetch_and_downsample(job: SlideJob) -> Iterator[Part]:
    """Read the SVS directory with Range requests, fetch only the chosen page's tiles, downsample.

    With ``mode: whole``, when the server ignores Range, or for a file no larger than the
    directory reads would be, the whole file is downloaded (resumable, checked against the
    manifest md5) and deleted after. Yields what it learns as it goes.
    """
    plan = job.plan
    if job.gdc is None:
        raise SlidestockError(f"{plan.slide_id}: a GDC slide, but no gdc settings were given")
    file_id, size = plan.gdc_file_id, plan.instance_size
    client = GdcClient(job.gdc.api, job.gdc.token, attempts=job.attempts)
    item = f"{plan.slide_id} (GDC {file_id})"
    t0 = time.monotonic()
    yield Facts("source", {"url": f"{job.gdc.api.rstrip('/')}/data/{file_id}", "gdc_file_id": file_id})
    yield Facts("gdc", {"mode": job.gdc.mode, "file_size_bytes": size})
    small = size <= SMALL_FILE_BYTES
    with tempfile.TemporaryDirectory(prefix="slidestock-", dir=job.tmpdir) as scratch:
        whole = _svs_whole(client, file_id, size, plan.md5, Path(scratch), job, item)
        if job.gdc.mode == "range" and small:
            # Its directory reads alone would move about this much: the file whole (size and md5 checked) costs less.
            yield Facts("gdc", {"mode": f"whole (a file of {size} bytes: no larger than its directory reads)"})
            output = yield from whole
        elif job.gdc.mode == "range":
            _check_size(client, file_id, size)
            try:
                output = yield from _svs_level(BlockCache(client, file_id, size), job, item)
            except (RangeNotSupportedError, DecodeError) as err:
                why = "server ignored Range" if isinstance(err, RangeNotSupportedError) else f"range read failed: {err}"
                log.warning("%s: %s; downloading the whole file", item, why)
                yield Facts("gdc", {"mode": f"whole ({why})"})
                output = yield from whole
        else:
            output = yield from whole
        yield Fetched(client.bytes_fetched)
        yield Facts("gdc", {"requests": client.requests, "api_bytes": client.api_bytes})
        xy = None if output.spacing_um is None else (output.spacing_um, output.spacing_um)  # None: the fallback's size
        yield write_output(job, slide_target(job, xy), output.image, xy, output.level_size_px)
    yield Timed({"fetch_and_downsample": round(time.monotonic() - t0, 3)})


def _check_size(client: GdcClient, file_id: str, size: int) -> None:
    """The file the API serves is the size the manifest says (before range reads trust the manifest's size)."""
    meta = client.metadata(file_id)
    if int(meta["file_size"]) != size:
        raise FetchError(f"{file_id}: the GDC API says {meta['file_size']} bytes; the manifest says {size}")


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
            return (yield from _svs_level(LocalFile(read), job, item))
        except DecodeError as ours:
            log.warning("%s: %s; trying OpenSlide", item, ours)
            return (yield from _openslide_level(local, job, item, ours))


class LocalFile:
    """A downloaded file as the page reader's source: its reads, and its tiles read the same way."""

    def __init__(self, read: ReadRange) -> None:
        self.read = read

    def fetch(self, ranges: list[tuple[int, int]], parallel: int = 1) -> list[bytes]:
        return [self.read(offset, length) for offset, length in ranges]


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
            Level.of_page(i, dims, None if base_um is None else base_um * slide.level_downsamples[i], "openslide")
            for i, dims in enumerate(slide.level_dimensions)
        ]
        choice = choose_level(levels, job.settings.target, slide=item)
        index = choice.level.page or 0
        out_px = _output_px(job, choice.level.size_px, choice.spacing_um)
        image = openslide_level_reduced(slide, index, choice.level.size_px, out_px).image
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
    return Output(image, choice.spacing_um, choice.level.size_px)


def _output_px(job: SlideJob, level_px: tuple[int, int], spacing_um: float | None) -> tuple[int, int]:
    xy = None if spacing_um is None else (spacing_um, spacing_um)
    return output_size_px(level_px, xy, slide_target(job, xy))


def _svs_level(source: BlockCache | LocalFile, job: SlideJob, item: str) -> LevelRead:
    """Choose the page by the level rule, say why, and reduce its tiles (fetched a row at a time) to the output."""
    chosen = choose_page(source.read, job.settings.target, item)
    page, choice = chosen.page, chosen.choice
    for note in chosen.notes:
        log.warning("%s: %s", item, note)
    yield Warned(chosen.notes)
    parallel = job.gdc.parallel if job.gdc else 1
    tiles = PageTiles(page, source.read, lambda ranges: source.fetch(ranges, parallel), item)
    yield Facts(
        "level",
        {
            "reason": choice.reason,
            "page": page.index,
            "n_levels": len(chosen.levels),
            "size_px": list(page.size_px),
            "spacing_um": choice.spacing_um,
            "spacing_derived": choice.spacing_derived,
            "transfer_syntax": f"tiff-compression-{page.compression}",
            "skipped_pages": [f"{p.index}:{p.kind}" for p in chosen.pages if p.kind != "level"],
            "page_tile_bytes": tiles.tile_bytes,
        },
    )
    reduced = reduce_page(tiles, _output_px(job, page.size_px, choice.spacing_um), threads=job.threads)
    yield Facts("level", {"decode_shrink": reduced.decode_shrink, "lanczos_factor": reduced.lanczos_factor})
    return Output(reduced.image, choice.spacing_um, page.size_px)
