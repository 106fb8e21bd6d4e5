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

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from slidestock.errors import SlidestockError
from slidestock.plan.rows import PlanRow, read_batch_plan
from slidestock.records import (
    Record,
    SlideRecord,
    as_patch_record,
    as_slide_record,
    coordinate_files,
    may_pass,
    output_sha256,
    read_record,
)
from slidestock.settings import PatchSettings, RunSettings

# A slide's states, in the order they are said.
DONE, FAILED, TO_REDO, TO_DO = "done", "failed", "to redo", "to do"


@dataclass(frozen=True)
class SlideState:
    """One planned slide: its state against the current plan and settings, and the record on disk (if any)."""

    plan: PlanRow
    state: str
    record: Record | None

    @property
    def slide_id(self) -> str:
        return self.plan.slide_id

    @property
    def may_pass(self) -> bool:
        """A failed slide that a re-run may get past (a record that does not say counts as such)."""
        return self.state == FAILED and self.record is not None and may_pass(self.record)

    @property
    def bytes_fetched(self) -> int:
        return 0 if self.record is None else self.record.get("bytes_fetched", 0)

    @property
    def error(self) -> str:
        """Why the slide failed, as its record says."""
        return (None if self.record is None else self.record.get("error")) or "no reason recorded"

    @property
    def series_bytes(self) -> int:
        """The bytes of the slide's whole series, as its (stock) record says."""
        return 0 if self.record is None else as_slide_record(self.record).get("series_size_bytes", 0)

    @property
    def n_patches(self) -> int:
        """How many patches a slide done has, as its patch record says."""
        return 0 if self.state != DONE or self.record is None else len(as_patch_record(self.record)["patches"])


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
            inside = results / "results" / "cohort" / "instances.tsv"
            hint = f" (did you mean {results / 'results'}?)" if inside.is_file() else " (run the workflow first)"
            raise SlidestockError(f"{plan} not found: no plan yet; expected the results of a run that has passed its "
                                  f"plan step here{hint}")  # fmt: skip
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


def judge(plans: Iterable[PlanRow], folder: Path, digest_of: Callable[[PlanRow], str], key: str) -> list[SlideState]:
    """Each plan row's state from ``folder/{slide}.json``, whose ``key`` must equal ``digest_of(plan)``."""
    return [judge_one(plan, folder / f"{plan.slide_id}.json", digest_of(plan), key) for plan in plans]


def judge_one(plan: PlanRow, path: Path, digest: str, key: str) -> SlideState:
    """One slide's state from its record at ``path``, whose ``key`` must equal ``digest``."""
    record = read_record(path)
    return SlideState(plan, state_of(record, key, digest), record)


def state_of(record: Record | None, key: str, digest: str) -> str:
    """done, failed, to redo (a record made for another plan or settings) or to do (no record)."""
    if record is None:
        return TO_DO
    if cast(Mapping[str, Any], record).get(key) != digest:
        return TO_REDO
    return DONE if record["status"] == "done" else FAILED


def image_sha256(state: SlideState) -> str:
    """The SHA-256 of a done slide's image, as its record says ("" for any other slide)."""
    if state.state != DONE or state.record is None:
        return ""
    return output_sha256(as_slide_record(state.record))


def _patch_digest(patches: PatchSettings, images: Mapping[str, str]) -> Callable[[PlanRow], str]:
    return lambda plan: patches.digest(plan, images.get(plan.slide_id, ""))


def stock_files(state: SlideState) -> set[str]:
    """The names in ``results/slides`` that a judged slide owns: its record, and a done slide's image and side files."""
    if state.state not in (DONE, FAILED) or state.record is None:
        return set()
    names = {f"{state.slide_id}.json"}
    record = as_slide_record(state.record)
    output = record.get("output")
    if state.state == DONE and output is not None:
        paths = [output["path"], output.get("mask_path")]
        paths += [image["path"] for image in (record.get("associated") or {}).values() if image]
        names.update(Path(path).name for path in paths if path)
    return names


def patch_files(state: SlideState, patch_format: str) -> set[str]:
    """The paths under ``results/patches`` that a judged slide owns: its record, its coordinates (two h5) when done,
    and its PNG files.

    Under webdataset the PNG files are owned only until the batch's job packs them into its shard.
    """
    if state.state not in (DONE, FAILED) or state.record is None:
        return set()
    names = {f"{state.slide_id}.json", *(coordinate_files(state.slide_id) if state.state == DONE else ())}
    rows = as_patch_record(state.record)["patches"] if state.state == DONE else []
    # Under coordinates no PNG file is of the stock; under webdataset only those its job has yet to pack.
    unpacked = [row for row in rows if patch_format == "png" or (patch_format == "webdataset" and not row["shard"])]
    names.update(row["path"] for row in unpacked if row["path"])
    return names


def count(states: Iterable[SlideState]) -> dict[str, int]:
    """How many slides are in each state, every state named."""
    counts = dict.fromkeys((DONE, FAILED, TO_REDO, TO_DO), 0)
    for state in states:
        counts[state.state] += 1
    return counts


def settings_of_record(record: SlideRecord) -> dict[str, Any]:
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
