"""A batch's IDC objects through one ``s5cmd run`` per attempt, each slide handed on as soon as its objects are in.

s5cmd reads its commands from a pipe and says, one JSON line each, when an object is
copied (stdout) or has failed (stderr). A slide's objects are fed to it once the slide
has a place: at most ``window`` slides have objects in flight or on disk, and the
consumer frees a slide's place (:meth:`Downloads.release`) once it has deleted its files.
So the link stays busy while the slides that arrived decode, and the scratch disk holds
a bounded number of slides, whatever the batch's size.

Each object's size is checked against the index as it lands. What fails within an
attempt (the network, the server, a first wrong size) is fed again by the next attempt,
after a backoff, while the slides that arrived go on decoding; a missing object or a size
wrong twice fails its slide at once. When no object arrives for ``timeout_s`` while some
are in flight (a stalled server), that s5cmd is stopped and what it had not finished is
tried again: a stall delays its own slides, never the others.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from slidestock.errors import FetchError, MissingObjectError
from slidestock.read.fetch import (
    MISSING_HINT,
    BatchItem,
    FetchResult,
    checked_size,
    command_file_line,
    s5cmd_base,
    source_url,
)

log = logging.getLogger(__name__)

Outcome = FetchResult | FetchError
# What a missing object looks like in s5cmd's error (AWS: NoSuchKey, a bucket: NoSuchBucket; others: 404).
_MISSING = ("NoSuchKey", "NoSuchBucket", "status code: 404")
# How often the event loop looks at the clock while it waits (a stall is judged to this precision).
_TICK_S = 0.25
# Objects in flight at a run's start; one more for each that arrives, up to the workers (a slow start).
_FIRST_IN_FLIGHT = 2


@dataclass(frozen=True)
class Group:
    """The objects one slide needs; the slide is handed on when each has its outcome."""

    key: str
    items: tuple[BatchItem, ...]

    @property
    def expected_bytes(self) -> int:
        return sum(item.expected_bytes for item in self.items)


@dataclass
class _Event:
    """One line of s5cmd's about one object (``error`` None: copied), or its end (``dest`` None)."""

    dest: Path | None
    error: str | None = None


@dataclass
class _Flight:
    """The objects fed to the running s5cmd and not answered yet, when that last changed, and how many were."""

    dests: set[Path] = field(default_factory=set)
    changed: float = field(default_factory=time.monotonic)
    answered: int = 0
    lock: threading.Condition = field(default_factory=threading.Condition)

    def add(self, dests: Sequence[Path]) -> None:
        with self.lock:
            self.dests.update(dests)
            self.changed = time.monotonic()

    def discard(self, dest: Path) -> None:
        with self.lock:
            self.dests.discard(dest)
            self.answered += 1
            self.changed = time.monotonic()
            self.lock.notify_all()

    def empty(self) -> bool:
        with self.lock:
            return not self.dests

    def stalled(self, timeout_s: float) -> bool:
        with self.lock:
            return bool(self.dests) and time.monotonic() - self.changed > timeout_s

    def wait_for_room(self, count: int, most: int, stop: threading.Event) -> None:
        """Until ``count`` more objects may fly (:func:`may_fly`), or ``stop``."""
        with self.lock:
            while not may_fly(len(self.dests), self.answered, count, most) and not stop.is_set():
                self.lock.wait(_TICK_S)


def may_fly(in_flight: int, answered: int, count: int, most: int) -> bool:
    """Whether ``count`` more objects may join the ``in_flight`` ones: two at a run's start, one more for each of
    the run's objects ``answered``, at most ``most`` (the workers); a slide's objects always, when none fly.

    A run's first objects share the link with few others, so the first slide lands, and
    decodes, in a fraction of the time that the workers' full share of the link would take.
    """
    return not in_flight or in_flight + count <= min(most, _FIRST_IN_FLIGHT + answered)


