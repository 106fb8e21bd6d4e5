"""Real H&E tissue for the fixtures: a region of the CMU-1 Aperio slide (CC0), shipped in resources/tissue.

Pixel comparisons on noise or gradients hide resampling and decoding errors; every fixture slide
(the demo's, the tests', the benchmarks') is therefore made of real tissue. The region is 2,220 x
2,967 px at 0.499 µm/px, scanned at 20x. A slide's texture is a mosaic of the region's tissue-rich
patches (256 px, each turned and flipped by the seed, cross-faded where they overlap), so it is real
at full resolution whatever the slide's size; where the tissue lies on the slide is the region's own
outline, turned, cut and stretched to the slide, so that the slide looks like tissue when small too.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pyvips

REGION = Path(__file__).resolve().parents[2] / "resources" / "tissue" / "CMU-1-small-region.svs"
PATCH_PX = 256


@lru_cache(maxsize=1)
def region() -> np.ndarray:
    """The real region as (rows, columns, 3) uint8 RGB, decoded once by OpenSlide."""
    import openslide

    with openslide.OpenSlide(str(REGION)) as slide:
        rgba = np.asarray(slide.read_region((0, 0), 0, slide.dimensions))
    rgb: np.ndarray = np.ascontiguousarray(rgba[:, :, :3])
    return rgb


def is_tissue(pixels: np.ndarray) -> np.ndarray:
    """Stained or dark pixels (as the stock's tissue mask judges them): coloured, or darker than glass."""
    wide = pixels.astype(np.int16)
    coloured = wide.max(axis=-1) - wide.min(axis=-1) > 20
    dark = wide.min(axis=-1) < 160
    tissue: np.ndarray = coloured | dark
    return tissue


@lru_cache(maxsize=1)
def patches() -> np.ndarray:
    """The region's tissue-rich patches (at least 90 % tissue), ``PATCH_PX`` square, stepping half a patch."""
    pixels = region()
    step = PATCH_PX // 2
    found = [
        pixels[y : y + PATCH_PX, x : x + PATCH_PX]
        for y in range(0, pixels.shape[0] - PATCH_PX + 1, step)
        for x in range(0, pixels.shape[1] - PATCH_PX + 1, step)
        if is_tissue(pixels[y : y + PATCH_PX, x : x + PATCH_PX]).mean() >= 0.9
    ]
    return np.stack(found)


# Neighbouring patches overlap by this much, and are cross-faded there: no seam shows, at any scale.
OVERLAP_PX = 96


@lru_cache(maxsize=1)
def _ramp() -> np.ndarray:
    """A patch's weight along one axis: 1 inside, linear across ``OVERLAP_PX`` at each edge; neighbours' sum to 1."""
    ramp = np.minimum(1.0, (np.arange(PATCH_PX) + 0.5) / OVERLAP_PX)
    edge: np.ndarray = np.minimum(ramp, ramp[::-1]).astype(np.float32)
    return edge


def texture_array(size_px: tuple[int, int], seed: int) -> np.ndarray:
    """``size_px`` (columns, rows) of real tissue texture: the region's tissue-rich patches, each turned and
    flipped by ``seed``, laid on a grid off any tile grid and cross-faded where they overlap.

    Built a row of patches at a time (the weights of overlapping neighbours sum to one), so that
    memory holds the output and one row of patches.
    """
    width, height = size_px
    rng = np.random.default_rng(seed)
    tiles = patches()
    step = PATCH_PX - OVERLAP_PX
    # Start past the first patch's fade-in and stop before the last one's fade-out: every pixel weighs one.
    dx, dy = (OVERLAP_PX + int(v) for v in rng.integers(step, size=2))
    across, down = -(-(width + dx) // step), -(-(height + dy) // step)
    ramp = _ramp()
    rows = np.empty((down * step, width, 3), dtype=np.uint8)
    carried = np.zeros((OVERLAP_PX, width, 3), dtype=np.float32)  # the last band's fading rows
    for row in range(down):
        band = np.zeros((PATCH_PX, across * step + OVERLAP_PX, 3), dtype=np.float32)
        for col in range(across):
            tile = np.rot90(tiles[rng.integers(len(tiles))], int(rng.integers(4)))
            tile = tile[:, ::-1] if rng.integers(2) else tile
            band[:, col * step : col * step + PATCH_PX] += tile * ramp[None, :, None]
        band = band[:, dx : dx + width] * ramp[:, None, None]
        band[:OVERLAP_PX] += carried
        rows[row * step : (row + 1) * step] = np.floor(band[:step] + 0.5)
        carried = band[step:]
    plane: np.ndarray = np.ascontiguousarray(rows[dy : dy + height])
    return plane


def texture(size_px: tuple[int, int], seed: int) -> pyvips.Image:
    """:func:`texture_array` as a pyvips image."""
    image: pyvips.Image = pyvips.Image.new_from_array(texture_array(size_px, seed)).copy(interpretation="srgb")
    return image


@lru_cache(maxsize=1)
def _outline() -> np.ndarray:
    """The region's tissue as a smooth 0 to 255 map at 1/16 of its size."""
    tissue = is_tissue(region()).astype(np.uint8) * 255
    small = pyvips.Image.new_from_array(np.ascontiguousarray(tissue)).resize(1 / 16).gaussblur(1.5)
    outline: np.ndarray = np.ascontiguousarray(small.numpy())
    return outline


def layout(size_px: tuple[int, int], seed: int) -> pyvips.Image:
    """Where a slide's tissue lies, 0 (glass) to 255 (tissue), at ``size_px``: the region's outline, turned to the
    slide's orientation, flipped and cut by ``seed``, and stretched to fit."""
    width, height = size_px
    rng = np.random.default_rng(seed)
    outline = _outline()
    if (outline.shape[1] > outline.shape[0]) != (width > height):
        outline = np.rot90(outline)
    if rng.integers(2):
        outline = outline[::-1]
    if rng.integers(2):
        outline = outline[:, ::-1]
    # A window of two thirds of it or more, so that slides of one region differ in shape too.
    rows, cols = outline.shape
    h, w = (int(n * rng.uniform(0.67, 1.0)) for n in (rows, cols))
    y, x = int(rng.integers(rows - h + 1)), int(rng.integers(cols - w + 1))
    outline = outline[y : y + h, x : x + w]
    small = pyvips.Image.new_from_array(np.ascontiguousarray(outline))
    stretched = small.resize(width / small.width, vscale=height / small.height, kernel="linear")
    fitted: pyvips.Image = stretched.embed(0, 0, width, height, extend="copy").crop(0, 0, width, height)
    return fitted
