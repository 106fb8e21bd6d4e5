"""The state of a run, read from what it wrote: the plan and the per-slide records.

Nothing is locked or changed, so it can be asked at any time, from a login
node, while the run goes on. Slides count as done or failed once their record
says so for the current plan (records older than the plan are from an earlier
run); the rate is taken over the records written since the plan.
"""

from __future__ import annotations

import csv
import json
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slidestock.errors import SlidestockError

_NUMBERS = re.compile(r"\b(?:0x[0-9a-fA-F]+|\d+)\b")  # hexadecimal too: a memory address in a repr
# What differs from slide to slide in alike failures: object URLs and local paths.
_PLACES = re.compile(r"\b(?:s3|gs|https?)://\S+|(?<![\w.])/[\w.\-]+(?:/[\w.\-]+)+")


@dataclass(frozen=True)
class RunStatus:
    """Slides planned, done, failed (by reason) and still to do; bytes fetched; the recent rate and an ETA."""

    planned: int
    done: int
    failed: int
    to_do: int
    bytes_fetched: int
    failures: dict[str, int] = field(default_factory=dict)
    slides_per_s: float | None = None
    eta_s: float | None = None


def reason_of(slide_id: str, error: str) -> str:
    """A failure's reason without its slide id, URLs, paths and numbers, so that alike failures group together."""
    reason = error.removeprefix(f"{slide_id}: ").split("\n")[0]
    reason = re.sub(rf"(?<![\w-]){re.escape(slide_id)}(?![\w-])", "<slide>", _PLACES.sub(_place, reason))
    return _NUMBERS.sub("#", reason)[:400]


def _place(match: re.Match[str]) -> str:
    """``<where>`` for a URL or path, keeping the punctuation that ends the sentence around it."""
    found = match.group(0)
    kept = found.rstrip(":,;)\"'")
    return "<where>" + found[len(kept) :]


def read_status(results: Path, now: float | None = None) -> RunStatus:
    """The state of the run whose outputs are under ``results`` (``results/cohort/instances.tsv`` and slides)."""
    plan = results / "cohort" / "instances.tsv"
    if not plan.is_file():
        raise SlidestockError(f"{plan}: no plan yet; expected a run that has passed its plan step")
    with plan.open(newline="") as handle:
        slide_ids = [row["slide_id"] for row in csv.DictReader(handle, delimiter="\t")]
    since = last = plan.stat().st_mtime
    done = failed = fetched = recent = 0
    failures: Counter[str] = Counter()
    for slide_id in slide_ids:
        path = results / "slides" / f"{slide_id}.json"
        try:
            record = json.loads(path.read_text())
            written = path.stat().st_mtime
        except (OSError, ValueError):
            continue  # not yet written, or being replaced
        fetched += int(record.get("bytes_fetched") or 0)
        recent += written >= since
        last = max(last, written)
        if record.get("status") == "done":
            done += 1
        else:
            failed += 1
            failures[reason_of(slide_id, str(record.get("error") or "no reason recorded"))] += 1
    to_do = len(slide_ids) - done - failed
    # A run still going is measured up to now; a finished one up to its last record.
    end = (time.time() if now is None else now) if to_do else last
    rate = recent / (end - since) if recent and end > since else None
    eta = to_do / rate if rate and to_do else None
    return RunStatus(len(slide_ids), done, failed, to_do, fetched, dict(failures.most_common()), rate, eta)


def patch_status_lines(results: Path) -> list[str]:
    """With patches on (a patch plan exists), how many slides have their patches, failed or are to do."""
    plan = results / "cohort" / "patch_instances.tsv"
    if not plan.is_file():
        return []
    with plan.open(newline="") as handle:
        slide_ids = [row["slide_id"] for row in csv.DictReader(handle, delimiter="\t")]
    done = failed = patches = fetched = 0
    for slide_id in slide_ids:
        try:
            record = json.loads((results / "patches" / f"{slide_id}.json").read_text())
        except (OSError, ValueError):
            continue
        fetched += int(record.get("bytes_fetched") or 0)
        if record.get("status") == "done":
            done, patches = done + 1, patches + len(record.get("patches", []))
        else:
            failed += 1
    return [
        f"  patches   {patches:,} from {done:,} slides; {failed:,} failed, {len(slide_ids) - done - failed:,} to do; "
        f"{fetched:,} bytes fetched by range"
    ]