class Downloads:
    """Iterate to get each group with its objects' outcomes as they become final; release each when done.

    Outcomes are a :class:`FetchResult` (the file is there, of the index's size)
    or a :class:`FetchError` (no file is left). A group without objects comes
    first, at once, and takes no place. Each object is tried up to ``attempts``
    times, each try within one s5cmd run (which retries its requests
    ``retry_count`` times itself); a run feeds the objects to try again first.
    """

    def __init__(
        self,
        groups: Sequence[Group],
        endpoint: str,
        *,
        window: int,
        workers: int = 16,
        attempts: int = 3,
        backoff_s: float = 2.0,
        timeout_s: float = 1800.0,
        retry_count: int = 10,
    ) -> None:
        self.groups, self.endpoint, self.attempts = list(groups), endpoint, attempts
        self.backoff_s, self.timeout_s, self.workers = backoff_s, timeout_s, workers
        self.argv = [*s5cmd_base(endpoint), "--json", "--numworkers", str(workers), "--retry-count", str(retry_count)]
        self._places = threading.Semaphore(max(1, window))
        self._placed: set[str] = set()
        self._lock = threading.Lock()
        self._with_consumer = 0  # groups handed on and not released yet: places that will come back
        self._start = time.monotonic()
        self._outcome: dict[Path, Outcome] = {}
        self._tries: dict[Path, int] = {}
        self._last_error: dict[Path, str] = {}
        self._wrong_sizes: dict[Path, int] = {}
        self._items = {item.dest: item for group in self.groups for item in group.items}
        self._group_of = {item.dest: group for group in self.groups for item in group.items}
        # How s5cmd names an object in its errors: the command, unquoted.
        self._commands = {f"cp {source_url(i.url, endpoint)} {i.dest}": i.dest for i in self._items.values()}

    def release(self, group: Group) -> None:
        """The consumer is done with ``group`` and its files are gone: another slide may come in."""
        if group.key in self._placed:
            with self._lock:
                self._with_consumer -= 1
            self._places.release()

    def __iter__(self) -> Iterator[tuple[Group, dict[Path, Outcome]]]:
        for group in self.groups:
            if not group.items:
                yield group, {}
        while True:
            todo = [(group, self._unfinished(group)) for group in self.groups]
            # Objects to try again first: their groups hold places already, and may hold the last ones.
            todo = sorted(((g, items) for g, items in todo if items), key=lambda gi: gi[0].key not in self._placed)
            if not todo:
                return
            tried = max(self._tries.get(item.dest, 0) for _, items in todo for item in items)
            if tried:
                time.sleep(self.backoff_s * 2 ** (tried - 1))
            yield from self._run(todo)

    def _unfinished(self, group: Group) -> list[BatchItem]:
        return [item for item in group.items if item.dest not in self._outcome]

    def _outcomes(self, group: Group) -> dict[Path, Outcome]:
        return {item.dest: self._outcome[item.dest] for item in group.items}

    def _run(self, todo: list[tuple[Group, list[BatchItem]]]) -> Iterator[tuple[Group, dict[Path, Outcome]]]:
        """One s5cmd fed ``todo`` as places allow; yields each group whose last object it settles."""
        proc = subprocess.Popen(
            [*self.argv, "run"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        events: queue.Queue[_Event] = queue.Queue()
        flight, stop, general = _Flight(), threading.Event(), [""]
        threads = [
            threading.Thread(target=self._feed, args=(proc.stdin, todo, flight, stop), daemon=True),
            threading.Thread(target=_copied, args=(proc.stdout, events), daemon=True),
            threading.Thread(target=self._failed, args=(proc.stderr, events, general), daemon=True),
        ]
        for thread in threads:
            thread.start()
        stalled, open_streams = False, 2
        try:
            while open_streams:
                try:
                    event = events.get(timeout=_TICK_S)
                except queue.Empty:
                    if not stalled and flight.stalled(self.timeout_s):
                        stalled = True
                        log.warning("s5cmd: no object arrived for %g s (fetch.timeout); stopping it", self.timeout_s)
                        proc.kill()
                    continue
                if event.dest is None:
                    open_streams -= 1
                    continue
                group = self._settle(event.dest, event.error)
                flight.discard(event.dest)  # after the group is counted as handed on: its place will come back
                if group is not None:
                    yield group, self._outcomes(group)
        finally:
            stop.set()
            if proc.poll() is None:
                proc.kill()
            code = proc.wait()
        if stalled:
            why = f"s5cmd stopped: no object arrived for {self.timeout_s:g} s (fetch.timeout)"
        else:
            why = f"s5cmd exited {code}: {general[0] or 'no file written'}"
        for dest in sorted(flight.dests):
            group = self._settle(dest, why)
            if group is not None:
                yield group, self._outcomes(group)

    def _settle(self, dest: Path, error: str | None) -> Group | None:
        """Record what became of one object in this run (``error`` None: it was copied); its group when that
        settled the group's last object (then counted as with the consumer)."""
        item = self._items[dest]
        tries = self._tries[dest] = self._tries.get(dest, 0) + 1
        if error is None:
            result = checked_size(item, self._wrong_sizes, time.monotonic() - self._start, tries)
            if isinstance(result, str):  # a wrong size, the first time: fetched again
                self._last_error[dest] = result
            else:
                self._outcome[dest] = result
        elif any(sign in error for sign in _MISSING):
            item.dest.unlink(missing_ok=True)
            self._outcome[dest] = MissingObjectError(f"{item.url}: not found at {self.endpoint}: {MISSING_HINT}")
        else:
            item.dest.unlink(missing_ok=True)
            self._last_error[dest] = error if error.startswith("s5cmd") else f"s5cmd: {error[-500:]}"
        if dest not in self._outcome:
            log.warning("fetch %s: attempt %d/%d failed: %s", item.url, tries, self.attempts, self._last_error[dest])
            if tries < self.attempts:
                return None
            said = f"{tries} attempt{'s' if tries != 1 else ''}"
            self._outcome[dest] = FetchError(f"{item.url}: {said} failed; last: {self._last_error[dest]}")
        group = self._group_of[dest]
        if self._unfinished(group):
            return None
        with self._lock:
            self._with_consumer += group.key in self._placed
        return group

    def _feed(
        self, stdin: IO[str], todo: list[tuple[Group, list[BatchItem]]], flight: _Flight, stop: threading.Event
    ) -> None:
        """Write each group's commands once it has a place, then close s5cmd's input (it ends when done).

        When no place is free and none can come back in this run (nothing in flight, nothing with the
        consumer: the places are held by groups waiting to try an object again), the run's input ends
        here; the next run feeds those objects first, then the rest.
        """
        try:
            for group, items in todo:
                while group.key not in self._placed:
                    if self._places.acquire(timeout=_TICK_S):
                        self._placed.add(group.key)
                    elif stop.is_set() or (flight.empty() and self._idle_consumer()):
                        return
                flight.wait_for_room(len(items), self.workers, stop)
                for item in items:
                    item.dest.unlink(missing_ok=True)
                flight.add([item.dest for item in items])
                stdin.write("".join(command_file_line(item, self.endpoint) + "\n" for item in items))
                stdin.flush()
        except (BrokenPipeError, ValueError):
            return  # s5cmd was stopped
        finally:
            with contextlib.suppress(BrokenPipeError):
                stdin.close()

    def _idle_consumer(self) -> bool:
        with self._lock:
            return self._with_consumer == 0

    def _failed(self, stderr: IO[str], events: queue.Queue[_Event], general: list[str]) -> None:
        """s5cmd's errors: one event per object it names; any other line is kept as the run's reason."""
        for line in stderr:
            try:
                said = json.loads(line)
                dest = self._commands[said["command"]]
            except (ValueError, KeyError, TypeError):
                if line.strip():
                    general[0] = line.strip()[-500:]
                continue
            events.put(_Event(dest, str(said.get("error") or line.strip())))
        events.put(_Event(None))


def _copied(stdout: IO[str], events: queue.Queue[_Event]) -> None:
    """s5cmd's successes: one event per object copied."""
    for line in stdout:
        try:
            said = json.loads(line)
        except ValueError:
            continue
        if said.get("success") and said.get("destination"):
            events.put(_Event(Path(said["destination"])))
    events.put(_Event(None))


def fetch_batch(
    items: Sequence[BatchItem],
    endpoint: str,
    *,
    workers: int = 16,
    attempts: int = 3,
    backoff_s: float = 2.0,
    timeout_s: float = 1800.0,
    retry_count: int = 10,
) -> dict[Path, Outcome]:
    """Every item at once (no window), each item's ``dest`` mapped to its result or error, when all are settled."""
    groups = [Group(str(item.dest), (item,)) for item in items]
    downloads = Downloads(
        groups,
        endpoint,
        window=len(groups),
        workers=workers,
        attempts=attempts,
        backoff_s=backoff_s,
        timeout_s=timeout_s,
        retry_count=retry_count,
    )
    settled: dict[Path, Outcome] = {}
    for group, outcomes in downloads:
        settled.update(outcomes)
        downloads.release(group)
    return settled
