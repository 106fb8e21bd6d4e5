"""A batch of slides' patches: for each, choose them on its tissue, fetch the frames they cover, cut and record.

Each slide's record (``results/patches/{slide}.json``) holds its patches'
rows and the digest of what they depend on (its patch plan row, the patch
settings, its low-resolution image and slidestock's version): a re-run skips
slides whose record matches and whose files are all there. One slide's failure
never stops the batch; a failed slide leaves no patch behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyvips

from slidestock.errors import FetchError, SlidestockError
from slidestock.objectstore import RangeClient
from slidestock.output import tissue_mask, write_image
from slidestock.patches import PatchSettings, choose_patches, crop_px, cut_patches, patch_tiles, span_px
from slidestock.planrow import PlanRow, slide_plan_text
from slidestock.provenance import SLIDESTOCK_VERSION, sha256_file, write_json, write_text_atomic
from slidestock.remote import RemoteObject, fetch_frames, locate_frames, read_level_header

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

PATCH_COLUMNS = (
    "slide_id",
    "patch_id",
    "path",
    "level_columns",
    "level_rows",
    "level_spacing_um",
    "x_level_px",
    "y_level_px",
    "x_px",
    "y_px",
    "x_um",
    "y_um",
    "size_px",
    "mpp",
    "tissue_fraction",
    "bytes_fetched",
    "sha256",
)


@dataclass(frozen=True)
class PatchJob:
    """One slide's patch work: its patch plan row, the slide's low-resolution image and where things go."""

    plan: PlanRow
    base_size_px: tuple[int, int] | None
    image_path: Path
    folder: Path
    json_path: Path


def patch_digest(job: PatchJob, settings: PatchSettings) -> str:
    """What a slide's patches depend on; the image's bytes stand for the mask they are placed on."""
    image = sha256_file(job.image_path) if job.image_path.is_file() else ""
    text = slide_plan_text(job.plan) + json.dumps([asdict(settings), image, SLIDESTOCK_VERSION], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def is_finished(job: PatchJob, digest: str) -> bool:
    try:
        record = json.loads(job.json_path.read_text())
    except (OSError, ValueError):
        return False
    if record.get("digest") != digest:
        return False
    if record.get("status") == "failed":
        return record.get("retryable") is False
    return record.get("status") == "done" and all(
        (job.folder.parent.parent / row["path"]).is_file() for row in record.get("patches", [])
    )


def run_patch_batch(jobs: Sequence[PatchJob], settings: PatchSettings, client: RangeClient) -> list[dict[str, Any]]:
    """Every slide's record, new or kept; the slides are done one after another."""
    records = []
    for job in jobs:
        digest = patch_digest(job, settings)
        if is_finished(job, digest):
            log.info("%s: patches done before for this plan and settings; kept", job.plan.slide_id)
            records.append(json.loads(job.json_path.read_text()))
            continue
        record = _run_slide(job, settings, client, digest)
        write_json(job.json_path, record)
        records.append(record)
    return records


def _run_slide(job: PatchJob, settings: PatchSettings, client: RangeClient, digest: str) -> dict[str, Any]:
    plan, started = job.plan, time.monotonic()
    record: dict[str, Any] = {
        "slide_id": plan.slide_id,
        "status": "failed",
        "digest": digest,
        "source": {"url": plan.url or None, "SOPInstanceUID": plan.sop_instance_uid or None},
        "settings": asdict(settings),
        "level": {"reason": plan.reason, "size_px": None, "spacing_um": None},
        "requested": settings.n_per_slide if settings.mode == "random" else None,
        "patches": [],
    }
    shutil.rmtree(job.folder, ignore_errors=True)
    try:
        record.update(_cut_slide(job, settings, client))
        record["status"] = "done"
    except Exception as err:  # one slide never stops its batch
        shutil.rmtree(job.folder, ignore_errors=True)
        record["retryable"] = isinstance(err, FetchError)
        if isinstance(err, SlidestockError):
            log.error("%s: patches failed: %s", plan.slide_id, err)
            record["error"] = str(err)
        else:
            log.exception("%s: patches failed unexpectedly", plan.slide_id)
            record["error"] = f"{plan.slide_id}: unexpected {type(err).__name__}: {err}"
    record["seconds"] = round(time.monotonic() - started, 3)
    return record


