"""Patches at high resolution: where they go on a slide's tissue, and each one cut from the frames it covers.

A patch is ``size_px`` square at ``mpp`` µm/px. On the level chosen for it (the
coarsest at least as fine as ``mpp``, by the stock's rule) it spans
``size_px * mpp / spacing`` level pixels: an integer-placed crop of that many
pixels (rounded up) is resized to exactly ``size_px`` with the stock's
Lanczos-3 filter, pixel centres taken against the exact span. Positions are
chosen on the slide's tissue mask at the output resolution (the stock's low-
resolution image): at random without overlap, seeded by the cohort's seed and
the slide, or every tissue cell of a grid.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyvips

from slidestock.image.output import with_icc_profile
from slidestock.image.reduce import output_image, resample_rows
from slidestock.read.dicom import BACKGROUND
from slidestock.settings import PatchSettings

# Random mode tries positions on a lattice this many times finer than the patch.
LATTICE_STEPS = 4


@dataclass(frozen=True)
class TiledLevel:
    """What cutting needs of a level, a DICOM instance or an SVS page: its size, tiling and ICC profile."""

    size_px: tuple[int, int]
    tile_px: tuple[int, int]
    icc_profile: bytes | None = None

    @property
    def across(self) -> int:
        return math.ceil(self.size_px[0] / self.tile_px[0])


@dataclass(frozen=True)
class Patch:
    """One patch: its number on the slide, its top-left corner in level pixels, and its share of tissue."""

    number: int
    x: int
    y: int
    tissue: float


def span_px(spacing_xy_um: tuple[float, float], settings: PatchSettings) -> tuple[float, float]:
    """How many level pixels a patch spans, across and down (exact, not rounded)."""
    return (settings.size_px * settings.mpp / spacing_xy_um[0], settings.size_px * settings.mpp / spacing_xy_um[1])


def crop_px(span: tuple[float, float]) -> tuple[int, int]:
    """The level pixels read for a patch: its span rounded up."""
    return (math.ceil(span[0] - 1e-9), math.ceil(span[1] - 1e-9))


def choose_patches(
    mask: np.ndarray, level_size: tuple[int, int], span: tuple[float, float], settings: PatchSettings, slide_id: str
) -> list[Patch]:
    """Patches on tissue, numbered in reading order (by row, then column).

    ``mask`` (rows, columns, bool) covers the whole level at a lower
    resolution. A patch's tissue share is the mask's mean over its footprint.
    """
    crop_w, crop_h = crop_px(span)
    width, height = level_size
    if crop_w > width or crop_h > height:
        return []
    grid = settings.mode == "grid"
    step_x, step_y = (crop_w, crop_h) if grid else (max(1, crop_w // LATTICE_STEPS), max(1, crop_h // LATTICE_STEPS))
    xs = np.arange(0, width - crop_w + 1, step_x)
    ys = np.arange(0, height - crop_h + 1, step_y)
    shares = _tissue_shares(mask, level_size, xs, ys, span)
    rows, cols = np.nonzero(shares >= settings.min_tissue)
    if grid:
        chosen = list(zip(rows.tolist(), cols.tolist(), strict=True))
    else:
        order = np.random.default_rng([settings.seed, _stable(slide_id)]).permutation(len(rows))
        chosen = _without_overlap(
            [(int(rows[i]), int(cols[i])) for i in order], ys, xs, (crop_w, crop_h), settings.n_per_slide
        )
    chosen.sort()
    return [Patch(k, int(xs[c]), int(ys[r]), round(float(shares[r, c]), 4)) for k, (r, c) in enumerate(chosen)]


def _stable(text: str) -> int:
    """A number from ``text`` that is the same in every process (Python's hash() is not)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def _tissue_shares(
    mask: np.ndarray, level_size: tuple[int, int], xs: np.ndarray, ys: np.ndarray, span: tuple[float, float]
) -> np.ndarray:
    """The mask's mean over each patch footprint at (ys[r], xs[c]), from a summed-area table."""
    rows, cols = mask.shape
    table = np.zeros((rows + 1, cols + 1), dtype=np.int64)
    table[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    fx, fy = cols / level_size[0], rows / level_size[1]
    x0 = np.clip(np.round(xs * fx).astype(int), 0, cols - 1)
    x1 = np.clip(np.maximum(x0 + 1, np.round((xs + span[0]) * fx).astype(int)), 1, cols)
    y0 = np.clip(np.round(ys * fy).astype(int), 0, rows - 1)
    y1 = np.clip(np.maximum(y0 + 1, np.round((ys + span[1]) * fy).astype(int)), 1, rows)
    sums = table[np.ix_(y1, x1)] - table[np.ix_(y0, x1)] - table[np.ix_(y1, x0)] + table[np.ix_(y0, x0)]
    area = np.outer(y1 - y0, x1 - x0)
    shares: np.ndarray = sums / area
    return shares


def _without_overlap(
    candidates: Sequence[tuple[int, int]], ys: np.ndarray, xs: np.ndarray, crop: tuple[int, int], n: int
) -> list[tuple[int, int]]:
    """The first ``n`` candidates (lattice row, column) whose crops overlap none taken before."""
    taken: list[tuple[int, int]] = []
    cells: dict[tuple[int, int], list[tuple[int, int]]] = {}
    crop_w, crop_h = crop
    for r, c in candidates:
        if len(taken) >= n:
            break
        x, y = int(xs[c]), int(ys[r])
        cell = (x // crop_w, y // crop_h)
        near = (cells.get((cell[0] + i, cell[1] + j), []) for i in (-1, 0, 1) for j in (-1, 0, 1))
        if any(abs(x - ox) < crop_w and abs(y - oy) < crop_h for group in near for ox, oy in group):
            continue
        cells.setdefault(cell, []).append((x, y))
        taken.append((r, c))
    return taken


def patch_tiles(patch: Patch, crop: tuple[int, int], level: TiledLevel) -> list[int]:
    """The grid indices (row-major) of the tiles a patch's crop covers."""
    tile_w, tile_h = level.tile_px
    cols = range(patch.x // tile_w, (patch.x + crop[0] - 1) // tile_w + 1)
    rows = range(patch.y // tile_h, (patch.y + crop[1] - 1) // tile_h + 1)
    return [r * level.across + c for r in rows for c in cols]


# Patches are cut this many at a time: their tiles fetched in one go, each decoded once.
PATCH_GROUP = 32


def cut_patches(
    patches: Sequence[Patch],
    level: TiledLevel,
    span: tuple[float, float],
    size_px: int,
    fetch: Callable[[Sequence[int]], Mapping[int, bytes]],
    decode: Callable[[int, bytes], np.ndarray],
    present: Collection[int],
) -> Iterator[tuple[Patch, pyvips.Image]]:
    """Each patch's image, exactly ``size_px`` square.

    ``fetch(tiles)`` returns those tiles' encoded bytes and ``decode(tile,
    data)`` their pixels (a whole tile); tiles not ``present`` (a sparse
    level's) are background. A tile shared by patches of one group, or of the
    next, is fetched and decoded once.
    """
    crop = crop_px(span)
    needs = [patch_tiles(p, crop, level) for p in patches]
    last_use = {tile: k for k, tiles in enumerate(needs) for tile in tiles}
    decoded: dict[int, np.ndarray] = {}
    for start in range(0, len(patches), PATCH_GROUP):
        group = range(start, min(start + PATCH_GROUP, len(patches)))
        wanted = sorted({t for k in group for t in needs[k]} - decoded.keys())
        data = fetch([t for t in wanted if t in present])
        for tile in wanted:
            decoded[tile] = (
                decode(tile, data[tile])
                if tile in present
                else np.full((level.tile_px[1], level.tile_px[0], 3), BACKGROUND, dtype=np.uint8)
            )
        for k in group:
            pixels = patch_pixels(patches[k], needs[k], span, size_px, level, decoded)
            yield patches[k], with_icc_profile(output_image(pixels), level.icc_profile)
        for tile in [t for t in decoded if last_use[t] <= group[-1]]:
            del decoded[tile]


def patch_pixels(
    patch: Patch,
    tiles: Sequence[int],
    span: tuple[float, float],
    size_px: int,
    level: TiledLevel,
    decoded: Mapping[int, np.ndarray],
) -> np.ndarray:
    """The patch's crop assembled from its decoded ``tiles`` (its :func:`patch_tiles`), resized to ``size_px``
    against its exact span with the stock's Lanczos-3: the one way a patch's pixels are made, in the workflow
    and at training time. Numpy and Pillow only (libvips' threads do not survive a fork, a DataLoader's workers'
    way of starting)."""
    crop = crop_px(span)
    tile_w, tile_h = level.tile_px
    c0, r0 = patch.x // tile_w, patch.y // tile_h
    n_cols = (patch.x + crop[0] - 1) // tile_w - c0 + 1
    n_rows = len(tiles) // n_cols
    mosaic = np.concatenate(
        [np.concatenate([decoded[tiles[i * n_cols + j]] for j in range(n_cols)], axis=1) for i in range(n_rows)],
        axis=0,
    )
    x, y = patch.x - c0 * tile_w, patch.y - r0 * tile_h
    region = np.ascontiguousarray(mosaic[y : y + crop[1], x : x + crop[0]])
    height, width = region.shape[:2]
    if size_px > width or size_px > height:
        raise ValueError(f"resize to {size_px} x {size_px} px from {width} x {height} px would upsample")
    return resample_rows([region], (width, height), (size_px, size_px), span)
