"""Keeping the stock's folders exactly the stock: moving out, never deleting, what is no longer of it.

Whatever remakes an output first moves the old one out of the way, to
``results/stale/<run>/`` under its path in ``results/`` (the run is the one
that started, see :class:`slidestock.settings.RunSettings`):

- a batch job, for its own slides: records and images made for other settings
  or an earlier plan (it is about to redo them), another format's images, a
  mask or associated image turned off (:func:`stale_slide_files`);
- a patch job, for its own slides: patches of other settings, its batch's shard
  once patches are PNG files (:func:`stale_patch_files`);
- the plan, for what no planned slide or batch owns: the files of slides that
  left the cohort, the tables and shards of batches the plan no longer has, and
  ``results/patches`` whole when patches are off (:func:`stale_beyond_plan`).

So a glob over ``results/slides`` or ``results/patches`` finds the stock and
nothing else, at any moment of a run. Each mover lists what it moved in
``results/stale/<run>/moved-<job>.tsv``; the run says it in one line at its end
(:func:`moved_line`). ``verify`` names any such file left (a run not yet made).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from slidestock.errors import SlidestockError
from slidestock.records import TRIDENT_SUFFIX
from slidestock.settings import RunSettings
from slidestock.state import DONE, FAILED, SlideState, Stock, patch_files, stock_files

OTHER_SETTINGS = "made for other settings or an earlier plan"
LEFT_COHORT = "of slides no longer in the cohort"
NOT_OUTPUT = "not made by this config (another format; a mask, an associated image or a patch format turned off)"
BEYOND_PLAN = "of batches the plan no longer has"
PATCHES_OFF = "patches, which this config does not make"
PARTIAL = "partly written by an interrupted run"
MOVED_COLUMNS = ("path", "moved_to", "why")


@dataclass(frozen=True)
class Stale:
    """A file or folder under ``results/`` that is not part of the stock, and why."""

    path: Path
    why: str


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if folder.is_dir() else []


def owner_of(name: str, owners: Collection[str]) -> str | None:
    """The slide a file name belongs to: the longest slide id the name starts with, followed by a dot (or all of
    it, for a patch folder; or ``_patches.h5``, TRIDENT's name)."""
    name = name.removeprefix(".")  # a partial file: .{slide}.png.partial
    cuts = [i for i, char in enumerate(name) if char == "."] + [len(name)]
    cuts += [len(name) - len(TRIDENT_SUFFIX)] if name.endswith(TRIDENT_SUFFIX) else []
    return next((name[:i] for i in sorted(cuts, reverse=True) if name[:i] in owners), None)


def _why(path: Path, state: SlideState) -> str:
    if path.name.endswith(".partial"):
        return PARTIAL
    return NOT_OUTPUT if state.state in (DONE, FAILED) else OTHER_SETTINGS


def stale_slide_files(folder: Path, states: Sequence[SlideState]) -> list[Stale]:
    """The files in ``results/slides`` that these slides own but their judged state does not account for.

    A slide done or failed for the current plan and settings keeps its record and outputs; every other file of
    it goes (an old format, a mask turned off); a slide to do or redo keeps nothing, since it is made again.
    """
    owners = {state.slide_id: state for state in states}
    kept = {name for state in states for name in stock_files(state)}
    found = []
    for path in _entries(folder):
        owner = owner_of(path.name, owners)
        if owner is not None and path.name not in kept:
            found.append(Stale(path, _why(path, owners[owner])))
    return found


def stale_patch_files(folder: Path, states: Sequence[SlideState], patch_format: str) -> list[Stale]:
    """The entries of ``results/patches`` that these slides own but their judged patch state does not account for:
    a record and folder of other settings, files a record does not list. Under webdataset a done slide's PNG files
    stay until its job packs them."""
    owners = {state.slide_id: state for state in states}
    kept = {name for state in states for name in patch_files(state, patch_format)}
    found: list[Stale] = []
    for path in _entries(folder):
        owner = owner_of(path.name, owners)
        if owner is None or path.name in kept:
            continue
        if not path.is_dir():
            found.append(Stale(path, _why(path, owners[owner])))
            continue
        inside = [p for p in _entries(path) if f"{path.name}/{p.name}" not in kept]
        if owners[owner].state != DONE or len(inside) == len(_entries(path)):
            found.append(Stale(path, _why(path, owners[owner])))
        else:
            found += [Stale(p, PARTIAL if p.name.endswith(".partial") else OTHER_SETTINGS) for p in inside]
    return found


def stale_beyond_plan(results: Path, planned: Collection[str], batches: Collection[str], patches: bool) -> list[Stale]:
    """What no planned slide or batch owns: files of slides that left the cohort (in ``results/slides`` and
    ``results/patches``), outcome tables and shards of batches the plan no longer has, and all of
    ``results/patches`` when patches are off. ``batches`` are names like ``b00000``."""
    found = [Stale(p, LEFT_COHORT) for p in _entries(results / "slides") if owner_of(p.name, planned) is None]
    found += _beyond(results / "batches", batches, ".tsv")
    folder = results / "patches"
    if not patches:
        return found + [Stale(path, PATCHES_OFF) for path in _entries(folder)]
    for path in _entries(folder):
        if path.name in ("batches", "shards"):
            found += _beyond(path, batches, ".tsv" if path.name == "batches" else ".tar")
        elif path.name != "patches.parquet" and owner_of(path.name, planned) is None:
            found.append(Stale(path, LEFT_COHORT))
    return found


def _beyond(folder: Path, batches: Collection[str], suffix: str) -> list[Stale]:
    return [Stale(path, BEYOND_PLAN) for path in _entries(folder) if path.name.removesuffix(suffix) not in batches]


def move_stale(found: Sequence[Stale], results: Path, run: str, job: str) -> list[tuple[Stale, Path]]:
    """Move each stale path to ``results/stale/<run>/`` under its path in ``results``; never delete anything.

    What moved is added to ``results/stale/<run>/moved-<job>.tsv``.
    """
    if not found:
        return []
    folder = results / "stale" / run
    moved = []
    for stale in found:
        dest = _free(folder / stale.path.relative_to(results))
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(stale.path, dest)
        moved.append((stale, dest))
        _drop_empty_folders(stale.path.parent, results)
    with (folder / f"moved-{job}.tsv").open("a") as table:
        if table.tell() == 0:
            table.write("\t".join(MOVED_COLUMNS) + "\n")
        table.writelines(f"{stale.path}\t{dest}\t{stale.why}\n" for stale, dest in moved)
    return moved


def run_of(results: Path) -> str:
    """The run that moves things: the one whose settings stand (written when it started), else one named now."""
    try:
        run = RunSettings.read(results / "cohort" / "settings.json").run
    except SlidestockError:
        run = ""
    return run or time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())


