"""The stock on disk judged against the current plan and settings: each slide's state, and the files it should have.

A slide is *done* or *failed* only when its record was made for its current
plan row and the run's settings (the record's digest is the one
:meth:`StockSettings.digest` gives now); a record made for anything else is
*to redo*, and a slide without a record is *to do*. Patches alike, against
the patch plan, the patch settings and the slide's image. Status, verify,
the report, the end-of-run lines and the tidy step all judge the stock here,
so they cannot disagree.

Reads only: the plan files, ``results/cohort/settings.json`` and the records.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slidestock.errors import SlidestockError
from slidestock.planrow import PlanRow, read_batch_plan
from slidestock.settings import PatchSettings, RunSettings

# A slide's states, in the order they are said.
DONE, FAILED, TO_REDO, TO_DO = "done", "failed", "to redo", "to do"


@dataclass(frozen=True)
class SlideState:
    """One planned slide: its state against the current plan and settings, and the record on disk (if any)."""

    plan: PlanRow
    state: str
    record: Mapping[str, Any] | None

    @property
    def slide_id(self) -> str:
        return self.plan.slide_id

    @property
    def may_pass(self) -> bool:
        """A failed slide that a re-run may get past (a record that does not say counts as such)."""
        return self.state == FAILED and (self.record or {}).get("retryable") is not False

    @property
    def bytes_fetched(self) -> int:
        return int((self.record or {}).get("bytes_fetched") or 0)


@dataclass(frozen=True)
class Stock:
    """Where a run's results are, and the settings its last plan was made with."""

    results: Path
    settings: RunSettings

    @classmethod
    def at(cls, results: Path) -> Stock:
        """The stock under ``results`` (raises :class:`SlidestockError` when no run has planned it yet)."""
        plan = results / "cohort" / "instances.tsv"
        if not plan.is_file():
            raise SlidestockError(f"{plan} not found: no plan yet; expected the results of a run that has passed its "
                                  "plan step here (run the workflow first)")  # fmt: skip
        return cls(results, RunSettings.read(results / "cohort" / "settings.json"))

    @property
    def slides(self) -> Path:
        return self.results / "slides"

    @property
    def patches(self) -> Path:
        return self.results / "patches"

    def slide_states(self) -> list[SlideState]:
        """Every slide of the plan, in plan order, judged against the stock's settings."""
        plans = read_plans(self.results / "cohort" / "batches")
        return judge(plans, self.slides, self.settings.stock.digest, "output_digest")

    def patch_states(self, slides: Sequence[SlideState]) -> list[SlideState]:
        """Every slide of the patch plan (none while patches are off), judged against the patch settings.

        A slide's patches hang on its image: they are current only while the slide is done.
        """
        patches = self.settings.patches
        if patches is None:
            return []
        images = {s.slide_id: image_sha256(s) for s in slides}
        plans = read_plans(self.results / "cohort" / "patches")
        return judge(plans, self.patches, _patch_digest(patches, images), "digest")


def read_plans(folder: Path) -> list[PlanRow]:
    """The plan rows of every batch plan in ``folder`` (``b00000.tsv`` ...), in batch order."""
    return [row for path in sorted(folder.glob("b*.tsv")) for row in read_batch_plan(path)]


def read_record(path: Path) -> dict[str, Any] | None:
    """A JSON record, or None when there is none (or it is being replaced)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def judge(plans: Iterable[PlanRow], folder: Path, digest_of: Callable[[PlanRow], str], key: str) -> list[SlideState]:
    """Each plan row's state from ``folder/{slide}.json``, whose ``key`` must equal ``digest_of(plan)``."""
    return [judge_one(plan, folder / f"{plan.slide_id}.json", digest_of(plan), key) for plan in plans]


def judge_one(plan: PlanRow, path: Path, digest: str, key: str) -> SlideState:
    """One slide's state from its record at ``path``, whose ``key`` must equal ``digest``."""
    record = read_record(path)
    return SlideState(plan, state_of(record, key, digest), record)


def state_of(record: Mapping[str, Any] | None, key: str, digest: str) -> str:
    """done, failed, to redo (a record made for another plan or settings) or to do (no record)."""
    if record is None:
        return TO_DO
    if record.get(key) != digest:
        return TO_REDO
    return DONE if record.get("status") == "done" else FAILED


def image_sha256(state: SlideState) -> str:
    """The SHA-256 of a done slide's image, as its record says ("" for any other slide)."""
    if state.state != DONE or state.record is None:
        return ""
    return str((state.record.get("output") or {}).get("sha256") or "")


def _patch_digest(patches: PatchSettings, images: Mapping[str, str]) -> Callable[[PlanRow], str]:
    return lambda plan: patches.digest(plan, images.get(plan.slide_id, ""))


def stock_files(state: SlideState) -> set[str]:
    """The names in ``results/slides`` that a judged slide owns: its record, and a done slide's image and side files."""
    if state.state not in (DONE, FAILED) or state.record is None:
        return set()
    names = {f"{state.slide_id}.json"}
    if state.state == DONE:
        output = state.record.get("output") or {}
        paths = [output.get("path"), output.get("mask_path")]
        paths += [image.get("path") for image in (state.record.get("associated") or {}).values() if image]
        names.update(Path(path).name for path in paths if path)
    return names


def patch_files(state: SlideState, patch_format: str) -> set[str]:
    """The paths under ``results/patches`` that a judged slide owns: its record, and its PNG files.

    Under webdataset the PNG files are owned only until the batch's job packs them into its shard.
    """
    if state.state not in (DONE, FAILED) or state.record is None:
        return set()
    names = {f"{state.slide_id}.json"}
    rows = state.record.get("patches", []) if state.state == DONE else []
    unpacked = [row for row in rows if patch_format == "png" or not row.get("shard")]
    names.update(str(row["path"]) for row in unpacked if row.get("path"))
    return names


def count(states: Iterable[SlideState]) -> dict[str, int]:
    """How many slides are in each state, every state named."""
    counts = dict.fromkeys((DONE, FAILED, TO_REDO, TO_DO), 0)
    for state in states:
        counts[state.state] += 1
    return counts


def settings_of_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a slide's record was made with, in the config's terms.

    Records of slidestock 0.3 and before name only the target section and the version:
    the rest is said to be unknown (a changed version redoes them anyway).
    """
    if isinstance(record.get("settings"), dict):
        return dict(record["settings"])
    made = record.get("target") or {}
    terms = {f"target.{key}": made[key] for key in ("mpp", "max_px", "fallback_max_px", "format") if key in made}
    terms["slidestock"] = (record.get("software") or {}).get("slidestock", "unknown")
    return terms
