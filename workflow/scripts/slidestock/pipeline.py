"""One slide from plan to output: fetch the chosen level, downsample, record provenance.

A slide that fails for a reason slidestock understands (a wrong size, a
corrupt file, no usable level) is recorded as failed in its JSON with the
reason, and leaves no image; the other slides go on. Anything else is a bug
and propagates, failing the job.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyvips

from slidestock.dicomlevel import decode_shrink, read_level
from slidestock.downsample import resize_exact, tissue_fraction, tissue_mask, write_image
from slidestock.errors import DecodeError, FetchError, SlidestockError
from slidestock.fetch import fetch_object, s5cmd_binary
from slidestock.gdc import BlockCache, GdcClient, RangeNotSupportedError, fetch_ranges
from slidestock.levels import Level, Target, choose_level, output_size_px
from slidestock.provenance import sha256_file, software_versions, write_json
from slidestock.svs import decode_page, page_levels
from slidestock.tiff import ReadRange, read_pages, tile_locations

log = logging.getLogger(__name__)
# Files written beside a slide's image: {slide}.<name>.png
SIDE_FILES = ("mask", "label", "overview")
TileGetter = Callable[[list[tuple[int, int]]], list[bytes]]


@dataclass(frozen=True)
class GdcSettings:
    """How to reach the GDC API (``gdc`` in the config); the token is never logged or recorded."""

    api: str
    token: str | None = field(default=None, repr=False)
    mode: str = "range"
    parallel: int = 4


def read_token(path: Path | None) -> str | None:
    """The GDC token in ``path`` (surrounding whitespace removed), or None."""
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except OSError as err:
        raise SlidestockError(f"gdc.token_file: cannot read {str(path)!r}: {err.strerror}") from None
    if not token:
        raise SlidestockError(f"gdc.token_file: {str(path)!r} is empty; expected a GDC token")
    return token


@dataclass(frozen=True)
class SlideJob:
    """Everything one slide's job needs, from its plan row and the config."""

    plan: Mapping[str, str]
    target: Target
    fmt: str
    endpoint: str
    attempts: int
    image_path: Path
    json_path: Path
    tmpdir: Path
    gdc: GdcSettings | None = None
    quality: int = 90
    pyramid: bool = False
    tissue_mask: bool = False
    backend: str = "pyvips"
    associated: tuple[str, ...] = ()


def _base_record(job: SlideJob) -> dict[str, Any]:
    plan = job.plan
    return {
        "slide_id": plan["slide_id"],
        "status": "failed",
        "error": None,
        "source": {
            "SeriesInstanceUID": plan["SeriesInstanceUID"],
            "SOPInstanceUID": plan["SOPInstanceUID"] or None,
            "url": plan["url"] or None,
            "endpoint": job.endpoint,
        },
        "series_size_bytes": int(plan["series_size_bytes"] or 0),
        "bytes_fetched": 0,
        "level": {
            "reason": plan["reason"],
            "n_levels": int(plan["n_levels"] or 0),
            "transfer_syntax": plan["transfer_syntax"] or None,
            "size_px": [int(plan["level_columns"]), int(plan["level_rows"])] if plan["level_columns"] else None,
            "index_spacing_um": float(plan["level_spacing_um"]) if plan["level_spacing_um"] else None,
            "spacing_derived": plan["spacing_derived"] == "true",
        },
        "target": {"mpp": job.target.mpp, "max_px": job.target.max_px, "format": job.fmt},
        "output": None,
    }


def side_path(job: SlideJob, name: str) -> Path:
    """``results/slides/{slide}.{name}.png``: a file written beside the slide's image."""
    return job.image_path.with_name(f"{job.image_path.stem}.{name}.png")


def _plan_spacing(plan: Mapping[str, str]) -> tuple[float, float] | None:
    if not plan["level_spacing_um"]:
        return None
    spacing = float(plan["level_spacing_um"])
    return (spacing, spacing)