def format_status(status: RunStatus, results: Path) -> str:
    """The state as a few aligned lines for the terminal."""
    lines = [
        f"slidestock run in {results}: {status.planned:,} slides planned",
        f"  done      {status.done:,}",
        f"  failed    {status.failed:,}",
        *(f"    {count:>6,}  {reason}" for reason, count in status.failures.items()),
        f"  to do     {status.to_do:,}",
        f"  fetched   {status.bytes_fetched:,} bytes",
    ]
    if status.slides_per_s is not None:
        eta = "" if status.eta_s is None else f", about {_duration(status.eta_s)} to go"
        lines.append(f"  rate      {status.slides_per_s:.2f} slides/s since the plan{eta or ', finished'}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


@dataclass(frozen=True)
class RunOutcome:
    """A finished run's slides from its batch tables: done, and failed by reason, split by whether a re-run may help.

    ``fetched`` is (bytes fetched, bytes of the whole series) over the report's slides, when known.
    """

    done: int
    retryable: dict[str, int]
    permanent: dict[str, int]
    fetched: tuple[int, int] | None = None

    @property
    def failed(self) -> int:
        return sum(self.retryable.values()) + sum(self.permanent.values())

    def lines(self, command: str) -> list[str]:
        """What the terminal shows at the end: failures grouped by reason, then one line with the counts."""
        total = self.done + self.failed
        shown = [f"  {count:>6,} x {reason}  (may pass on a re-run)" for reason, count in self.retryable.items()]
        shown += [f"  {count:>6,} x {reason}  (permanent)" for reason, count in self.permanent.items()]
        last = f"slidestock: {self.done:,} of {total:,} slides done, {self.failed:,} failed"
        if self.fetched is not None:
            fetched, whole = self.fetched
            share = f" ({100 * fetched / whole:.2f} %)" if whole else ""
            last += f"; fetched {fetched:,} of {whole:,} series bytes{share}"
        n_again, n_kept = sum(self.retryable.values()), sum(self.permanent.values())
        if n_again:
            last += f"; {n_again:,} may pass: `{command}` again retries them"
        if n_kept:
            last += f"; {n_kept:,} permanent: fetch.redo_failed: true retries those"
        return [*shown, last + "; report: results/report/index.html"]


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


def patch_outcome(tables: Sequence[Path], command: str) -> tuple[str, int]:
    """The end-of-run line about patches (from ``results/patches/batches/*.tsv``), and how many slides' failed.

    As for the stock's line, failures that may pass are said to be retried by ``command`` run again.
    """
    slides = failed = patches = fetched = again = 0
    reasons: Counter[str] = Counter()
    for table in tables:
        with table.open(newline="") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                slides += 1
                patches += int(row["n_patches"] or 0)
                fetched += int(row["bytes_fetched"] or 0)
                if row["status"] != "done":
                    failed += 1
                    again += _may_pass(row)
                    reasons[reason_of(row["slide_id"], row["error"])] += 1
    line = f"slidestock: patches: {patches:,} from {slides - failed:,} of {slides:,} slides, {failed:,} failed"
    line += f"; fetched {fetched:,} bytes by range"
    if again:
        line += f"; {again:,} may pass: `{command}` again retries them"
    if reasons:
        line += "; " + "; ".join(f"{count:,} x {reason}" for reason, count in reasons.most_common(3))
    return line, failed


def read_outcome(tables: Sequence[Path], report_table: Path | None = None) -> RunOutcome:
    """The outcome of the run whose batch tables (``results/batches/*.tsv``) are given.

    With the report's ``slides.csv``, also the bytes fetched against the whole series'.
    """
    done = 0
    again: Counter[str] = Counter()
    kept: Counter[str] = Counter()
    for table in tables:
        with table.open(newline="") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                if row["status"] == "done":
                    done += 1
                    continue
                reason = reason_of(row["slide_id"], row["sha256_or_error"])
                (again if _may_pass(row) else kept)[reason] += 1
    fetched = None
    if report_table is not None:
        with report_table.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        fetched = (_total(rows, "bytes_fetched"), _total(rows, "series_size_bytes"))
    return RunOutcome(done, dict(again.most_common()), dict(kept.most_common()), fetched)


def _total(rows: Sequence[Mapping[str, str]], column: str) -> int:
    return sum(int(float(row[column])) for row in rows if row.get(column))


RECORDED_TARGET = ("mpp", "max_px", "fallback_max_px", "format")


def redo_notice(slides: Path, target: Mapping[str, Any], version: str) -> str | None:
    """One line saying how many slides made before differ from the current settings (a run redoes them), and how.

    Read from the per-slide records: those whose target (spacing or size, fallback,
    format) or slidestock version differs from now. None when there are none.
    """
    changes: Counter[str] = Counter()
    stale = total = 0
    for path in slides.glob("*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        total += 1
        made = record.get("target") or {}
        differs = [
            f"target.{key} {made.get(key)} → {target.get(key)}"
            for key in RECORDED_TARGET
            if made.get(key) != target.get(key)
        ]
        made_by = (record.get("software") or {}).get("slidestock")
        if made_by != version:
            differs.append(f"slidestock {made_by} → {version}")
        stale += bool(differs)
        changes.update(differs)
    if not stale:
        return None
    why = ", ".join(sorted(changes, key=lambda change: (-changes[change], change)))
    return (
        f"slidestock: {stale:,} of the {total:,} slides made before differ from this config ({why}): a run redoes them"
    )
