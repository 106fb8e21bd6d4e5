"""A batch of slides' patches: for each, choose them on its tissue, fetch the frames they cover, cut and record.

Each slide's record (``results/patches/{slide}.json``) holds its patches'
rows and the digest of what they depend on (its patch plan row, the patch
settings, its low-resolution image and slidestock's version): a re-run skips
slides whose record matches and whose files are all there. One slide's failure
never stops the batch; a failed slide leaves no patch behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import tarfile
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyvips

from slidestock.errors import SlidestockError
from slidestock.image.output import tissue_mask, write_image
from slidestock.image.patches import Patch, TiledLevel, choose_patches, crop_px, cut_patches, patch_tiles, span_px
from slidestock.jobs.common import Progress, failure_of, map_threads, write_outcome_table
from slidestock.jobs.patchlevels import PatchLevel, open_level
from slidestock.jobs.slide import GdcSettings
from slidestock.plan.rows import PlanRow
from slidestock.provenance import sha256_file, write_json
from slidestock.read.objectstore import RangeClient
from slidestock.records import (
    PATCH_COLUMNS,
    RECORD_VERSION,
    PatchRecord,
    PatchRow,
    as_patch_record,
    coordinate_files,
    failed_for_good,
    read_record,
)
from slidestock.settings import PatchSettings
from slidestock.state import judge_one
from slidestock.tidy import NOT_OUTPUT, Stale, move_stale, run_of, stale_patch_files
from slidestock.train.layouts import clam_attributes, trident_attributes, write_coords_h5

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PatchJob:
    """One slide's patch work: its patch plan row, the slide's low-resolution image and where things go."""

    plan: PlanRow
    base_size_px: tuple[int, int] | None
    image_path: Path
    folder: Path
    json_path: Path
    gdc: GdcSettings | None = None
    attempts: int = 3
    # The level's place in the slide's pyramid (the patch plan's), finest 0; -1 when unknown.
    level_index: int = -1

    @property
    def h5_paths(self) -> tuple[Path, Path]:
        """The slide's coordinates as CLAM's and TRIDENT's patching steps write them."""
        clam, trident = coordinate_files(self.plan.slide_id)
        return self.json_path.with_name(clam), self.json_path.with_name(trident)


def patch_digest(job: PatchJob, settings: PatchSettings) -> str:
    """What a slide's patches depend on; the image's bytes stand for the mask they are placed on."""
    return settings.digest(job.plan, sha256_file(job.image_path) if job.image_path.is_file() else "")


def is_finished(job: PatchJob, digest: str, in_shard: Collection[str] = (), coordinates: bool = False) -> bool:
    """True when the slide's record says done (or failed for good) for this digest, and its patches are all there.

    A patch is there as its PNG file, or as a member of the batch's shard (``in_shard``: its member names), or
    with ``coordinates`` as a row of its record alone; a done slide's h5 files are there in every format.
    """
    found = read_record(job.json_path)
    if found is None:
        return False
    record = as_patch_record(found)
    if record.get("digest") != digest:
        return False
    if record["status"] == "failed":
        return failed_for_good(record)
    if not all(path.is_file() for path in job.h5_paths):
        return False
    if coordinates:
        return not any(row["path"] or row["shard"] for row in record.get("patches", []))
    return all(
        (row["path"] and (job.folder.parent / row["path"]).is_file()) or f"{row['patch_id']}.png" in in_shard
        for row in record.get("patches", [])
    )


