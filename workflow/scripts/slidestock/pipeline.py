"""Slides from plan to output, a batch at a time: fetch the chosen levels, downsample, record provenance.

A batch fetches all its IDC objects with one ``s5cmd run``, then processes
its slides on a few threads. A slide that fails, for a reason slidestock
understands (a wrong size, a corrupt file, no usable level) or not (a bug,
logged with its traceback), is recorded as failed in its JSON with the
reason and leaves no image; the other slides go on. A slide whose record
says done for the same plan and settings is not redone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyvips

from slidestock.dicomlevel import (
    LevelHeader,
    box_reduce,
    most_shrink,
    read_concatenation,
    read_header,
    read_level,
    reduce_level,
)
from slidestock.downsample import resize_exact, tissue_fraction, tissue_mask, write_image
from slidestock.errors import DecodeError, FetchError, SlidestockError, UnreachableError
from slidestock.fetch import BatchItem, FetchResult, check_free_disk, fetch_batch, s5cmd_binary
from slidestock.gdc import BLOCK_BYTES, BlockCache, GdcClient, RangeNotSupportedError, fetch_ranges
from slidestock.levels import Level, Target, choose_level, output_size_px
from slidestock.plan import slide_plan_text
from slidestock.provenance import SLIDESTOCK_VERSION, sha256_file, software_versions, write_json, write_text_atomic
from slidestock.svs import decode_page, page_levels
from slidestock.tiff import ReadRange, read_pages, tile_locations

log = logging.getLogger(__name__)
# Files written beside a slide's image: {slide}.<name>.png
SIDE_FILES = ("mask", "label", "overview")
TileGetter = Callable[[list[tuple[int, int]]], list[bytes]]
# GDC files up to this size are downloaded whole: range reads of their directory and tiles would move as much.
SMALL_FILE_BYTES = 4 * BLOCK_BYTES


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
    log_path: Path | None = None
    threads: int = 1
    redo_failed: bool = False


@contextmanager
def slide_log(path: Path | None) -> Iterator[None]:
    """Copy what the current thread logs into the slide's own log file while processing it."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    thread = threading.get_ident()
    handler.addFilter(lambda entry: entry.thread == thread)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


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
        # The plan's ranged reads of this slide's instance headers count as fetched bytes too.
        "bytes_fetched": int(plan.get("header_bytes") or 0),
        "level": {
            "reason": plan["reason"],
            "n_levels": int(plan["n_levels"] or 0),
            "transfer_syntax": plan["transfer_syntax"] or None,
            "size_px": [int(plan["level_columns"]), int(plan["level_rows"])] if plan["level_columns"] else None,
            "index_spacing_um": float(plan["index_spacing_um"]) if plan["index_spacing_um"] else None,
            "plan_spacing_um": list(xy) if (xy := _plan_spacing(plan)) else None,
            "spacing_source": plan["spacing_source"] or None,
            "header_bytes_fetched": int(plan.get("header_bytes") or 0),
            "spacing_derived": plan["spacing_derived"] == "true",
        },
        "target": {
            "mpp": job.target.mpp,
            "max_px": job.target.max_px,
            "fallback_max_px": job.target.fallback_max_px,
            "format": job.fmt,
        },
        "output": None,
    }


def side_path(job: SlideJob, name: str) -> Path:
    """``results/slides/{slide}.{name}.png``: a file written beside the slide's image."""
    return job.image_path.with_name(f"{job.image_path.stem}.{name}.png")


def _plan_spacing(plan: Mapping[str, str]) -> tuple[float, float] | None:
    """The (column, row) spacing the plan sized the output by: the header's where it read one."""
    if not plan["level_spacing_um"]:
        return None
    column = float(plan["level_spacing_um"])
    return (column, float(plan["level_row_spacing_um"] or column))