def _cut_slide(job: PatchJob, settings: PatchSettings, client: RangeClient) -> dict[str, Any]:
    plan = job.plan
    if not plan.planned:
        raise SlidestockError(f"{plan.slide_id}: no level for patches: {plan.reason}")
    if plan.source != "idc":
        raise SlidestockError(f"{plan.slide_id}: patches are cut from IDC's DICOM levels; GDC SVS files are not yet")
    if plan.parts:
        raise SlidestockError(
            f"{plan.slide_id}: the patch level is a concatenation of {len(plan.parts)} instances; "
            "patches are cut from single-instance levels only (so far)"
        )
    if not job.image_path.is_file():
        raise SlidestockError(f"{plan.slide_id}: no low-resolution image at {job.image_path} to place patches on")
    obj = RemoteObject(client, plan.url, plan.instance_size)
    level = read_level_header(obj, plan.slide_id)
    header = level.header
    spacing = header.spacing_xy_um or plan.level_spacing_um
    if spacing is None:
        raise SlidestockError(f"{plan.slide_id}: the patch level has no pixel spacing; expected one to size patches")
    if spacing[0] > settings.mpp * 1.0001 or spacing[1] > settings.mpp * 1.0001:
        raise SlidestockError(
            f"{plan.slide_id}: the finest level is {spacing[0]:.4g} µm/px, coarser than patches.mpp {settings.mpp}; "
            "patches are never upsampled"
        )
    span = span_px(spacing, settings)
    mask = mask_of(job.image_path)
    patches = choose_patches(mask, header.size_px, span, settings, plan.slide_id)
    crop = crop_px(span)
    tiles = sorted({t for p in patches for t in patch_tiles(p, crop, header)})
    located = locate_frames(obj, level, tiles)
    directory_bytes = obj.fetched
    frame_bytes_of = {t: f.parts[0][1] for t, f in located.frames.items()}

    def frame_bytes(wanted: Sequence[int]) -> Mapping[int, bytes]:
        return fetch_frames(obj, {t: located.frames[t] for t in wanted}, located.items, plan.slide_id)

    rows = []
    job.folder.mkdir(parents=True, exist_ok=True)
    scale0 = (
        (job.base_size_px[0] / header.size_px[0], job.base_size_px[1] / header.size_px[1])
        if job.base_size_px
        else (1.0, 1.0)
    )
    for patch, image in cut_patches(patches, header, span, settings.size_px, frame_bytes, located.frames):
        name = f"{plan.slide_id}_{patch.number:05d}.png"
        path = job.folder / name
        write_image(image, path, (settings.mpp, settings.mpp), "png")
        own = sum(frame_bytes_of.get(t, 0) for t in patch_tiles(patch, crop, header))
        rows.append(
            {
                "slide_id": plan.slide_id,
                "patch_id": f"{plan.slide_id}_{patch.number:05d}",
                "path": str(Path(job.folder.name) / name),
                "level_columns": header.size_px[0],
                "level_rows": header.size_px[1],
                "level_spacing_um": round(spacing[0], 6),
                "x_level_px": patch.x,
                "y_level_px": patch.y,
                "x_px": round(patch.x * scale0[0]),
                "y_px": round(patch.y * scale0[1]),
                "x_um": round(patch.x * spacing[0], 3),
                "y_um": round(patch.y * spacing[1], 3),
                "size_px": settings.size_px,
                "mpp": settings.mpp,
                "tissue_fraction": patch.tissue,
                "bytes_fetched": own,
                "sha256": sha256_file(path),
            }
        )
    frames_total = sum(frame_bytes_of.values())
    fewer = settings.mode == "random" and len(patches) < settings.n_per_slide
    return {
        "level": {
            "reason": plan.reason,
            "size_px": list(header.size_px),
            "spacing_um": [round(spacing[0], 6), round(spacing[1], 6)],
            "tile_px": list(header.tile_px),
            "instance_bytes": plan.instance_size,
            "series_size_bytes": plan.series_size_bytes,
        },
        "frames": {
            "located_by": located.method,
            "note": located.note,
            "covered": len(located.frames),
            "covered_bytes": frames_total,
        },
        "bytes_fetched": obj.fetched,
        "header_bytes": level.header_bytes,
        "directory_bytes": directory_bytes - level.header_bytes,
        "requests": obj.requests,
        "tissue_pixels": int(mask.sum()),
        "note": (
            f"{len(patches)} of {settings.n_per_slide} patches: too little tissue (at least {settings.min_tissue:.0%} "
            "of a patch) for more without overlap"
            if fewer
            else ""
        ),
        "patches": rows,
    }


def write_patch_table(records: Sequence[Mapping[str, Any]], out: Path) -> int:
    """A batch's outcome, one line per slide; returns how many failed for a reason a re-run may get past."""
    lines = ["slide_id\tstatus\tn_patches\tbytes_fetched\terror\tretryable\n"]
    retryable = 0
    for record in records:
        again = record["status"] == "failed" and record.get("retryable") is not False
        retryable += again
        error = " ".join(str(record.get("error") or "").split())
        flag = "" if record["status"] == "done" else str(again).lower()
        lines.append(
            f"{record['slide_id']}\t{record['status']}\t{len(record.get('patches', []))}\t"
            f"{record.get('bytes_fetched', 0)}\t{error}\t{flag}\n"
        )
    write_text_atomic(out, "".join(lines))
    return retryable


def mask_of(image_path: Path) -> np.ndarray:
    """The tissue mask patches are placed on: the stock's, from the slide's low-resolution image."""
    return np.asarray(tissue_mask(pyvips.Image.new_from_file(str(image_path))).numpy() > 0)


def patch_rows(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per patch of the finished slides, in cohort then patch order (``patches.parquet``)."""
    import pandas as pd

    rows = [row for record in records if record.get("status") == "done" for row in record.get("patches", [])]
    return pd.DataFrame(rows, columns=list(PATCH_COLUMNS))


def read_patch_records(tables: Sequence[Path], folder: Path) -> list[dict[str, Any]]:
    """The records of the slides the batch tables list, in their order."""
    records = []
    for table in tables:
        for line in table.read_text().splitlines()[1:]:
            slide_id = line.split("\t", 1)[0]
            records.append(json.loads((folder / f"{slide_id}.json").read_text()))
    return records