def run_patch_batch(
    jobs: Sequence[PatchJob],
    settings: PatchSettings,
    client: RangeClient,
    shard: Path | None = None,
    name: str = "",
    threads: int = 1,
    coordinates: bool = False,
) -> list[PatchRecord]:
    """Every slide's record, new or kept, in the jobs' order; ``threads`` slides at a time, progress said as it goes.

    With ``shard`` (``patches.format: webdataset``), the batch's patches are
    then packed into that tar, and their PNG files removed; with ``coordinates``
    no pixels are fetched, and each row says how to read its patch later. First what the
    batch's slides have that their current settings do not account for (patches
    of other settings; the batch's shard once patches are PNG files) moves to
    ``results/stale/<run>/``.
    """
    move_stale_patches(jobs, settings, shard, name, "coordinates" if coordinates else None)
    members = shard_members(shard) if shard is not None else set()
    progress = Progress(f"{name} patches".strip(), len(jobs), time.monotonic())

    def one(job: PatchJob) -> PatchRecord:
        digest = patch_digest(job, settings)
        if is_finished(job, digest, members, coordinates):
            log.info("%s: patches done before for this plan and settings; kept", job.plan.slide_id)
            record = as_patch_record(json.loads(job.json_path.read_text()))
        else:
            record = _run_slide(job, settings, client, digest, coordinates)
            write_json(job.json_path, record)
        progress.count(record["status"] == "done")
        return record

    # Fetching, decoding and PNG writing release Python's lock: slides side by side use the job's cores.
    records = map_threads(one, jobs, threads)
    if shard is not None:
        pack_shard(jobs, records, shard)
    return records


def move_stale_patches(
    jobs: Sequence[PatchJob], settings: PatchSettings, shard: Path | None, name: str, patch_format: str | None = None
) -> None:
    """Move the patches of the batch's slides that are not of the stock any longer out of ``results/patches``."""
    if not jobs:
        return
    folder = jobs[0].json_path.parent
    states = [judge_one(job.plan, job.json_path, patch_digest(job, settings), "digest") for job in jobs]
    found = stale_patch_files(folder, states, patch_format or ("png" if shard is None else "webdataset"))
    png_shard = folder / "shards" / f"{name}.tar"
    if shard is None and png_shard.exists():  # patches are PNG files now: the batch's shard is of another config
        found.append(Stale(png_shard, NOT_OUTPUT))
    results, moving = folder.parent, {stale.path for stale in found}
    for stale, dest in move_stale(found, results, run_of(results), f"patches-{name}"):
        log.info("%s: moved %s to %s: %s", name, stale.path.name, dest, stale.why)
        record = folder / f"{stale.path.name}.json"
        if dest.is_dir() and record.is_file() and record not in moving:
            # A slide's PNG folder of another format: its record (the patches' rows and hashes) goes along as a
            # copy, since the slide's own record stays, to be written again for the current format.
            shutil.copy2(record, dest.with_name(record.name))


def shard_members(shard: Path) -> set[str]:
    """The member names of a batch's shard (none when there is none yet, or it cannot be read)."""
    try:
        with tarfile.open(shard) as tar:
            return set(tar.getnames())
    except (OSError, tarfile.TarError):
        return set()


def pack_shard(jobs: Sequence[PatchJob], records: Sequence[PatchRecord], shard: Path) -> None:
    """Write the batch's finished patches as one webdataset shard: ``{patch_id}.png`` and ``{patch_id}.json`` each.

    A patch made by this run comes from its PNG file, one kept from before from
    the old shard. Members are in cohort then patch order, with fixed times and
    owners, so the same patches give the same bytes. The PNG files are removed
    once the shard is in place; each record then names its shard.
    """
    shard.parent.mkdir(parents=True, exist_ok=True)
    partial = shard.with_suffix(".partial")
    with contextlib.ExitStack() as stack:
        old = stack.enter_context(tarfile.open(shard)) if shard.is_file() else None
        tar = stack.enter_context(tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT))
        stack.callback(partial.unlink, missing_ok=True)
        for job, record in zip(jobs, records, strict=True):
            if record["status"] != "done":
                continue
            for row in record["patches"]:
                png = job.folder.parent / row["path"]
                data = png.read_bytes() if row["path"] and png.is_file() else _member(old, f"{row['patch_id']}.png")
                # The patch is now a member of the shard, not a file of its own.
                row["shard"], row["member"], row["path"] = (
                    f"{shard.parent.name}/{shard.name}",
                    f"{row['patch_id']}.png",
                    "",
                )
                _add(tar, f"{row['patch_id']}.png", data)
                _add(tar, f"{row['patch_id']}.json", json.dumps(row, sort_keys=True).encode())
        tar.close()
        partial.replace(shard)
    for job, record in zip(jobs, records, strict=True):
        if record["status"] == "done":
            write_json(job.json_path, record)
        shutil.rmtree(job.folder, ignore_errors=True)


