"""The batch driver: plan rows in, per-slide records out.

A batch skips the slides finished before (same plan and settings), streams its IDC
objects through one ``s5cmd run`` and hands each slide to its source on a few threads as
soon as its objects are in, while the rest download (:mod:`slidestock.read.stream`). A
slide that fails, for a reason slidestock understands (a wrong size, a corrupt file, no
usable level) or not (a bug, logged with its traceback), is recorded as failed in its JSON
with the reason and leaves no image; the other slides go on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from slidestock.errors import FetchError, SlidestockError, UnreachableError
from slidestock.jobs import gdc, idc
from slidestock.jobs.common import Progress, failure_of, stream_threads, write_outcome_table
from slidestock.jobs.slide import SIDE_FILES, SlideJob, level_downloads, level_file, side_path
from slidestock.provenance import (
    Part,
    Timed,
    compose,
    software_versions,
    write_json,
)
from slidestock.read.fetch import BatchItem, FetchResult, check_free_disk, s5cmd_binary
from slidestock.read.stream import Downloads, Group
from slidestock.records import (
    RECORD_VERSION,
    Failure,
    SlideRecord,
    as_slide_record,
    failed_for_good,
    output_sha256,
    read_record,
)
from slidestock.state import judge_one
from slidestock.tidy import move_stale, run_of, stale_slide_files

log = logging.getLogger(__name__)


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


def _base_record(job: SlideJob) -> SlideRecord:
    plan = job.plan
    return {
        "record_version": RECORD_VERSION,
        "slide_id": plan.slide_id,
        "status": "failed",
        "error": None,
        "source": {
            "SeriesInstanceUID": plan.series_instance_uid,
            "SOPInstanceUID": plan.sop_instance_uid or None,
            "url": plan.url or None,
            "endpoint": job.endpoint,
        },
        "series_size_bytes": plan.series_size_bytes,
        # The plan's ranged reads of this slide's instance headers count as fetched bytes too.
        "bytes_fetched": plan.header_bytes,
        "level": {
            "reason": plan.reason,
            "n_levels": plan.n_levels,
            "transfer_syntax": plan.transfer_syntax or None,
            "size_px": None if plan.level_size_px is None else list(plan.level_size_px),
            "index_spacing_um": plan.index_spacing_um,
            "plan_spacing_um": None if plan.level_spacing_um is None else list(plan.level_spacing_um),
            "spacing_source": plan.spacing_source or None,
            "header_bytes_fetched": plan.header_bytes,
            "spacing_derived": plan.spacing_derived,
        },
        "target": {
            "mpp": job.settings.target.mpp,
            "max_px": job.settings.target.max_px,
            "fallback_max_px": job.settings.target.fallback_max_px,
            "format": job.settings.format,
        },
        # Everything the output depends on besides the plan, in the config's terms: what a later
        # config is compared with (the redo notice, status).
        "settings": job.settings.terms(),
        "output": None,
        "output_digest": job.settings.digest(job.plan),
    }


def is_finished(job: SlideJob) -> bool:
    """True when the slide's record says done for this very plan and settings, and its files are there.

    A slide that failed for a permanent reason (no usable level, a file that
    does not decode) counts as finished too, for the same plan and settings,
    unless ``redo_failed``: trying again would fail the same way. One that
    failed for a reason that may pass (network, server, timeout) is redone.
    """
    found = read_record(job.json_path)
    if found is None:
        return False
    record = as_slide_record(found)
    if record.get("output_digest") != job.settings.digest(job.plan):
        return False
    if record["status"] == "failed":
        return failed_for_good(record) and not job.redo_failed
    output = record.get("output")
    if output is None:
        return False
    files: list[tuple[Path, int | None]] = [(job.image_path, output["bytes"])]
    if output.get("mask_path"):
        files.append((Path(output["mask_path"]), None))
    files += [(Path(a["path"]), None) for a in (record.get("associated") or {}).values() if a]
    return all(path.is_file() and (size is None or path.stat().st_size == size) for path, size in files)


def move_stale_outputs(jobs: Sequence[SlideJob], name: str) -> None:
    """Move the files of the batch's slides that are not of the stock any longer out of ``results/slides``."""
    if not jobs:
        return
    folder = jobs[0].json_path.parent
    states = [judge_one(job.plan, job.json_path, job.settings.digest(job.plan), "output_digest") for job in jobs]
    results = folder.parent
    for stale, dest in move_stale(stale_slide_files(folder, states), results, run_of(results), f"batch-{name}"):
        log.info("%s: moved %s to %s: %s", name, stale.path.name, dest, stale.why)


