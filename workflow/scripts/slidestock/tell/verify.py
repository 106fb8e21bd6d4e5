"""Verify: every image and patch of the stock against the SHA-256 in its record, and nothing else in its folders.

The stock is judged against the plan and settings of the run that left it
(:mod:`slidestock.state`): a slide whose record was made for other settings is
not verified but counted as not made, and a file the stock does not account for
(an old format, a slide that left the cohort) is named too.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from slidestock.provenance import sha256_file
from slidestock.records import as_patch_record, as_slide_record
from slidestock.state import DONE, FAILED, SlideState, Stock
from slidestock.tidy import strays
from slidestock.train.layouts import read_coords_h5

OK, MISMATCH, MISSING, NOT_MADE, FAILED_SLIDE = "ok", "mismatch", "missing", "not made", "failed-slide"


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


def check_patches(state: SlideState, folder: Path) -> Iterator[Check]:
    """Each patch of a slide done, from its PNG file, its shard's member, or (``coordinates``) its row of the
    slide's h5 file."""
    if state.state != DONE or state.record is None:
        return
    rows = as_patch_record(state.record)["patches"]
    coords = _coords(folder / f"{state.slide_id}.h5")
    for k, row in enumerate(rows):
        if not row["shard"] and not row["path"]:
            yield _check_coords(state.slide_id, folder / f"{state.slide_id}.h5", coords, k, (row["x_px"], row["y_px"]))
        elif row["shard"]:
            yield _check_member(state.slide_id, folder / row["shard"], f"{row['patch_id']}.png", row["sha256"])
        else:
            path = folder / row["path"]
            yield check_file(state.slide_id, path, None, row["sha256"], str(path))


def _coords(path: Path) -> list[tuple[int, int]] | None:
    try:
        coords, _ = read_coords_h5(path)
    except (OSError, KeyError):
        return None
    return [(int(x), int(y)) for x, y in coords]


def _check_coords(
    slide_id: str, path: Path, coords: list[tuple[int, int]] | None, k: int, corner: tuple[int, int]
) -> Check:
    if coords is None:
        return Check(slide_id, MISSING, f"{path}: missing or unreadable")
    if k >= len(coords) or coords[k] != corner:
        found = coords[k] if k < len(coords) else "nothing"
        return Check(slide_id, MISMATCH, f"{path}: coords row {k} is {found}; its record says {corner}")
    return Check(slide_id, OK, str(path))


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

    @property
    def bad(self) -> list[Check]:
        return [c for c in (*self.images, *self.patches) if c.bad]

    def summary(self) -> str:
        def said(checks: Sequence[Check], one: str, many: str) -> str:
            ok, bad = sum(c.outcome == OK for c in checks), sum(c.bad for c in checks)
            matching = f"{one} matches its record" if ok == 1 else f"{many} match their records"
            return f"{ok:,} {matching}, {bad:,} {'does' if bad == 1 else 'do'} not"

        parts = [said(self.images, "image", "images")]
        parts += [said(self.patches, "patch", "patches")] if self.patches else []
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
        return "verify: " + "; ".join(said[:5]) + more


def verify(stock: Stock, root: Path) -> Verified:
    """Check the stock under ``stock.results``; ``root`` is the folder the records' paths are relative to."""
    slides = stock.slide_states()
    patches = stock.patch_states(slides)
    images = sorted((check_slide(s, root) for s in slides), key=lambda c: c.slide_id)
    patch_checks = [check for state in patches for check in check_patches(state, stock.patches)]
    return Verified(images, patch_checks, strays(stock, slides, patches))