def _drop_empty_folders(folder: Path, results: Path) -> None:
    """Remove the folders a move left empty (``results/patches/shards``), up to ``results``, which stays."""
    while folder != results and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


def _free(dest: Path) -> Path:
    """``dest``, or ``dest.2`` ... when a path of that name was moved there already (nothing is overwritten)."""
    candidate, k = dest, 1
    while candidate.exists():
        k += 1
        candidate = dest.with_name(f"{dest.name}.{k}")
    return candidate


def n_files(path: Path) -> int:
    """Files in ``path`` (1 for a file)."""
    return sum(1 for p in path.rglob("*") if p.is_file()) if path.is_dir() else 1


def moved_line(results: Path, run: str) -> str | None:
    """One line: how many files a run moved out of the stock's folders, where to, and why (None when none)."""
    folder = results / "stale" / run
    whys: Counter[str] = Counter()
    for table in sorted(folder.glob("moved-*.tsv")) if run else ():
        for line in table.read_text().splitlines()[1:]:
            _, dest, why = line.split("\t")
            whys[why] += n_files(Path(dest)) if Path(dest).exists() else 1
    return _said(whys, folder)


def _said(whys: Mapping[str, int], folder: Path) -> str | None:
    total = sum(whys.values())
    if not total:
        return None
    parts = ", ".join(f"{count:,} {why}" for why, count in sorted(whys.items(), key=lambda item: (-item[1], item[0])))
    files = f"{total:,} file{'s' if total != 1 else ''}"
    return f"slidestock: moved {files} that are not this stock's to {folder}/: {parts}"


def strays(stock: Stock, slides: Sequence[SlideState], patches: Sequence[SlideState]) -> list[Path]:
    """Every path in the stock's folders that is not of the stock (what a run would move), for ``verify``."""
    results, on = stock.results, stock.settings.patches is not None
    batches = {path.stem for path in (results / "cohort" / "batches").glob("b*.tsv")}
    found = stale_beyond_plan(results, {s.slide_id for s in slides}, batches, on)
    found += stale_slide_files(stock.slides, slides)
    if on:
        found += stale_patch_files(stock.patches, patches, stock.settings.patch_format)
    if on and stock.settings.patch_format == "png":
        found += [Stale(path, NOT_OUTPUT) for path in _entries(stock.patches / "shards")]
    return sorted({stale.path for stale in found})