def _batch_items(job: SlideJob) -> list[BatchItem]:
    """Every IDC object the slide needs: its chosen level and the associated images asked for."""
    plan = job.plan
    if not plan.planned or plan.source == "gdc":
        return []
    associated = [
        BatchItem(plan.associated[kind][0], level_file(job, kind), plan.associated[kind][1])
        for kind in job.settings.associated
        if kind in plan.associated
    ]
    return [*level_downloads(job), *associated]


def window_bytes(groups: Sequence[Group], window: int) -> int:
    """The most scratch space ``window`` slides' objects may take at once: the largest ``window`` of them."""
    return sum(sorted((group.expected_bytes for group in groups), reverse=True)[:window])


def _scratch_prefix(job: SlideJob, name: str) -> str:
    """``slidestock-<batch>-<workflow>-``: one batch of one workflow (Snakemake's lock keeps it to one job)."""
    workflow = hashlib.sha256(str(job.json_path.parent.resolve()).encode()).hexdigest()[:10]
    return f"slidestock-{name}-{workflow}-"


def _remove_stale_scratch(scratch_root: Path, prefix: str, name: str) -> None:
    """Remove what an earlier attempt of this batch left, killed (out of memory or time) before it could."""
    scratch_root.mkdir(parents=True, exist_ok=True)
    for stale in scratch_root.glob(f"{prefix}*"):
        log.warning("%s: removing %s, left by an earlier attempt", name, stale)
        shutil.rmtree(stale, ignore_errors=True)