def run_slide(job: SlideJob) -> dict[str, Any]:
    """Process one slide and write its JSON record; returns the record."""
    start = time.monotonic()
    record = _base_record(job)
    record["started_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    record["software"] = software_versions(s5cmd_binary())
    job.tmpdir.mkdir(parents=True, exist_ok=True)
    try:
        if job.plan["status"] != "planned":
            raise SlidestockError(job.plan["reason"])
        if job.plan["url"].startswith("gdc:"):
            _gdc_fetch_and_downsample(job, record)
        else:
            _fetch_and_downsample(job, record)
        record["status"] = "done"
    except SlidestockError as err:
        log.error("%s failed: %s", job.plan["slide_id"], err)
        record["error"] = str(err)
        record["output"] = None
        # Nothing of an earlier, finished run of this slide may outlive its failure.
        for stale in (job.image_path, *(side_path(job, name) for name in SIDE_FILES)):
            stale.unlink(missing_ok=True)
    record.setdefault("timings_s", {})["total"] = round(time.monotonic() - start, 3)
    write_json(job.json_path, record)
    return record


def _fetch_and_downsample(job: SlideJob, record: dict[str, Any]) -> None:
    plan = job.plan
    with tempfile.TemporaryDirectory(prefix="slidestock-", dir=job.tmpdir) as scratch:
        local = Path(scratch) / f"{plan['slide_id']}.dcm"
        fetched = fetch_object(plan["url"], local, int(plan["instance_size"]), job.endpoint, attempts=job.attempts)
        record["bytes_fetched"] = fetched.bytes_fetched
        record["fetch_attempts"] = fetched.attempts
        t0 = time.monotonic()
        planned_scale = int(plan["output_columns"]) / int(plan["level_columns"])
        shrink = decode_shrink(plan["transfer_syntax"], planned_scale) if job.backend == "pyvips" else 1
        level = read_level(local, item=f"{plan['slide_id']} ({plan['url']})", shrink=shrink)
        record["level"]["decode_shrink"] = level.shrink
        # The header's full-precision spacing beats the index's two significant figures.
        spacing = level.spacing_xy_um or _plan_spacing(plan)
        record["level"]["header_spacing_um"] = level.spacing_xy_um and list(level.spacing_xy_um)
        record["level"]["photometric"] = level.photometric
        record["level"]["organization"] = level.organization
        record["level"]["missing_tiles"] = level.missing_tiles
        if spacing is None:
            raise SlidestockError(
                f"{plan['slide_id']}: the level has no pixel spacing in header or index; "
                "expected one to size the output and write its resolution"
            )
        record["level"]["icc_profile_bytes"] = len(level.icc_profile or b"")
        record["level"]["backend"] = job.backend
        image = level.image if job.backend == "pyvips" else _openslide_whole_level(local, level.size_px)
        if level.icc_profile:
            image = image.copy()
            image.set_type(pyvips.GValue.blob_type, "icc-profile-data", level.icc_profile)
        _write_output(job, record, image, spacing, level.size_px)
        _export_associated(job, record, Path(scratch))
        record["timings_s"] = {
            "fetch": round(fetched.seconds, 3),
            "downsample": round(time.monotonic() - t0, 3),
        }


def _export_associated(job: SlideJob, record: dict[str, Any], scratch: Path) -> None:
    """Fetch and write the slide's label and overview images as they are, when asked to."""
    exported: dict[str, Any] = {}
    for kind in job.associated:
        url = job.plan.get(f"{kind}_url", "")
        if not url:
            exported[kind] = None  # the series has no such instance
            continue
        local = scratch / f"{kind}.dcm"
        fetched = fetch_object(url, local, int(job.plan[f"{kind}_size"]), job.endpoint, attempts=job.attempts)
        record["bytes_fetched"] += fetched.bytes_fetched
        image = read_level(local, item=f"{job.plan['slide_id']} {kind} ({url})")
        path = side_path(job, kind)
        write_image(image.image, path, image.spacing_xy_um, "png")
        exported[kind] = {
            "path": str(path),
            "size_px": list(image.size_px),
            "spacing_um": None if image.spacing_xy_um is None else list(image.spacing_xy_um),
            "bytes_fetched": fetched.bytes_fetched,
            "sha256": sha256_file(path),
        }
        local.unlink()
    if job.associated:
        record["associated"] = exported


def _write_output(
    job: SlideJob,
    record: dict[str, Any],
    image: pyvips.Image,
    spacing: tuple[float, float],
    level_size: tuple[int, int] | None = None,
) -> None:
    """Resize ``image`` to the target, write it, and record what was written.

    ``spacing`` is the level's µm/px and ``level_size`` its full size; ``image``
    may be smaller when frames were shrunk while decoding, covering
    ``image size * (level size // image size)`` level pixels.
    """
    level_size = level_size or (image.width, image.height)
    size = output_size_px(level_size, spacing, job.target)
    shrink = (level_size[0] // image.width, level_size[1] // image.height)
    covered = (image.width * shrink[0], image.height * shrink[1])
    out_spacing = (spacing[0] * covered[0] / size[0], spacing[1] * covered[1] / size[1])
    output = resize_exact(image, size)
    write_image(output, job.image_path, out_spacing, job.fmt, job.quality, job.pyramid)
    record["scale"] = [size[0] / level_size[0], size[1] / level_size[1]]
    record["output"] = {
        "path": str(job.image_path),
        "format": job.fmt,
        "size_px": list(size),
        "spacing_um": list(out_spacing),
        "bytes": job.image_path.stat().st_size,
        "sha256": sha256_file(job.image_path),
    }
    if job.tissue_mask:
        mask = tissue_mask(output)
        mask_path = side_path(job, "mask")
        write_image(mask, mask_path, out_spacing, "png")
        record["output"]["tissue_fraction"] = tissue_fraction(mask)
        record["output"]["mask_path"] = str(mask_path)


def _gdc_fetch_and_downsample(job: SlideJob, record: dict[str, Any]) -> None:
    """Read the SVS directory with Range requests, fetch only the chosen page's tiles, downsample.

    With ``mode: whole``, or when the server ignores Range, the whole file is
    downloaded (resumable, checked against the manifest md5) and deleted after.
    """
    plan = job.plan
    if job.gdc is None:
        raise SlidestockError(f"{plan['slide_id']}: a GDC slide, but no gdc settings were given")
    file_id = plan["url"].removeprefix("gdc:")
    size = int(plan["instance_size"])
    client = GdcClient(job.gdc.api, job.gdc.token, attempts=job.attempts)
    meta = client.metadata(file_id)
    if int(meta["file_size"]) != size:
        raise FetchError(f"{file_id}: the GDC API says {meta['file_size']} bytes; the manifest says {size}")
    item = f"{plan['slide_id']} (GDC {file_id})"
    t0 = time.monotonic()
    record["source"]["url"] = f"{job.gdc.api.rstrip('/')}/data/{file_id}"
    record["source"]["gdc_file_id"] = file_id
    record["gdc"] = {"mode": job.gdc.mode, "file_size_bytes": size}
    with tempfile.TemporaryDirectory(prefix="slidestock-", dir=job.tmpdir) as scratch:
        if job.gdc.mode == "range":
            try:
                cache = BlockCache(client, file_id, size)
                parallel = job.gdc.parallel
                image = _svs_level(cache.read, job, record, item, lambda r: fetch_ranges(client, file_id, r, parallel))
            except (RangeNotSupportedError, DecodeError) as err:
                why = "server ignored Range" if isinstance(err, RangeNotSupportedError) else f"range read failed: {err}"
                log.warning("%s: %s; downloading the whole file", item, why)
                record["gdc"]["mode"] = f"whole ({why})"
                image = _svs_whole(client, file_id, size, plan["md5"], Path(scratch), job, record, item)
        else:
            image = _svs_whole(client, file_id, size, plan["md5"], Path(scratch), job, record, item)
        record["bytes_fetched"] = client.bytes_fetched
        record["gdc"]["requests"] = client.requests
        spacing = record["level"]["spacing_um"]
        _write_output(job, record, image, (spacing, spacing))
    record["timings_s"] = {"fetch_and_downsample": round(time.monotonic() - t0, 3)}


def _svs_whole(
    client: GdcClient,
    file_id: str,
    size: int,
    md5: str,
    scratch: Path,
    job: SlideJob,
    record: dict[str, Any],
    item: str,
) -> pyvips.Image:
    """Download the whole file (md5-checked), then read its level with our TIFF reader or, failing that, OpenSlide."""
    local = scratch / f"{file_id}.svs"
    client.download(file_id, local, size, md5)
    record["gdc"]["md5_verified"] = True
    with local.open("rb") as handle:

        def read(offset: int, length: int) -> bytes:
            handle.seek(offset)
            return handle.read(length)

        try:
            return _svs_level(read, job, record, item, lambda ranges: [read(o, n) for o, n in ranges])
        except DecodeError as ours:
            log.warning("%s: %s; trying OpenSlide", item, ours)
            return _openslide_level(local, job, record, item, ours)


def _openslide_level(path: Path, job: SlideJob, record: dict[str, Any], item: str, why: DecodeError) -> pyvips.Image:
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
                  None if base_um is None else base_um * slide.level_downsamples[i], "openslide", 0)
            for i, dims in enumerate(slide.level_dimensions)
        ]  # fmt: skip
        choice = choose_level(levels, job.target, slide=item)
        index = int(choice.level.sop_instance_uid.removeprefix("page"))
        image = openslide_region(slide, index, choice.level.size_px)
    record["level"].update(
        reason=f"{choice.reason} (read with OpenSlide: {why})",
        page=index,
        n_levels=len(levels),
        size_px=list(choice.level.size_px),
        spacing_um=choice.spacing_um,
        spacing_derived=choice.spacing_derived,
        transfer_syntax="openslide",
    )
    return image


