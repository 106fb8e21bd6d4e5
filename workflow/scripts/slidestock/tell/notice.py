"""Before a run, a dry run too: one line saying what a run with this config will redo of the stock on disk.

Said by the config's own keys (``target.mpp 15.0 → 20.0``, ``null``), each once, and counted on the
cohort the run will have: the lock file's slides when the config still draws that cohort, or, when it
draws another (:func:`cohort_change` says how), every slide made before. A slide is redone when its
record's digest is not the one its plan row (as last planned) and the new settings give.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from slidestock.errors import SlidestockError
from slidestock.plan.rows import PlanRow
from slidestock.records import as_slide_record, read_record
from slidestock.settings import RunSettings, changed_terms, config_text, describe_changes
from slidestock.state import read_plans, settings_of_record


def redo_notice(results: Path, now: RunSettings, cohort: Sequence[str] | None, cohort_change: str = "") -> str | None:
    """One line saying what a run with ``now`` will redo of what is on disk, by the config's keys; None when nothing.

    ``cohort`` is the current cohort's slide ids (the lock file's, when the config still selects it), or
    None when the cohort is drawn again (``cohort_change`` says why): which slides stay is known only then.
    A slide is redone when its record's digest is not the one its plan row (as last planned) and ``now`` give.
    """
    plans = {plan.slide_id: plan for plan in read_plans(results / "cohort" / "batches")}
    made = list(_made(results / "slides"))
    if not made and not (results / "patches").is_dir():
        return None
    members = set(cohort) if cohort is not None else {sid for sid, _, _ in made}
    differ = {sid: changes for sid, changes, digest in made if sid in members and _redone(digest, plans.get(sid), now)}
    terms = now.stock.terms()
    n_in = sum(sid in members for sid, _, _ in made)
    parts = [f"the cohort is drawn again ({cohort_change})"] if cohort is None else []
    if differ:
        scope = "made before" if cohort is None else "in the cohort made before"
        those = "those still in it" if cohort is None else "them"
        parts.append(f"{len(differ):,} of the {n_in:,} slides {scope} differ from this config "
                     f"({_changes(differ.values(), terms)}): a run redoes {those}")  # fmt: skip
    if len(made) > n_in:
        parts.append(f"{len(made) - n_in:,} slides made before are no longer in the cohort")
    parts += _patch_notice(results / "patches", now)
    if not parts:
        return None
    return "slidestock: " + "; ".join(parts) + "; the files no longer of the stock move to results/stale/"


def _redone(digest: str | None, plan: PlanRow | None, now: RunSettings) -> bool:
    return plan is None or digest != now.stock.digest(plan)


def _made(folder: Path) -> Iterator[tuple[str, dict[str, Any], str | None]]:
    """(slide id, the settings it was made with as they differ from ``now``, its digest) of each record."""
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        record = read_record(path)
        if record is not None:
            made = as_slide_record(record)
            yield made["slide_id"], settings_of_record(made), made.get("output_digest")


def _changes(made: Iterable[Mapping[str, Any]], now: Mapping[str, Any]) -> str:
    """The keys whose value differs, each once; a record that names no differing key was made for another plan."""
    before: dict[str, list[Any]] = {}
    other_plan = False
    for terms in made:
        changes = changed_terms(terms, {key: value for key, value in now.items() if key in terms})
        other_plan |= not changes
        for key, value in changes.items():
            before.setdefault(key, []).append(value)
    said = describe_changes(before, now)
    return ", ".join(
        part for part in (said, "an earlier plan or settings its record does not name" if other_plan else "") if part
    )


def _patch_notice(folder: Path, now: RunSettings) -> list[str]:
    """What a run does to the patches made before: redo those of other settings, or move them all when off."""
    made = [(sid, terms) for sid, terms in _patch_settings_made(folder)]
    if not made:
        return []
    if now.patches is None:
        return [f"patches are off: the patches of the {len(made):,} slides that have them move out"]
    differ = [terms for _, terms in made if changed_terms(terms, now.patches.terms())]
    if not differ:
        return []
    said = _changes(differ, now.patches.terms())
    return [f"the patches of {len(differ):,} slides differ ({said}): a run redoes them"]


def _patch_settings_made(folder: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        record = read_record(path)
        settings = None if record is None else record.get("settings")
        if record is not None and isinstance(settings, dict):
            terms = {f"patches.{key}": value for key, value in settings.items() if key != "seed"}
            terms["cohort.seed"] = settings.get("seed")
            if settings.get("mode") == "grid":
                terms["patches.n_per_slide"] = None
            yield record["slide_id"], terms


# The lock file's header keys that say how the cohort was drawn, and the config keys they come from.
COHORT_KEYS = ("source", "idc_version", "filter", "n", "seed", "stratify_by", "one_per_patient")


def cohort_change(cohort: Mapping[str, Any], idc_release: int | None, lock: Path) -> str | None:
    """How the config's cohort differs from the one the lock file was drawn with (``cohort.n 6 → 3``).

    None when they agree (the lock's slides are the cohort) or there is no lock yet. Compared: the
    header's source, release, filter, n, seed, strata, one per patient, manifest digest and own SQL.
    """
    if not lock.is_file():
        return None
    from slidestock.provenance import sha256_file
    from slidestock.select.lockfile import read_lock_header

    header = read_lock_header(lock)
    now = {**{key: cohort.get(key) for key in COHORT_KEYS}, "idc_version": idc_release}
    changes = []
    for key in COHORT_KEYS:
        before = _header_value(header.get(key, "null"))
        if key == "idc_version" and idc_release is None:
            continue
        if before != now[key]:
            changes.append(f"cohort.{key} {config_text(before)} → {config_text(now[key])}")
    manifest = Path(cohort.get("manifest") or "")
    if manifest.is_file() and header.get("manifest") != f"{manifest.name} sha256:{sha256_file(manifest)}":
        changes.append(f"cohort.manifest {manifest} changed")
    sql = cohort.get("sql")
    if sql and Path(sql).is_file() and Path(sql).read_text().strip() not in header.get("query", ""):
        changes.append(f"cohort.sql {sql} changed")
    return ", ".join(changes) or None


def _header_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def lock_slide_ids(lock: Path) -> list[str]:
    """The slide ids of a lock file (its first column), without reading it as a table."""
    rows = [line for line in lock.read_text().splitlines() if line and not line.startswith("#")]
    if not rows or rows[0].split("\t", 1)[0] != "slide_id":
        raise SlidestockError(f"{lock}: no slide_id column; expected a slidestock cohort.tsv")
    return [row.split("\t", 1)[0] for row in rows[1:]]