def output_digest(job: SlideJob) -> str:
    """What a slide's output depends on: its plan row, the output settings and slidestock's version.

    Not the endpoint, the batch or the machine: moving where bytes come from, or
    how slides are grouped into jobs, re-does nothing.
    """
    settings = {
        "target": [job.target.mpp, job.target.max_px, job.target.fallback_max_px],
        "format": [job.fmt, job.quality, job.pyramid],
        "tissue_mask": job.tissue_mask,
        "backend": job.backend,
        "associated": list(job.associated),
        "slidestock": SLIDESTOCK_VERSION,
    }
    text = slide_plan_text(job.plan) + json.dumps(settings, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def is_finished(job: SlideJob) -> bool:
    """True when the slide's record says done for this very plan and settings, and its files are there.

    A slide that failed for a permanent reason (no usable level, a file that
    does not decode) counts as finished too, for the same plan and settings,
    unless ``redo_failed``: trying again would fail the same way. One that
    failed for a reason that may pass (network, server, timeout) is redone.
    """
    try:
        record = json.loads(job.json_path.read_text())
    except (OSError, ValueError):
        return False
    if record.get("output_digest") != output_digest(job):
        return False
    if record.get("status") == "failed":
        return record.get("retryable") is False and not job.redo_failed
    if record.get("status") != "done":
        return False
    output = record.get("output") or {}
    files = [(job.image_path, output.get("bytes"))]
    if output.get("mask_path"):
        files.append((Path(output["mask_path"]), None))
    files += [(Path(a["path"]), None) for a in (record.get("associated") or {}).values() if a]
    return all(path.is_file() and (size is None or path.stat().st_size == size) for path, size in files)


def _level_file(job: SlideJob, kind: str = "") -> Path:
    """Where the batch puts a slide's downloaded level (or ``label``/``overview``) in its scratch folder."""
    return job.tmpdir / f"{job.plan['slide_id']}{'.' + kind if kind else ''}.dcm"


def _parts(plan: Mapping[str, str]) -> list[tuple[str, int]]:
    """(URL, size) of each part of a level planned as a DICOM concatenation, in frame order; [] for one instance."""
    urls, sizes = plan.get("part_urls", "").split(), plan.get("part_sizes", "").split()
    return [(url, int(size)) for url, size in zip(urls, sizes, strict=True)]


def _level_downloads(job: SlideJob) -> list[BatchItem]:
    """The chosen level's objects and where the batch puts them: each part of a concatenation, or the instance."""
    parts = _parts(job.plan)
    if parts:
        return [BatchItem(url, _level_file(job, f"part{k + 1}"), size) for k, (url, size) in enumerate(parts)]
    return [BatchItem(job.plan["url"], _level_file(job), int(job.plan["instance_size"] or 0))]


def _batch_items(jobs: Sequence[SlideJob]) -> list[BatchItem]:
    """Every IDC object the jobs need: the chosen level and the associated images asked for."""
    items = []
    for job in jobs:
        plan = job.plan
        if plan["status"] != "planned" or plan["url"].startswith("gdc:"):
            continue
        items += _level_downloads(job)
        items += [
            BatchItem(plan[f"{kind}_url"], _level_file(job, kind), int(plan[f"{kind}_size"]))
            for kind in job.associated
            if plan.get(f"{kind}_url")
        ]
    return items


def _scratch_prefix(job: SlideJob, name: str) -> str:
    """``slidestock-<batch>-<workflow>-``: one batch of one workflow (Snakemake's lock keeps it to one job)."""
    workflow = hashlib.sha256(str(job.json_path.parent.resolve()).encode()).hexdigest()[:10]
    return f"slidestock-{name}-{workflow}-"


def run_batch(
    jobs: Sequence[SlideJob],
    name: str,
    scratch_root: Path,
    *,
    workers: int = 16,
    threads: int = 1,
    timeout_s: float = 1800.0,
    retry_count: int = 10,
) -> list[dict[str, Any]]:
    """Process a batch of slides: skip finished ones, fetch the rest with one ``s5cmd run``, downsample.

    Stops before fetching when the scratch folder cannot hold the batch's
    planned bytes. Each slide then ends as done or failed in its own record;
    no slide's failure, expected or not, stops the others. Returns the records
    of the slides processed here (finished ones are left as they are).
    """
    todo = [job for job in jobs if not is_finished(job)]
    log.info(
        "%s: %d slides, %d finished before, %d to do, on %d thread%s",
        *(name, len(jobs), len(jobs) - len(todo), len(todo), threads, "" if threads == 1 else "s"),
    )
    if not todo:
        return []
    started = datetime.now(UTC).isoformat(timespec="seconds")
    start = time.monotonic()
    software = software_versions(s5cmd_binary())
    prefix = _scratch_prefix(jobs[0], name)
    scratch_root.mkdir(parents=True, exist_ok=True)
    for stale in scratch_root.glob(f"{prefix}*"):
        # Left by an earlier attempt of this batch that was killed (out of memory or time).
        log.warning("%s: removing %s, left by an earlier attempt", name, stale)
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=prefix, dir=scratch_root) as scratch:
        # Slides share the batch's threads; a slide left alone decodes its tiles on all of them.
        per_slide = max(1, threads // max(1, min(threads, len(todo))))
        todo = [replace(job, tmpdir=Path(scratch), threads=per_slide) for job in todo]
        items = _batch_items(todo)
        try:
            check_free_disk(Path(scratch), sum(item.expected_bytes for item in items), f"batch {name}")
        except FetchError as err:
            log.error("%s", err)
            raise
        endpoint, attempts = todo[0].endpoint, todo[0].attempts
        if items:
            _check_reachable(items[0].url, endpoint, attempts, timeout_s, name)
        fetched = fetch_batch(
            items, endpoint, workers=workers, attempts=attempts, timeout_s=timeout_s, retry_count=retry_count
        )
        log.info("%s: fetched %d objects in %.1f s", name, len(items), time.monotonic() - start)

        counter = Progress(name, len(todo), start)

        def one(job: SlideJob) -> dict[str, Any]:
            with slide_log(job.log_path):
                record = _run_slide(job, fetched, software)
                log.info("%s: %s", job.plan["slide_id"], record["error"] or "done")
            record["started_at"] = started
            record.setdefault("timings_s", {})["total"] = round(time.monotonic() - start, 3)
            write_json(job.json_path, record)
            counter.count(record["status"] == "done")
            return record

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            return list(pool.map(one, todo))


def _check_reachable(url: str, endpoint: str, attempts: int, timeout_s: float, name: str) -> None:
    """Stop the batch in seconds when the slide bucket cannot be reached at all (name resolution, refused).

    s5cmd would retry each object with backoff for minutes before saying so.
    The bucket itself is asked (no object is touched); any other trouble (a
    404, a 503) is left to s5cmd, object by object.
    """
    from slidestock.headers import HeaderReader

    reader = HeaderReader(endpoint, attempts=attempts, backoff_s=1.0, timeout_s=min(30.0, timeout_s))
    try:
        reader.check_reachable(url)
    except UnreachableError as err:
        message = f"batch {name}: cannot reach the slide bucket: {err}. Check the network or proxy, or fetch.endpoint"
        log.error("%s", message)
        raise UnreachableError(message) from None


# Batch progress lines go to this logger: the batch log, and the terminal when run locally.
progress_log = logging.getLogger("slidestock.progress")


class Progress:
    """Slides done and failed in a batch, said at most every ``every_s`` seconds and once at the end."""

    def __init__(self, name: str, todo: int, start: float, every_s: float = 5.0) -> None:
        self.name, self.todo, self.start, self.every_s = name, todo, start, every_s
        self.done = self.failed = 0
        self.said = start
        self._lock = threading.Lock()

    def count(self, done: bool) -> None:
        with self._lock:
            self.done += done
            self.failed += not done
            now = time.monotonic()
            finished = self.done + self.failed
            if finished == self.todo or now - self.said >= self.every_s:
                self.said = now
                rate = finished / max(now - self.start, 1e-9)
                progress_log.info(
                    "%s: %d of %d slides: %d done, %d failed, %d to do; %.2f slides/s",
                    *(self.name, finished, self.todo, self.done, self.failed, self.todo - finished, rate),
                )


def write_batch_table(json_paths: Sequence[Path], out: Path) -> int:
    """A batch's outcome, one line per slide (id, status, image sha256 or the error, whether a re-run may help).

    Written atomically; returns how many slides failed for a reason a re-run may get past.
    """
    lines = ["slide_id\tstatus\tsha256_or_error\tretryable\n"]
    retryable = 0
    for path in json_paths:
        record = json.loads(path.read_text())
        detail = (record.get("output") or {}).get("sha256") or record.get("error") or ""
        again = record["status"] == "failed" and record.get("retryable") is not False
        retryable += again
        flag = "" if record["status"] == "done" else str(again).lower()
        lines.append(f"{record['slide_id']}\t{record['status']}\t{' '.join(str(detail).split())}\t{flag}\n")
    write_text_atomic(out, "".join(lines))
    return retryable


def _run_slide(
    job: SlideJob, fetched: Mapping[Path, FetchResult | FetchError], software: Mapping[str, str]
) -> dict[str, Any]:
    """One slide's record: done with its output, or failed with the reason (nothing of it left on disk)."""
    record = _base_record(job)
    record["software"] = dict(software)
    record["output_digest"] = output_digest(job)
    log.info("%s: %s", job.plan["slide_id"], job.plan["reason"])
    try:
        if job.plan["status"] != "planned":
            raise SlidestockError(job.plan["reason"])
        if job.plan["url"].startswith("gdc:"):
            _gdc_fetch_and_downsample(job, record)
        else:
            _fetch_and_downsample(job, record, fetched)
        record["status"] = "done"
    except Exception as err:  # one slide never stops its batch; a bug is logged with its traceback
        # Network, server and size troubles may pass on a later run; a level or file that is wrong will not.
        record["retryable"] = isinstance(err, FetchError)
        if isinstance(err, SlidestockError):
            log.error("%s failed: %s", job.plan["slide_id"], err)
            record["error"] = str(err)
        else:
            log.exception("%s failed unexpectedly", job.plan["slide_id"])
            record["error"] = f"{job.plan['slide_id']}: unexpected {type(err).__name__}: {err}"
        record["output"] = None
        record.pop("associated", None)
        # Nothing of an earlier, finished run of this slide may outlive its failure.
        for stale in (job.image_path, *(side_path(job, name) for name in SIDE_FILES)):
            stale.unlink(missing_ok=True)
    finally:
        for item in _level_downloads(job):
            item.dest.unlink(missing_ok=True)
        for kind in job.associated:
            _level_file(job, kind).unlink(missing_ok=True)
    return record


def _prefetched(fetched: Mapping[Path, FetchResult | FetchError], local: Path) -> FetchResult:
    result = fetched.get(local)
    if result is None:
        raise FetchError(f"{local.name}: not in the batch's downloads")
    if isinstance(result, FetchError):
        raise result
    return result


def _fetch_and_downsample(
    job: SlideJob, record: dict[str, Any], fetched: Mapping[Path, FetchResult | FetchError]
) -> None:
    plan = job.plan
    files = [item.dest for item in _level_downloads(job)]
    n_parts = len(files) if len(files) > 1 else 0
    results = [_prefetched(fetched, path) for path in files]
    local = files[0]
    level_fetch = FetchResult(local, sum(r.bytes_fetched for r in results), max(r.seconds for r in results),
                              max(r.attempts for r in results))  # fmt: skip
    log.info("%s: %d bytes fetched (attempt %d)", plan["url"], level_fetch.bytes_fetched, level_fetch.attempts)
    record["bytes_fetched"] += level_fetch.bytes_fetched
    record["fetch_attempts"] = level_fetch.attempts
    t0 = time.monotonic()
    item = f"{plan['slide_id']} ({plan['url']})"
    header = read_concatenation(files, item) if n_parts else read_header(local, item=item)
    if n_parts:
        record["level"]["concatenation_parts"] = n_parts
    # The header's full-precision spacing beats the index's two significant figures.
    spacing = header.spacing_xy_um or _plan_spacing(plan)
    record["level"]["header_spacing_um"] = header.spacing_xy_um and list(header.spacing_xy_um)
    record["level"]["photometric"] = header.photometric
    record["level"]["organization"] = header.organization
    record["level"]["missing_tiles"] = header.missing_tiles
    record["level"]["icc_profile_bytes"] = len(header.icc_profile or b"")
    record["level"]["backend"] = job.backend
    target = _slide_target(job, spacing)
    size = output_size_px(header.size_px, spacing, target)
    scale = max(size[0] / header.size_px[0], size[1] / header.size_px[1])
    if job.backend == "pyvips":
        level = reduce_level(header, scale=scale, threads=job.threads)
        record["level"]["decode_shrink"], record["level"]["box_shrink"] = level.decode_shrink, level.box
        for warning in level.warnings:
            log.warning("%s: %s", plan["slide_id"], warning)
        record["warnings"] = list(level.warnings)
        image, shrink = level.image, level.shrink
    else:
        image, shrink = openslide_reduced(local, header, scale)
        record["level"]["box_shrink"] = shrink
    if header.icc_profile:
        image = image.copy()
        image.set_type(pyvips.GValue.blob_type, "icc-profile-data", header.icc_profile)
    _write_output(job, target, record, image, spacing, header.size_px, shrink)
    _export_associated(job, record, fetched)
    record["timings_s"] = {"fetch": round(level_fetch.seconds, 3), "downsample": round(time.monotonic() - t0, 3)}


def _export_associated(job: SlideJob, record: dict[str, Any], fetched: Mapping[Path, FetchResult | FetchError]) -> None:
    """Write the slide's label and overview images (fetched with its batch) as they are, when asked to."""
    exported: dict[str, Any] = {}
    for kind in job.associated:
        url = job.plan.get(f"{kind}_url", "")
        if not url:
            exported[kind] = None  # the series has no such instance
            continue
        local = _level_file(job, kind)
        result = _prefetched(fetched, local)
        record["bytes_fetched"] += result.bytes_fetched
        image = read_level(local, item=f"{job.plan['slide_id']} {kind} ({url})")
        spacing = image.header.spacing_xy_um
        path = side_path(job, kind)
        write_image(image.image, path, spacing, "png")
        exported[kind] = {
            "path": str(path),
            "size_px": list(image.header.size_px),
            "spacing_um": None if spacing is None else list(spacing),
            "bytes_fetched": result.bytes_fetched,
            "sha256": sha256_file(path),
        }
    if job.associated:
        record["associated"] = exported


def _slide_target(job: SlideJob, spacing: tuple[float, float] | None) -> Target:
    """The target the slide is sized by: the configured one, or for a slide without any spacing its fallback."""
    return job.target if spacing is not None else job.target.without_spacing(job.plan["slide_id"])


def _write_output(
    job: SlideJob,
    target: Target,
    record: dict[str, Any],
    image: pyvips.Image,
    spacing: tuple[float, float] | None,
    level_size: tuple[int, int] | None = None,
    shrink: int = 1,
) -> None:
    """Resize ``image`` to ``target``, write it, and record what was written.

    ``spacing`` is the level's µm/px (None: unknown, the image gets none) and
    ``level_size`` its full size; ``image`` is ``ceil(level size / shrink)`` when
    the level was reduced while decoding, and always covers the whole level.
    """
    level_size = level_size or (image.width, image.height)
    size = output_size_px(level_size, spacing, target)
    out_spacing = (
        None if spacing is None else (spacing[0] * level_size[0] / size[0], spacing[1] * level_size[1] / size[1])
    )
    extent = (level_size[0] / shrink, level_size[1] / shrink)
    # In memory: the image file and the tissue mask are made from one computation of it.
    output = resize_exact(image, size, extent).copy_memory()
    write_image(output, job.image_path, out_spacing, job.fmt, job.quality, job.pyramid)
    record["scale"] = [size[0] / level_size[0], size[1] / level_size[1]]
    record["output"] = {
        "path": str(job.image_path),
        "format": job.fmt,
        "size_px": list(size),
        "spacing_um": None if out_spacing is None else list(out_spacing),
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
        if job.gdc.mode == "range" and size <= SMALL_FILE_BYTES:
            # The directory reads alone would move about this much: the file whole costs no more.
            record["gdc"]["mode"] = f"whole (a file of {size} bytes: no larger than its directory reads)"
            image = _svs_whole(client, file_id, size, plan["md5"], Path(scratch), job, record, item)
        elif job.gdc.mode == "range":
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
        record["bytes_fetched"] += client.bytes_fetched
        record["gdc"]["requests"] = client.requests
        spacing = record["level"]["spacing_um"]  # None when the SVS has none: sized by the fallback
        xy = None if spacing is None else (spacing, spacing)
        _write_output(job, _slide_target(job, xy), record, image, xy)
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
                  None if base_um is None else base_um * slide.level_downsamples[i], "openslide", 0, True)
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


# Backend openslide: rows of the level read at once, about this many bytes of RGBA.
OPENSLIDE_BAND_BYTES = 64 << 20


def openslide_reduced(path: Path, header: LevelHeader, scale: float) -> tuple[pyvips.Image, int]:
    """The one level of a downloaded DICOM file, read by OpenSlide (``target.backend: openslide``).

    Read in bands of whole rows of tiles (no tile is decoded twice), each
    box-averaged by the largest factor the resize by ``scale`` allows before the
    next is read, so memory stays near one band whatever the level's size.
    Returns the reduced image and that factor.
    """
    import openslide

    (width, height), tile_h = header.size_px, header.tile_px[1]
    box = most_shrink(scale)
    rows = tile_h * max(1, OPENSLIDE_BAND_BYTES // (4 * width * tile_h))
    with openslide.OpenSlide(str(path)) as slide:
        if slide.level_dimensions[0] != header.size_px:
            raise DecodeError(
                f"{header.item}: OpenSlide sees {slide.level_dimensions[0]} px; the header says {header.size_px}"
            )
        bands = (
            openslide_region(slide, 0, (width, min(rows, height - y)), origin=(0, y)).numpy()
            for y in range(0, height, rows)
        )
        reduced = box_reduce(bands, header.size_px, box, header.item)
    return pyvips.Image.new_from_array(reduced).copy(interpretation="srgb"), box


def openslide_region(
    slide: Any, level: int, size_px: tuple[int, int], origin: tuple[int, int] = (0, 0)
) -> pyvips.Image:
    """A region of an OpenSlide level as an RGB image; transparent (missing) areas become white.

    ``origin`` is in level 0 pixels, as OpenSlide takes it.
    """
    import numpy as np

    rgba = np.ascontiguousarray(np.asarray(slide.read_region(origin, level, size_px)))
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
