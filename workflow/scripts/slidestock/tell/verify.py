"""Verify: every image and patch of the stock against the SHA-256 in its record, and nothing else in its folders.

The stock is judged against the plan and settings of the run that left it
(:mod:`slidestock.state`): a slide whose record was made for other settings is
not verified but counted as not made, and a file the stock does not account for
(an old format, a slide that left the cohort) is named too.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slidestock.provenance import sha256_file
from slidestock.records import PATCH_COLUMNS, PatchRow, as_patch_record, as_slide_record, coordinate_files
from slidestock.state import DONE, FAILED, SlideState, Stock
from slidestock.tidy import strays
from slidestock.train.layouts import read_coords_h5

OK, MISMATCH, MISSING, NOT_MADE, FAILED_SLIDE = "ok", "mismatch", "missing", "not made", "failed-slide"
PATCH_TABLE = "patches.parquet"


@dataclass(frozen=True)
class Check:
    """The outcome for one image or patch: ``ok``, ``failed-slide`` (no image expected), or what is wrong."""

    slide_id: str
    outcome: str
    detail: str

    @property
    def bad(self) -> bool:
        return self.outcome in (MISMATCH, MISSING, NOT_MADE)


def check_file(slide_id: str, path: Path, size: int | None, sha256: str, shown: str) -> Check:
    """One file against the size and hash its record gives."""
    if not path.is_file():
        return Check(slide_id, MISSING, f"{shown} not found")
    actual = path.stat().st_size
    if size is not None and actual != size:
        return Check(slide_id, MISMATCH, f"{shown}: {actual} bytes; its record says {size}")
    digest = sha256_file(path)
    if digest != sha256:
        return Check(slide_id, MISMATCH, f"{shown}: sha256 {digest}; its record says {sha256}")
    return Check(slide_id, OK, sha256)


def check_slide(state: SlideState, root: Path) -> Check:
    """A slide's image against its record (the record must be of the current plan and settings)."""
    if state.state == FAILED and state.record is not None:
        return Check(state.slide_id, FAILED_SLIDE, state.record.get("error") or "")
    output = None if state.state != DONE or state.record is None else as_slide_record(state.record)["output"]
    if output is None:
        return Check(state.slide_id, NOT_MADE, f"{state.slide_id}: not made for the current plan and settings")
    return check_file(state.slide_id, root / output["path"], output["bytes"], output["sha256"], output["path"])


def check_patches(state: SlideState, folder: Path, table: Mapping[str, Mapping[str, Any]] | None) -> Iterator[Check]:
    """Each patch of a slide done: its PNG file or its shard's member against the hash its record gives, and its
    row of ``patches.parquet`` (``table``, by patch id; None when there is none) against its record's row: under
    ``coordinates`` the row is the patch, what a reader reads it with."""
    if state.state != DONE or state.record is None:
        return
    for row in as_patch_record(state.record)["patches"]:
        check = _check_row(state.slide_id, row, table, folder / PATCH_TABLE)
        if check.outcome == OK and row["shard"]:
            check = _check_member(state.slide_id, folder / row["shard"], f"{row['patch_id']}.png", row["sha256"])
        elif check.outcome == OK and row["path"]:
            path = folder / row["path"]
            check = check_file(state.slide_id, path, None, row["sha256"], str(path))
        yield check


def _check_row(slide_id: str, row: PatchRow, table: Mapping[str, Mapping[str, Any]] | None, shown: Path) -> Check:
    if table is None:
        return Check(slide_id, MISSING, f"{shown} not found")
    found = table.get(row["patch_id"])
    if found is None:
        return Check(slide_id, MISSING, f"{shown}: no row for {row['patch_id']}")
    # A record of an earlier version lacks the newer columns: they differ from the table's, and say so.
    differ = [key for key in PATCH_COLUMNS if found.get(key) != row.get(key)]
    if differ:
        return Check(slide_id, MISMATCH, f"{shown}: {row['patch_id']}'s {', '.join(differ)} not as its record says")
    return Check(slide_id, OK, row["patch_id"])