def run_batch(
    jobs: Sequence[SlideJob],
    name: str,
    scratch_root: Path,
    *,
    workers: int = 16,
    threads: int = 1,
    timeout_s: float = 1800.0,
    retry_count: int = 10,
) -> list[SlideRecord]:
    """Process a batch of slides: skip finished ones, stream the rest's objects, downsample each as it is in.

    At most ``workers + 2 * threads`` slides' objects are in flight or on the
    scratch disk at once; stops before fetching when the scratch folder cannot
    hold the largest of them. Each slide then ends as done or failed in its own record;
    no slide's failure, expected or not, stops the others. Returns the records
    of the slides processed here (finished ones are left as they are).

    First the batch's slides' files that their current plan and settings do not account for (a record and
    image of other settings, another format, a mask turned off) move to ``results/stale/<run>/``.
    """
    move_stale_outputs(jobs, name)
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
    _remove_stale_scratch(scratch_root, prefix, name)
    with tempfile.TemporaryDirectory(prefix=prefix, dir=scratch_root) as scratch:
        # Slides share the batch's threads; a slide left alone decodes its tiles on all of them.
        per_slide = max(1, threads // max(1, min(threads, len(todo))))
        todo = [replace(job, tmpdir=Path(scratch), threads=per_slide) for job in todo]
        groups = [Group(job.plan.slide_id, tuple(_batch_items(job))) for job in todo]
        window = workers + 2 * threads
        try:
            check_free_disk(Path(scratch), window_bytes(groups, window), f"batch {name}")
        except FetchError as err:
            log.error("%s", err)
            raise
        endpoint, attempts = todo[0].endpoint, todo[0].attempts
        first = next((group.items[0] for group in groups if group.items), None)
        if first is not None:
            _check_reachable(first.url, endpoint, attempts, timeout_s, name)
        downloads = Downloads(
            groups, endpoint, window=window, workers=workers, attempts=attempts, timeout_s=timeout_s,
            retry_count=retry_count,
        )  # fmt: skip
        counter = Progress(name, len(todo), start)
        by_id = {job.plan.slide_id: job for job in todo}

        def one(group: Group, fetched: Mapping[Path, FetchResult | FetchError]) -> SlideRecord:
            job = by_id[group.key]
            with slide_log(job.log_path):
                record = _run_slide(job, fetched, software, started, start)
                log.info("%s: %s", job.plan.slide_id, record.get("error") or "done")
            write_json(job.json_path, record)
            counter.count(record["status"] == "done")
            return record

        records = stream_threads(one, downloads, downloads.release, threads)
        objects = sum(len(group.items) for group in groups)
        log.info("%s: %d objects, %d slides in %.1f s", name, objects, len(todo), time.monotonic() - start)
        return records


def _check_reachable(url: str, endpoint: str, attempts: int, timeout_s: float, name: str) -> None:
    """Stop the batch in seconds when the slide bucket cannot be reached at all (name resolution, refused).

    s5cmd would retry each object with backoff for minutes before saying so.
    One HEAD of one of the batch's objects asks; any other trouble (a 404, a
    503) is left to s5cmd, object by object.
    """
    from slidestock.read.headers import HeaderReader

    reader = HeaderReader(endpoint, attempts=attempts, backoff_s=1.0, timeout_s=min(30.0, timeout_s))
    try:
        reader.check_reachable(url)
        log.info("%s: the slide bucket answers (HEAD %s)", name, url)
    except UnreachableError as err:
        message = f"batch {name}: cannot reach the slide bucket: {err}. Check the network or proxy, or fetch.endpoint"
        log.error("%s", message)
        raise UnreachableError(message) from None


def write_batch_table(json_paths: Sequence[Path], out: Path) -> int:
    """A batch's outcome, one line per slide (id, status, image sha256 or the error, whether a re-run may help).

    Written atomically; returns how many slides failed for a reason a re-run may get past.
    """
    records = [as_slide_record(json.loads(path.read_text())) for path in json_paths]

    def detail(record: SlideRecord) -> list[object]:
        return [output_sha256(record) or record.get("error") or ""]

    return write_outcome_table(records, ["sha256_or_error"], detail, out)


def _run_slide(
    job: SlideJob,
    fetched: Mapping[Path, FetchResult | FetchError],
    software: Mapping[str, str],
    started_at: str,
    batch_start: float,
) -> SlideRecord:
    """One slide's record: done with its output, or failed with the reason (nothing of it left on disk).

    The record is the plan's and the settings' facts with the parts its source
    yielded folded in (a failed slide keeps those it had), composed once.
    """
    base = _base_record(job)
    base["software"], base["started_at"] = dict(software), started_at
    log.info("%s: %s", job.plan.slide_id, job.plan.reason)
    parts: list[Part] = []
    try:
        if not job.plan.planned:
            raise SlidestockError(job.plan.reason)
        source = gdc.fetch_and_downsample(job) if job.plan.source == "gdc" else idc.fetch_and_downsample(job, fetched)
        for part in source:
            parts.append(part)
        failure = None
    except Exception as err:  # one slide never stops its batch; a bug is logged with its traceback
        failure = _failure(job, err)
    finally:
        for item in level_downloads(job):
            item.dest.unlink(missing_ok=True)
        for kind in job.settings.associated:
            level_file(job, kind).unlink(missing_ok=True)
    parts.append(Timed({"total": round(time.monotonic() - batch_start, 3)}))
    record = compose(base, parts)
    if failure is None:
        record["status"] = "done"
    else:
        record["error"], record["retryable"], record["output"] = failure["error"], failure["retryable"], None
        record.pop("associated", None)
    return record


def _failure(job: SlideJob, err: Exception) -> Failure:
    """Why a slide failed, once anything of an earlier, finished run of it is removed."""
    for stale in (job.image_path, *(side_path(job, name) for name in SIDE_FILES)):
        stale.unlink(missing_ok=True)
    return failure_of(job.plan.slide_id, err)
