"""The IDC source: a slide's level fetched by the batch's ``s5cmd run``, read, reduced and written."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from slidestock.errors import FetchError
from slidestock.image.output import with_icc_profile, write_image, write_output
from slidestock.image.reduce import openslide_reduced, reduce_level
from slidestock.jobs.slide import SlideJob, level_downloads, level_file, side_path, slide_target
from slidestock.plan.levels import output_size_px
from slidestock.provenance import Associated, Facts, Fetched, Part, Timed, Warned, sha256_file
from slidestock.read.dicom import LevelHeader
from slidestock.read.fetch import FetchResult
from slidestock.read.local import read_concatenation, read_header
from slidestock.records import AssociatedImage

log = logging.getLogger(__name__)


def prefetched(fetched: Mapping[Path, FetchResult | FetchError], local: Path) -> FetchResult:
    result = fetched.get(local)
    if result is None:
        raise FetchError(f"{local.name}: not in the batch's downloads")
    if isinstance(result, FetchError):
        raise result
    return result


def fetch_and_downsample(job: SlideJob, fetched: Mapping[Path, FetchResult | FetchError]) -> Iterator[Part]:
    """Read the slide's downloaded level, reduce it, write the output; yield what it learns as it goes."""
    plan = job.plan
    files = [item.dest for item in level_downloads(job)]
    n_parts = len(files) if len(files) > 1 else 0
    results = [prefetched(fetched, path) for path in files]
    fetch_s, attempts = max(r.seconds for r in results), max(r.attempts for r in results)
    level_bytes = sum(r.bytes_fetched for r in results)
    log.info("%s: %d bytes fetched (attempt %d)", plan.url, level_bytes, attempts)
    yield Fetched(level_bytes, attempts)
    t0 = time.monotonic()
    item = f"{plan.slide_id} ({plan.url})"
    header = read_concatenation(files, item) if n_parts else read_header(files[0], item=item)
    yield Facts("level", _header_facts(header, n_parts, job.settings.backend))
    # The header's full-precision spacing beats the index's two significant figures.
    spacing = header.spacing_xy_um or plan.level_spacing_um
    target = slide_target(job, spacing)
    size = output_size_px(header.size_px, spacing, target)
    if job.settings.backend == "pyvips":
        reduced = reduce_level(header, size, threads=job.threads)
    else:
        reduced = openslide_reduced(files[0], header.size_px, header.tile_px[1], size)
    yield Facts("level", {"decode_shrink": reduced.decode_shrink, "lanczos_factor": reduced.lanczos_factor})
    for warning in reduced.warnings:
        log.warning("%s: %s", plan.slide_id, warning)
    yield Warned(reduced.warnings)
    yield write_output(job, target, with_icc_profile(reduced.image, header.icc_profile), spacing, header.size_px)
    yield from _export_associated(job, fetched)
    yield Timed({"fetch": round(fetch_s, 3), "downsample": round(time.monotonic() - t0, 3)})


def _header_facts(header: LevelHeader, n_parts: int, backend: str) -> dict[str, Any]:
    """What the level's own header says, for the record."""
    facts: dict[str, Any] = {"concatenation_parts": n_parts} if n_parts else {}
    facts.update(
        header_spacing_um=header.spacing_xy_um and list(header.spacing_xy_um),
        photometric=header.photometric,
        organization=header.organization,
        missing_tiles=header.missing_tiles,
        icc_profile_bytes=len(header.icc_profile or b""),
        backend=backend,
    )
    return facts


def _export_associated(job: SlideJob, fetched: Mapping[Path, FetchResult | FetchError]) -> Iterator[Part]:
    """Write the slide's label and overview images (fetched with its batch) as they are, when asked to."""
    exported: dict[str, AssociatedImage | None] = {}
    for kind in job.settings.associated:
        if kind not in job.plan.associated:
            exported[kind] = None  # the series has no such instance
            continue
        url = job.plan.associated[kind][0]
        local = level_file(job, kind)
        result = prefetched(fetched, local)
        yield Fetched(result.bytes_fetched)
        header = read_header(local, item=f"{job.plan.slide_id} {kind} ({url})")
        spacing = header.spacing_xy_um
        path = side_path(job, kind)
        write_image(reduce_level(header).image, path, spacing, "png")  # as it is: its own size
        exported[kind] = {
            "path": str(path),
            "size_px": list(header.size_px),
            "spacing_um": None if spacing is None else list(spacing),
            "bytes_fetched": result.bytes_fetched,
            "sha256": sha256_file(path),
        }
    if job.settings.associated:
        yield Associated(exported)