def read_patch_table(folder: Path) -> dict[str, dict[str, Any]] | None:
    """``patches.parquet``'s rows by patch id (plain Python values), or None when there is none."""
    import pandas as pd

    path = folder / PATCH_TABLE
    if not path.is_file():
        return None
    rows = pd.read_parquet(path).astype(object).to_dict("records")
    return {str(row["patch_id"]): {str(k): _plain(v) for k, v in row.items()} for row in rows}


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def check_coordinates(state: SlideState, folder: Path) -> Iterator[Check]:
    """A slide done: its two h5 files (CLAM's, TRIDENT's), each with its patches' level-0 corners in order."""
    if state.state != DONE or state.record is None:
        return
    corners = [(row["x_px"], row["y_px"]) for row in as_patch_record(state.record)["patches"]]
    for name in coordinate_files(state.slide_id):
        path = folder / name
        try:
            coords, _ = read_coords_h5(path)
        except (OSError, KeyError):
            yield Check(state.slide_id, MISSING, f"{path} not found or unreadable")
            continue
        found = [(int(x), int(y)) for x, y in coords]
        wrong = next((k for k, (a, b) in enumerate(zip(found, corners, strict=False)) if a != b), None)
        if wrong is not None:
            yield Check(
                state.slide_id,
                MISMATCH,
                f"{path}: coords row {wrong} is {found[wrong]}; its record says {corners[wrong]}",
            )
        elif len(found) != len(corners):
            yield Check(state.slide_id, MISMATCH, f"{path}: {len(found)} coords; its record has {len(corners)} patches")
        else:
            yield Check(state.slide_id, OK, str(path))


def _check_member(slide_id: str, shard: Path, member: str, sha256: str) -> Check:
    import hashlib

    shown = f"{shard}:{member}"
    try:
        with tarfile.open(shard) as tar:
            handle = tar.extractfile(member)
            data = handle.read() if handle is not None else None
    except (OSError, KeyError, tarfile.TarError):
        data = None
    if data is None:
        return Check(slide_id, MISSING, f"{shown} not found")
    digest = hashlib.sha256(data).hexdigest()
    return Check(slide_id, OK, sha256) if digest == sha256 else Check(slide_id, MISMATCH, f"{shown}: sha256 {digest}")


@dataclass(frozen=True)
class Verified:
    """Every check of a stock, and the paths in its folders that are not of it."""

    images: list[Check]
    patches: list[Check]
    strays: list[Path]
    coordinates: list[Check] = field(default_factory=list)

    @property
    def bad(self) -> list[Check]:
        return [c for c in (*self.images, *self.patches, *self.coordinates) if c.bad]

    def summary(self) -> str:
        def said(checks: Sequence[Check], one: str, many: str) -> str:
            ok, bad = sum(c.outcome == OK for c in checks), sum(c.bad for c in checks)
            matching = f"{one} matches its record" if ok == 1 else f"{many} match their records"
            return f"{ok:,} {matching}, {bad:,} {'does' if bad == 1 else 'do'} not"

        parts = [said(self.images, "image", "images")]
        parts += [said(self.patches, "patch", "patches")] if self.patches else []
        parts += [said(self.coordinates, "h5 file", "h5 files")] if self.coordinates else []
        strays = len(self.strays)
        files = "1 file in the stock's folders is" if strays == 1 else f"{strays:,} files in the stock's folders are"
        parts.append(f"{files} not of it")
        return "verify: " + "; ".join(parts)

    def problem(self) -> str | None:
        """One line naming what is wrong (the first few of each), or None."""
        said = [f"{c.slide_id}: {c.detail}" if not c.detail.startswith(c.slide_id) else c.detail for c in self.bad]
        if self.strays:
            said.append(
                f"{len(self.strays):,} paths not of this stock (e.g. {self.strays[0]}): "
                "a run moves them to results/stale/"
            )
        if not said:
            return None
        more = f" (and {len(said) - 5:,} more)" if len(said) > 5 else ""
        missing = any(c.outcome == MISSING for c in (*self.patches, *self.coordinates))
        again = "; `snakemake --forcerun patches` makes missing patch files again" if missing else ""
        return "verify: " + "; ".join(said[:5]) + more + again


def verify(stock: Stock, root: Path) -> Verified:
    """Check the stock under ``stock.results``; ``root`` is the folder the records' paths are relative to."""
    slides = stock.slide_states()
    patches = stock.patch_states(slides)
    images = sorted((check_slide(s, root) for s in slides), key=lambda c: c.slide_id)
    table = read_patch_table(stock.patches) if patches else None
    patch_checks = [check for state in patches for check in check_patches(state, stock.patches, table)]
    coordinates = [check for state in patches for check in check_coordinates(state, stock.patches)]
    return Verified(images, patch_checks, strays(stock, slides, patches), coordinates)
