"""What a stock holds and what a run did, read from what it wrote: the plan, the settings and the records.

Nothing is locked or changed, so it can be asked at any time, from a login
node, while the run goes on. A slide counts as done or failed only when its
record was made for the current plan and settings (:mod:`slidestock.state`);
any other record is to redo. Every count says whether it is the stock's (all
of it, whenever made) or this run's (written since the run started).

Failures are grouped by their reason with the numbers, places and slide ids
masked (:func:`reason_of`); what is shown of a group is its first reason, as
it was said.
"""

from __future__ import annotations

import csv
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from slidestock.records import as_patch_record
from slidestock.state import DONE, FAILED, TO_DO, TO_REDO, SlideState, Stock, count

_NUMBERS = re.compile(r"\b(?:0x[0-9a-fA-F]+|\d+)\b")  # hexadecimal too: a memory address in a repr
# What differs from slide to slide in alike failures: object URLs and local paths.
_PLACES = re.compile(r"\b(?:s3|gs|https?)://\S+|(?<![\w.])/[\w.\-]+(?:/[\w.\-]+)+")
REPORT = "results/report/index.html"


def reason_of(slide_id: str, error: str) -> str:
    """A failure's pattern: its reason without the slide id, URLs, paths and numbers. Only for grouping."""
    reason = error.removeprefix(f"{slide_id}: ").split("\n")[0]
    reason = re.sub(rf"(?<![\w-]){re.escape(slide_id)}(?![\w-])", "<slide>", _PLACES.sub(_place, reason))
    return _NUMBERS.sub("#", reason)[:400]


def _place(match: re.Match[str]) -> str:
    """``<where>`` for a URL or path, keeping the punctuation that ends the sentence around it."""
    found = match.group(0)
    kept = found.rstrip(":,;)\"'")
    return "<where>" + found[len(kept) :]


def plural(count: int, noun: str) -> str:
    """``1 slide``, ``2 slides``, ``1,000 slides``."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def said(error: str) -> str:
    """A failure as shown: its first line, as it was said (numbers and all), at most 400 characters."""
    line = error.split("\n")[0]
    return line if len(line) <= 400 else line[:399] + "…"


@dataclass(frozen=True)
class FailureGroup:
    """Failures alike but for their numbers and places: their slides, the first as said, whether a re-run may help."""

    slides: tuple[str, ...]
    first: str
    may_pass: bool

    @property
    def count(self) -> int:
        return len(self.slides)

    def line(self) -> str:
        alike = f"; and {self.count - 1:,} alike" if self.count > 1 else ""
        what = "may pass on a re-run" if self.may_pass else "permanent"
        return f"  {self.count:>6,} x {self.first}  ({what}{alike})"


def group_failures(failed: Iterable[tuple[str, str, bool]]) -> list[FailureGroup]:
    """(slide id, error, may pass) of failed slides as groups of the same pattern, largest first."""
    groups: dict[tuple[str, bool], list[tuple[str, str]]] = {}
    for slide_id, error, may_pass in failed:
        groups.setdefault((reason_of(slide_id, error), may_pass), []).append((slide_id, error))
    ordered = sorted(groups.items(), key=lambda item: (not item[0][1], -len(item[1]), item[0][0]))
    return [
        FailureGroup(tuple(slide for slide, _ in members), said(members[0][1]), may_pass)
        for (_, may_pass), members in ordered
    ]


def _failures(states: Iterable[SlideState]) -> list[FailureGroup]:
    return group_failures((s.slide_id, s.error, s.may_pass) for s in states if s.state == FAILED)


@dataclass(frozen=True)
class RunStatus:
    """The stock's slides by state, the bytes fetched for its current records, failures, the recent rate and an ETA."""

    planned: int
    done: int
    failed: int
    to_redo: int
    to_do: int
    bytes_fetched: int
    failures: list[FailureGroup] = field(default_factory=list)
    slides_per_s: float | None = None
    eta_s: float | None = None


def read_status(results: Path, now: float | None = None) -> RunStatus:
    """The state of the stock under ``results`` against its last plan and settings."""
    stock = Stock.at(results)
    return status_of(stock, stock.slide_states(), now)