def _member(tar: tarfile.TarFile | None, name: str) -> bytes:
    handle = tar.extractfile(name) if tar is not None else None
    if handle is None:
        raise SlidestockError(f"{name}: neither its PNG file nor its old shard holds it; expected one of them")
    return handle.read()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def _run_slide(
    job: PatchJob, settings: PatchSettings, client: RangeClient, digest: str, coordinates: bool = False
) -> PatchRecord:
    plan, started = job.plan, time.monotonic()
    record: PatchRecord = {
        "record_version": RECORD_VERSION,
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
    for path in job.h5_paths:
        path.unlink(missing_ok=True)
    try:
        cut = _cut_slide(job, settings, client, coordinates)
    except Exception as err:  # one slide never stops its batch
        shutil.rmtree(job.folder, ignore_errors=True)
        for path in job.h5_paths:
            path.unlink(missing_ok=True)
        failure = failure_of(plan.slide_id, err, "patches")
        record["error"], record["retryable"] = failure["error"], failure["retryable"]
    else:
        record["status"], record["level"], record["frames"], record["patches"] = "done", cut.level, cut.frames, cut.rows
        record["bytes_fetched"], record["locating_bytes"] = cut.fetched, cut.locating
        record["requests"], record["tissue_pixels"] = cut.requests, cut.tissue_pixels
        record["warnings"], record["note"] = cut.warnings, cut.note
    record["seconds"] = round(time.monotonic() - started, 3)
    return record


@dataclass(frozen=True)
class Cut:
    """A slide's patches, cut: the level's facts, how the frames were found, the bytes and requests it took."""

    level: dict[str, Any]
    frames: dict[str, Any]
    rows: list[PatchRow]
    fetched: int
    locating: int
    requests: int
    tissue_pixels: int
    warnings: list[str]
    note: str


def _cut_slide(job: PatchJob, settings: PatchSettings, client: RangeClient, coordinates: bool = False) -> Cut:
    plan = job.plan
    if not plan.planned:
        # The stock's remedy for slides without spacing (target.fallback_max_px) does not apply to patches.
        reason = plan.reason.removeprefix(f"{plan.slide_id}: ").split(" (or set target.fallback_max_px")[0]
        raise SlidestockError(f"{plan.slide_id}: no level for patches: {reason}")
    if not job.image_path.is_file():
        raise SlidestockError(f"{plan.slide_id}: no low-resolution image at {job.image_path} to place patches on")
    opened = open_level(plan, job.base_size_px, client, job.gdc, job.attempts, settings.mpp, job.level_index)
    spacing, level = opened.spacing_um, opened.level
    if max(spacing) > settings.mpp * 1.0001:
        raise SlidestockError(
            f"{plan.slide_id}: the finest level is {spacing[0]:.4g} µm/px, coarser than patches.mpp {settings.mpp}; "
            "patches are never upsampled"
        )
    span = span_px(spacing, settings)
    mask = mask_of(job.image_path)
    patches = choose_patches(mask, level.size_px, span, settings, plan.slide_id)
    crop = crop_px(span)
    tiles = opened.locate(sorted({t for p in patches for t in patch_tiles(p, crop, level)}))
    # What finding the frames took: the header, a TIFF directory, or a walk over the fragments.
    locating = opened.fetched()
    base = opened.base_size_px or level.size_px
    scale0 = (base[0] / level.size_px[0], base[1] / level.size_px[1])
    # What reading a patch again takes besides its frames' ranges, the same for every patch of the slide.
    decoding = json.dumps({**opened.decoding(), "span_px": list(span), "urls": opened.urls}, sort_keys=True)
    files = {} if coordinates else dict(_written(job, patches, level, span, settings, opened, tiles.present))
    rows: list[PatchRow] = []
    for patch in patches:
        covered = patch_tiles(patch, crop, level)
        patch_id = f"{plan.slide_id}_{patch.number:05d}"
        path = files.get(patch_id)
        rows.append(
            {
                "slide_id": plan.slide_id,
                "patch_id": patch_id,
                "path": f"{job.folder.name}/{path.name}" if path else "",
                "level_columns": level.size_px[0],
                "level_rows": level.size_px[1],
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
                "bytes_fetched": sum(tiles.sizes.get(t, 0) for t in covered),
                "sha256": sha256_file(path) if path else "",
                "shard": "",
                "member": "",
                "url": opened.urls[0],
                "level_index": opened.level_index,
                "frames": json.dumps([[t, *where] for t, where in opened.ranges(covered).items()]),
                "decoding": decoding,
            }
        )
    clam, trident = job.h5_paths
    write_coords_h5(clam, rows, clam_attributes(plan.slide_id, level.size_px, base, opened.level_index, span))
    base_mpp = spacing[0] * level.size_px[0] / base[0]
    write_coords_h5(trident, rows, trident_attributes(plan.slide_id, base, base_mpp, settings.size_px, settings.mpp))
    fewer = settings.mode == "random" and len(patches) < settings.n_per_slide
    return Cut(
        level={
            **opened.facts,
            "reason": opened.facts.get("reason", plan.reason),
            "size_px": list(level.size_px),
            "spacing_um": [round(spacing[0], 6), round(spacing[1], 6)],
            "tile_px": list(level.tile_px),
            # The level's own bytes: the DICOM instance(s), or the SVS page's tiles (not the whole file).
            "instance_bytes": tiles.level_bytes or plan.instance_size,
            "series_size_bytes": plan.series_size_bytes or plan.instance_size,
        },
        frames={**tiles.facts, "covered": len(tiles.sizes), "covered_bytes": sum(tiles.sizes.values())},
        rows=rows,
        fetched=opened.fetched(),
        locating=locating,
        requests=opened.requests(),
        tissue_pixels=int(mask.sum()),
        warnings=opened.warnings(),
        note=(
            f"{len(patches)} of {settings.n_per_slide} patches: too little tissue (at least {settings.min_tissue:.0%} "
            "of a patch) for more without overlap"
            if fewer
            else ""
        ),
    )


def _written(
    job: PatchJob,
    patches: Sequence[Patch],
    level: TiledLevel,
    span: tuple[float, float],
    settings: PatchSettings,
    opened: PatchLevel,
    present: Collection[int],
) -> Iterator[tuple[str, Path]]:
    """Each patch cut from its frames and written as a PNG file: its id and path."""
    job.folder.mkdir(parents=True, exist_ok=True)
    for patch, image in cut_patches(patches, level, span, settings.size_px, opened.fetch, opened.decode, present):
        patch_id = f"{job.plan.slide_id}_{patch.number:05d}"
        path = job.folder / f"{patch_id}.png"
        write_image(image, path, (settings.mpp, settings.mpp), "png")
        yield patch_id, path


def write_patch_table(records: Sequence[PatchRecord], out: Path) -> int:
    """A batch's patch outcome, one line per slide; returns how many failed for a reason a re-run may get past."""

    def cells(record: PatchRecord) -> list[object]:
        return [len(record["patches"]), record.get("bytes_fetched", 0), record.get("error") or ""]

    return write_outcome_table(records, ["n_patches", "bytes_fetched", "error"], cells, out)


def mask_of(image_path: Path) -> np.ndarray:
    """The tissue mask patches are placed on: the stock's, from the slide's low-resolution image."""
    return np.asarray(tissue_mask(pyvips.Image.new_from_file(str(image_path))).numpy() > 0)


def patch_rows(records: Sequence[PatchRecord]) -> pd.DataFrame:
    """One row per patch of the finished slides, in cohort then patch order (``patches.parquet``)."""
    import pandas as pd

    rows = [row for record in records if record["status"] == "done" for row in record["patches"]]
    return pd.DataFrame(rows, columns=list(PATCH_COLUMNS))


def read_patch_records(tables: Sequence[Path], folder: Path) -> list[PatchRecord]:
    """The records of the slides the batch tables list, in their order."""
    records = []
    for table in tables:
        for line in table.read_text().splitlines()[1:]:
            slide_id = line.split("\t", 1)[0]
            records.append(as_patch_record(json.loads((folder / f"{slide_id}.json").read_text())))
    return records
