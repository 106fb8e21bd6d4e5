"""What every job of the workflow shares: its logging, its progress lines, its failure records, its outcome table,
and a quiet end on Ctrl-C.

The stock's batch driver (:mod:`slidestock.jobs.stock`) and the patches' (:mod:`slidestock.jobs.patches`) stand on this
module side by side; rule scripts call :func:`log_job` and :func:`run_job`.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from slidestock.errors import SlidestockError
from slidestock.provenance import write_text_atomic
from slidestock.records import Failure, Record, may_pass

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
U = TypeVar("U")
AnyRecord = TypeVar("AnyRecord", bound=Record)

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


def write_outcome_table(
    records: Sequence[AnyRecord], columns: Sequence[str], cells: Callable[[AnyRecord], Sequence[object]], out: Path
) -> int:
    """A job's outcome table, one line per slide: id, status, ``columns`` (from ``cells``), whether a re-run may
    help (empty for a slide done). Cells are kept to one line. Written atomically; returns how many slides failed
    for a reason a re-run may get past."""
    lines = ["\t".join(["slide_id", "status", *columns, "retryable"]) + "\n"]
    retryable = 0
    for record in records:
        again = may_pass(record)
        retryable += again
        flag = "" if record["status"] == "done" else str(again).lower()
        row = [record["slide_id"], record["status"], *(" ".join(str(c).split()) for c in cells(record)), flag]
        lines.append("\t".join(map(str, row)) + "\n")
    write_text_atomic(out, "".join(lines))
    return retryable


def failure_of(slide_id: str, err: Exception, what: str = "") -> Failure:
    """A failed slide's ``error`` and whether a re-run may get past it (``retryable``), logged.

    Network and server troubles may pass on a later run; a missing object, a size wrong twice, a level
    or file that is wrong will not (each error class says, :attr:`SlidestockError.retryable`). An error
    slidestock did not raise on purpose is a bug: logged with its traceback.
    """
    failed = f"{slide_id}: {what} failed" if what else f"{slide_id} failed"
    if isinstance(err, SlidestockError):
        log.error("%s: %s", failed, err)
        return {"error": str(err), "retryable": err.retryable}
    log.exception("%s unexpectedly", failed)
    return {"error": f"{slide_id}: unexpected {type(err).__name__}: {err}", "retryable": False}


def run_job(what: str, main: Callable[[], None]) -> None:
    """Run a rule script's ``main``; Ctrl-C ends it with one line instead of a traceback (exit 130).

    What ``main`` had finished is kept (each record is written whole), and the next run does the rest.
    """
    try:
        main()
    except KeyboardInterrupt:
        log.warning("%s: interrupted", what)
        print(f"{what}: interrupted; what it finished is kept, and the next run does the rest", file=sys.stderr)
        sys.exit(130)


def map_threads(work: Callable[[T], R], items: Iterable[T], threads: int) -> list[R]:
    """``work`` on each item, ``threads`` at a time, results in order. On Ctrl-C the items not yet begun are
    dropped (those under way finish, so each record is whole) instead of the job running to its end."""
    pool = ThreadPoolExecutor(max_workers=max(1, threads))
    try:
        return list(pool.map(work, items))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def stream_threads(
    work: Callable[[T, U], R], ready: Iterable[tuple[T, U]], done: Callable[[T], None], threads: int
) -> list[R]:
    """``work`` on each pair as ``ready`` yields it, ``threads`` at a time; ``done(key)`` once each work has ended
    (a place freed for the next). Results in the order the pairs came. On Ctrl-C, as :func:`map_threads`."""
    pool = ThreadPoolExecutor(max_workers=max(1, threads))
    pairs: Iterator[tuple[T, U]] = iter(ready)
    futures = []
    try:
        for key, value in pairs:
            future = pool.submit(work, key, value)
            future.add_done_callback(lambda _, key=key: done(key))  # type: ignore[misc]
            futures.append(future)
        return [future.result() for future in futures]
    finally:
        close = getattr(pairs, "close", None)
        if close is not None:
            close()  # a generator's own clean-up (its s5cmd stopped) before waiting for the work under way
        pool.shutdown(wait=True, cancel_futures=True)