def _openslide_whole_level(path: Path, size_px: tuple[int, int]) -> pyvips.Image:
    """The one level of a downloaded DICOM file, decoded by OpenSlide (``target.backend: openslide``)."""
    import openslide

    with openslide.OpenSlide(str(path)) as slide:
        if slide.level_dimensions[0] != size_px:
            raise DecodeError(f"{path.name}: OpenSlide sees {slide.level_dimensions[0]} px; the header says {size_px}")
        return openslide_region(slide, 0, size_px)


def openslide_region(slide: Any, level: int, size_px: tuple[int, int]) -> pyvips.Image:
    """A whole OpenSlide level as an RGB image; transparent (missing) areas become white."""
    import numpy as np

    rgba = np.ascontiguousarray(np.asarray(slide.read_region((0, 0), level, size_px)))
    image = pyvips.Image.new_from_array(rgba).copy(interpretation="srgb")
    flat: pyvips.Image = image.flatten(background=[255, 255, 255]).cast("uchar")
    return flat


def _svs_level(
    read: ReadRange, job: SlideJob, record: dict[str, Any], item: str, get_tiles: TileGetter
) -> pyvips.Image:
    """Choose the page by the level rule, record why, and decode its tiles from ``get_tiles``."""
    pages = read_pages(read, item)
    levels = page_levels(pages)
    choice = choose_level(levels, job.target, slide=item)
    page = pages[int(choice.level.sop_instance_uid.removeprefix("page"))]
    record["level"].update(
        reason=choice.reason,
        page=page.index,
        n_levels=len(levels),
        size_px=list(page.size_px),
        spacing_um=choice.spacing_um,
        spacing_derived=choice.spacing_derived,
        transfer_syntax=f"tiff-compression-{page.compression}",
        skipped_pages=[f"{p.index}:{p.kind}" for p in pages if p.kind != "level"],
    )
    tiles = get_tiles(tile_locations(read, page, item))
    return decode_page(page, tiles, item)