def status_of(stock: Stock, states: Sequence[SlideState], now: float | None = None) -> RunStatus:
    """The stock's state from its judged slides; the rate over the records written since the plan."""
    counts = count(states)
    since = (stock.results / "cohort" / "instances.tsv").stat().st_mtime
    written = [_mtime(stock.slides / f"{s.slide_id}.json") for s in states if s.state in (DONE, FAILED)]
    recent = sum(t >= since for t in written)
    left = counts[TO_DO] + counts[TO_REDO]
    # A run still going is measured up to now; a finished one up to its last record.
    end = (time.time() if now is None else now) if left else max(written, default=since)
    rate = recent / (end - since) if recent and end > since else None
    return RunStatus(
        planned=len(states),
        done=counts[DONE],
        failed=counts[FAILED],
        to_redo=counts[TO_REDO],
        to_do=counts[TO_DO],
        bytes_fetched=sum(s.bytes_fetched for s in states if s.state in (DONE, FAILED)),
        failures=_failures(states),
        slides_per_s=rate,
        eta_s=left / rate if rate and left else None,
    )


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def format_status(status: RunStatus, results: Path) -> str:
    """The stock's state as a few aligned lines for the terminal."""
    redo = f" ({status.to_redo:,} made for other settings or an earlier plan)" if status.to_redo else ""
    lines = [
        f"slidestock stock in {results}: {status.planned:,} slides planned",
        f"  done      {status.done:,}",
        f"  failed    {status.failed:,}",
        *(group.line() for group in status.failures),
        f"  to do     {status.to_do + status.to_redo:,}{redo}",
        f"  fetched   {status.bytes_fetched:,} bytes for the {status.done + status.failed:,} slides done or failed",
    ]
    if status.slides_per_s is not None:
        eta = "" if status.eta_s is None else f", about {_duration(status.eta_s)} to go"
        lines.append(f"  rate      {status.slides_per_s:.2f} slides/s since the plan{eta or ', finished'}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def patch_status_lines(stock: Stock, slides: Sequence[SlideState]) -> list[str]:
    """With patches on, the patches cut from slides done for the current settings, and the slides still to do."""
    states = stock.patch_states(slides)
    if stock.settings.patches is None:
        return []
    counts = count(states)
    current = [s for s in states if s.state in (DONE, FAILED)]
    patches = sum(s.n_patches for s in current)
    redo = f" ({counts[TO_REDO]:,} made for other settings)" if counts[TO_REDO] else ""
    return [
        f"  patches   {patches:,} from {counts[DONE]:,} slides; {counts[FAILED]:,} failed, "
        f"{counts[TO_DO] + counts[TO_REDO]:,} to do{redo}; "
        f"{sum(s.bytes_fetched for s in current):,} bytes fetched by range for them",
        *(f"  {group.line()}" for group in _failures(states)),
    ]


# --- The end of a run: what it did, and what the stock holds -----------------------------------------------


def _this_run(states: Sequence[SlideState], folder: Path, since: float) -> list[SlideState]:
    """The judged slides whose records this run wrote (written at or after ``since``)."""
    return [s for s in states if s.state in (DONE, FAILED) and _mtime(folder / f"{s.slide_id}.json") >= since]


def run_lines(stock: Stock, since: float, command: str) -> tuple[list[str], int]:
    """What the terminal shows at the end of a run: failures by reason, what this run did, what the stock holds.

    Returns the lines and how many slides (and slides' patches) of the stock failed.
    """
    states = stock.slide_states()
    counts, made = count(states), _this_run(states, stock.slides, since)
    made_counts = count(made)
    failures = _failures(states)
    lines = [group.line() for group in failures]
    lines.append(
        f"slidestock: this run: {plural(made_counts[DONE], 'slide')} made, {made_counts[FAILED]:,} failed, "
        f"{counts[DONE] + counts[FAILED] - len(made):,} kept from before; "
        f"fetched {sum(s.bytes_fetched for s in made):,} bytes for them"
    )
    lines.append(_stock_line(states, counts, command, report_is_current(stock, states)))
    failed = counts[FAILED]
    patches = stock.patch_states(states)
    if stock.settings.patches is not None:
        lines += _patch_lines(patches, _this_run(patches, stock.patches, since), command)
        failed += count(patches)[FAILED]
    return lines, failed


def report_is_current(stock: Stock, states: Sequence[SlideState]) -> bool | None:
    """Whether ``results/report/index.html`` is of the stock as it is: made after its plan, its settings and every
    slide's record (True), before one of them (False: a run stopped before its report, or a new config planned
    only), or not made at all (None). A re-run that made nothing leaves a current report current."""
    report = stock.results / REPORT.removeprefix("results/")
    if not report.is_file():
        return None
    cohort = stock.results / "cohort"
    made = [cohort / "instances.tsv", cohort / "settings.json"]
    made += [stock.slides / f"{s.slide_id}.json" for s in states if s.state in (DONE, FAILED)]
    return _mtime(report) >= max(_mtime(path) for path in made)


def _stock_line(states: Sequence[SlideState], counts: dict[str, int], command: str, report_made: bool | None) -> str:
    """The stock's counts and bytes, and where its report is: current (True), of an earlier stock (False), or not
    made (None)."""
    current = [s for s in states if s.state in (DONE, FAILED)]
    fetched = sum(s.bytes_fetched for s in current)
    whole = sum(s.series_bytes for s in current)
    share = f" ({100 * fetched / whole:.2f} %)" if whole else ""
    said = f"{fetched:,} of {whole:,} series bytes fetched for it{share}" if current else "nothing of it made yet"
    line = (
        f"slidestock: the stock: {counts[DONE]:,} of {len(states):,} slides done, {counts[FAILED]:,} failed"
        f"{_left(counts)}; {said}"
    )
    report = {
        True: f"; report: {REPORT}",
        False: f"; {REPORT} is of the stock before this run (which stopped before its report)",
        None: "; no report yet (this run stopped before its report)",
    }[report_made]
    return line + _retry_hint(current, command) + report


def _left(counts: dict[str, int]) -> str:
    left = counts[TO_DO] + counts[TO_REDO]
    return f", {left:,} not made" if left else ""


def _retry_hint(states: Sequence[SlideState], command: str) -> str:
    n_again = sum(s.may_pass for s in states)
    n_kept = sum(s.state == FAILED and not s.may_pass for s in states)
    hint = f"; {n_again:,} may pass: `{command}` again retries them" if n_again else ""
    return hint + (f"; {n_kept:,} permanent: fetch.redo_failed: true retries those" if n_kept else "")


def _patch_lines(states: Sequence[SlideState], made: Sequence[SlideState], command: str) -> list[str]:
    def n_patches(group: Iterable[SlideState]) -> int:
        return sum(s.n_patches for s in group)

    counts, made_counts = count(states), count(made)
    current = [s for s in states if s.state in (DONE, FAILED)]
    rows = [row for s in made if s.record and s.state == DONE for row in as_patch_record(s.record)["patches"]]
    # patches.format: coordinates places patches and locates their frames, and fetches no pixels.
    placed = bool(rows) and not any(row["path"] or row["shard"] for row in rows)
    how = "placed on" if placed else "cut from"
    fetched = "bytes by range to locate their frames (coordinates only, no pixels)" if placed else "bytes by range"
    return [
        *(group.line() for group in _failures(states)),
        f"slidestock: patches this run: {n_patches(made):,} {how} {plural(made_counts[DONE], 'slide')}, "
        f"{made_counts[FAILED]:,} failed, {plural(len(current) - len(made), 'slide')} kept from before; "
        f"fetched {sum(s.bytes_fetched for s in made):,} {fetched}",
        f"slidestock: patches in the stock: {n_patches(states):,} from {counts[DONE]:,} of {len(states):,} slides, "
        f"{counts[FAILED]:,} failed{_left(counts)}; {sum(s.bytes_fetched for s in current):,} bytes fetched by "
        f"range for them" + _retry_hint(current, command),
    ]


def _may_pass(row: dict[str, str]) -> bool:
    """A batch table row of a slide that failed for a reason a re-run may get past (unknown counts as such)."""
    return row["status"] != "done" and row.get("retryable") != "false"


def tables_to_redo(tables: Sequence[Path]) -> list[Path]:
    """The batch tables that list a slide which failed for a reason a re-run may get past."""
    redo = []
    for table in tables:
        with table.open(newline="") as handle:
            if any(_may_pass(row) for row in csv.DictReader(handle, delimiter="\t")):
                redo.append(table)
    return redo
