"""The batch driver: plan rows in, per-slide records out.

A batch skips the slides finished before (same plan and settings), fetches all its IDC
objects with one ``s5cmd run``, then hands each slide to its source on a few threads. A
slide that fails, for a reason slidestock understands (a wrong size, a corrupt file, no
usable level) or not (a bug, logged with its traceback), is recorded as failed in its JSON
with the reason and leaves no image; the other slides go on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from slidestock import gdc, idc
from slidestock.errors import FetchError, SlidestockError, UnreachableError
from slidestock.fetch import BatchItem, FetchResult, check_free_disk, fetch_batch, s5cmd_binary
from slidestock.planrow import slide_plan_text
from slidestock.provenance import (
    SLIDESTOCK_VERSION,
    Part,
    Timed,
    compose,
    software_versions,
    write_json,
    write_text_atomic,
)
from slidestock.slide import SIDE_FILES, SlideJob, level_downloads, level_file, side_path

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


def _base_record(job: SlideJob) -> dict[str, Any]:
    plan = job.plan
    return {
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
            "mpp": job.target.mpp,
            "max_px": job.target.max_px,
            "fallback_max_px": job.target.fallback_max_px,
            "format": job.fmt,
        },
        "output": None,
    }


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


def _batch_items(jobs: Sequence[SlideJob]) -> list[BatchItem]:
    """Every IDC object the jobs need: the chosen level and the associated images asked for."""
    items = []
    for job in jobs:
        plan = job.plan
        if not plan.planned or plan.source == "gdc":
            continue
        items += level_downloads(job)
        items += [
            BatchItem(plan.associated[kind][0], level_file(job, kind), plan.associated[kind][1])
            for kind in job.associated
            if kind in plan.associated
        ]
    return items


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
    _remove_stale_scratch(scratch_root, prefix, name)
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
                record = _run_slide(job, fetched, software, started, start)
                log.info("%s: %s", job.plan.slide_id, record["error"] or "done")
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


def log_job(log_path: str) -> None:
    """A job's logging: everything to its log file, and its progress lines to the terminal too.

    A local run shows a job's stderr; a cluster keeps it in the job's output file.
    """
    logging.basicConfig(filename=log_path, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("pyvips").setLevel(logging.WARNING)
    to_terminal = logging.StreamHandler(sys.stderr)
    to_terminal.setFormatter(logging.Formatter("%(message)s"))
    progress_log.addHandler(to_terminal)


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
    records = [json.loads(path.read_text()) for path in json_paths]

    def detail(record: Mapping[str, Any]) -> list[object]:
        return [(record.get("output") or {}).get("sha256") or record.get("error") or ""]

    return write_outcome_table(records, ["sha256_or_error"], detail, out)


def write_outcome_table(
    records: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    cells: Callable[[Mapping[str, Any]], Sequence[object]],
    out: Path,
) -> int:
    """A job's outcome table, one line per slide: id, status, ``columns`` (from ``cells``), whether a re-run may
    help (empty for a slide done). Cells are kept to one line. Written atomically; returns how many slides failed
    for a reason a re-run may get past."""
    lines = ["\t".join(["slide_id", "status", *columns, "retryable"]) + "\n"]
    retryable = 0
    for record in records:
        again = record["status"] == "failed" and record.get("retryable") is not False
        retryable += again
        flag = "" if record["status"] == "done" else str(again).lower()
        row = [record["slide_id"], record["status"], *(" ".join(str(c).split()) for c in cells(record)), flag]
        lines.append("\t".join(map(str, row)) + "\n")
    write_text_atomic(out, "".join(lines))
    return retryable


def _run_slide(
    job: SlideJob,
    fetched: Mapping[Path, FetchResult | FetchError],
    software: Mapping[str, str],
    started_at: str,
    batch_start: float,
) -> dict[str, Any]:
    """One slide's record: done with its output, or failed with the reason (nothing of it left on disk).

    The record is the plan's and the settings' facts with the parts its source
    yielded folded in (a failed slide keeps those it had), composed once.
    """
    base = {**_base_record(job), "software": dict(software), "output_digest": output_digest(job)}
    base["started_at"] = started_at
    log.info("%s: %s", job.plan.slide_id, job.plan.reason)
    parts: list[Part] = []
    try:
        if not job.plan.planned:
            raise SlidestockError(job.plan.reason)
        source = gdc.fetch_and_downsample(job) if job.plan.source == "gdc" else idc.fetch_and_downsample(job, fetched)
        for part in source:
            parts.append(part)
        ending: dict[str, Any] = {"status": "done"}
    except Exception as err:  # one slide never stops its batch; a bug is logged with its traceback
        ending = _failure(job, err)
    finally:
        for item in level_downloads(job):
            item.dest.unlink(missing_ok=True)
        for kind in job.associated:
            level_file(job, kind).unlink(missing_ok=True)
    parts.append(Timed({"total": round(time.monotonic() - batch_start, 3)}))
    record = {**compose(base, parts), **ending}
    if record["status"] != "done":
        record.pop("associated", None)
    return record


def _failure(job: SlideJob, err: Exception) -> dict[str, Any]:
    """What a failed slide's record says, once anything of an earlier, finished run of it is removed."""
    for stale in (job.image_path, *(side_path(job, name) for name in SIDE_FILES)):
        stale.unlink(missing_ok=True)
    return {**failure_of(job.plan.slide_id, err), "output": None}


def failure_of(slide_id: str, err: Exception, what: str = "") -> dict[str, Any]:
    """A failed slide's ``error`` and whether a re-run may get past it (``retryable``), logged.

    Network, server and size troubles may pass on a later run; a level or file that is wrong will not.
    An error slidestock did not raise on purpose is a bug: logged with its traceback.
    """
    failed = f"{slide_id}: {what} failed" if what else f"{slide_id} failed"
    if isinstance(err, SlidestockError):
        log.error("%s: %s", failed, err)
        return {"retryable": isinstance(err, FetchError), "error": str(err)}
    log.exception("%s unexpectedly", failed)
    return {"retryable": False, "error": f"{slide_id}: unexpected {type(err).__name__}: {err}"}
