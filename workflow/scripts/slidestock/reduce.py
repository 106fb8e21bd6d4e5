"""A level reduced to the exact output size: shrink while decoding, box average, Lanczos resize.

Two integer reductions come before the final resize (see :func:`plan_shrink`): in the
decoder (JPEG by DCT scaling, JPEG 2000 by dropping wavelet resolution levels), then a
box average of ``box x box`` decoded pixels as rows of tiles stream by. Memory holds two
rows of tiles and the reduced image, never the level: a single-level 40,000 px slide is
reduced in well under 1 GB. Both backends end here: ours (:func:`reduce_level`, from the
frames :mod:`slidestock.dicom` locates) and OpenSlide's (:func:`openslide_reduced`); a
source hands the reduced image to :func:`resize_exact` through :mod:`slidestock.output`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyvips

from slidestock.codestreams import j2k_resolution_levels
from slidestock.dicom import (
    BACKGROUND,
    JPEG2000_SYNTAXES,
    JPEG_SYNTAXES,
    Frame,
    LevelHeader,
    decode_frame,
    label_disagreement,
    read_frame,
    read_header,
)
from slidestock.errors import DecodeError


def most_shrink(scale: float | None) -> int:
    """The largest integer reduction before a resize by ``scale`` that leaves the resize a factor two.

    ``floor(1 / (2 * scale))``, and 1 (none) for no resize or one above 1/4.
    """
    if scale is None or not 0 < scale <= 0.25:
        return 1
    return math.floor(1 / (2 * scale))


def plan_shrink(syntax: str, scale: float | None, tile_px: tuple[int, int], j2k_levels: int = 0) -> tuple[int, int]:
    """(decode shrink, box) for a resize by ``scale``: integer reductions before the Lanczos resize.

    Their product is at most ``1 / (2 * scale)``, so at least a factor two is
    left for the resize and the result stays antialiased and sharp. The
    decoder does what it can cheaply: JPEG decodes at 1/2, 1/4 or 1/8 in the
    DCT; JPEG 2000 drops up to ``j2k_levels`` wavelet resolution levels, when
    the tile size divides evenly. A box average does the rest.
    """
    most = most_shrink(scale)
    if most == 1:
        return 1, 1
    if syntax in JPEG_SYNTAXES:
        factors = [1, 2, 4, 8]
    elif syntax in JPEG2000_SYNTAXES:
        factors = [2**r for r in range(j2k_levels + 1) if tile_px[0] % 2**r == 0 == tile_px[1] % 2**r]
    else:
        factors = [1]
    decode = max(f for f in factors if f <= most)
    return decode, most // decode


@dataclass(frozen=True)
class DicomLevel:
    """A level reduced by ``decode_shrink * box`` (1 for full size), and its header.

    The image is ``ceil(size_px / shrink)``: it covers the whole level, and its
    last column and row average the level pixels that remain (fewer than
    ``shrink``), never tile padding.
    """

    header: LevelHeader
    image: pyvips.Image
    decode_shrink: int = 1
    box: int = 1
    warnings: tuple[str, ...] = ()

    @property
    def shrink(self) -> int:
        return self.decode_shrink * self.box


def read_level(path: Path, item: str | None = None, scale: float | None = None, threads: int = 1) -> DicomLevel:
    """Read and decode a level, reduced for a later resize by ``scale`` (full size when ``None``)."""
    return reduce_level(read_header(path, item), scale, threads)


def reduce_level(header: LevelHeader, scale: float | None = None, threads: int = 1) -> DicomLevel:
    """Decode the level row of tiles by row of tiles, on ``threads`` threads, reducing as it goes.

    Tiles a sparse level leaves out are background (white).
    """
    syntax = header.transfer_syntax
    levels = 0
    first = next((frame for frame in header.grid if frame is not None), None)
    if syntax in JPEG2000_SYNTAXES and first is not None:
        levels = j2k_resolution_levels(read_frame(header.files[first.file], first, header.item))
    decode, box = plan_shrink(syntax, scale, header.tile_px, levels)
    label_note = label_disagreement(header, first)
    size = (-(-header.size_px[0] // decode), -(-header.size_px[1] // decode))
    edge = (_edge_share(header.size_px[0], decode), _edge_share(header.size_px[1], decode))
    notes: list[tuple[int, int, int]] = []
    out = box_reduce(_strips(header, decode, threads, notes), size, box, header.item, edge)
    image = pyvips.Image.new_from_array(out).copy(interpretation="srgb")
    warnings: tuple[str, ...] = (label_note,) if label_note else ()
    if notes:
        first_frame, width, height = min(notes)
        warnings += (
            f"{len(set(notes))} frames stored smaller than the {header.tile_px[0]} x {header.tile_px[1]} px tile "
            f"(first: frame {first_frame}, about {width} x {height} px): placed at their tile's corner, "
            "the rest filled as background",
        )
    return DicomLevel(header=header, image=image, decode_shrink=decode, box=box, warnings=warnings)


def _edge_share(length_px: int, decode: int) -> float:
    """How much of a full pixel the last pixel of an axis decoded at 1/``decode`` stands for."""
    rest = length_px % decode
    return rest / decode if rest else 1.0


def box_reduce(
    strips: Iterable[np.ndarray],
    size_px: tuple[int, int],
    box: int,
    item: str,
    edge_share: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """An RGB image of ``size_px`` arriving as strips of whole rows, each ``box x box`` block averaged as they go by.

    Returns ``(ceil(height / box), ceil(width / box), 3)`` uint8, covering the
    whole image: a last block cut short by the image's edge averages the pixels
    it has. ``edge_share`` is the weight of the image's last column and row
    when they stand for less than a full pixel (a level decoded at a reduced
    scale whose size is no multiple of it). Only one strip (and fewer than
    ``box`` rows carried over) is held at a time.
    """
    width, height = size_px
    out = np.empty((-(-height // box), -(-width // box), 3), dtype=np.uint8)
    column_weights = np.ones(width)
    column_weights[-1] = edge_share[0]
    # Blocks of whole-weight rows are summed in integers; the last block (cut short, or
    # holding a partial row) is weighted at the end.
    fast_blocks = (height - (edge_share[1] < 1.0)) // box
    filled = 0
    carry = np.empty((0, width, 3), dtype=np.uint8)
    for strip in strips:
        rows = np.concatenate([carry, strip]) if len(carry) else strip
        if box == 1:  # a block of one pixel is its own mean, whatever its weight
            out[filled : filled + len(rows)] = rows
            filled += len(rows)
            continue
        n = min(len(rows) // box, fast_blocks - filled)
        if n > 0:
            sums = rows[: n * box].reshape(n, box, width, 3).sum(axis=1, dtype=np.uint32)
            out[filled : filled + n] = _horizontal_average(sums, box, column_weights, float(box))
        filled += max(n, 0)
        carry = rows[max(n, 0) * box :]
    if filled < len(out):
        row_weights = np.ones(len(carry))
        if len(carry) == height - filled * box and len(carry):
            row_weights[-1] = edge_share[1]
        sums = (carry.astype(np.float64) * row_weights[:, None, None]).sum(axis=0)[None]
        out[filled:] = _horizontal_average(sums, box, column_weights, float(row_weights.sum()))
        filled += 1 if len(carry) else 0
    if filled != len(out):
        raise DecodeError(f"{item}: {filled} of {len(out)} rows decoded; expected the whole level")
    return out


def _horizontal_average(sums: np.ndarray, box: int, column_weights: np.ndarray, row_weight: float) -> np.ndarray:
    """Rows of column sums (over ``row_weight`` rows' worth) as block means along the columns."""
    n, width = sums.shape[:2]
    full = int((width - (column_weights[-1] < 1.0)) // box)
    out = np.empty((n, -(-width // box), 3), dtype=np.uint8)
    if full:
        blocks = sums[:, : full * box].reshape(n, full, box, 3).sum(axis=2)
        if blocks.dtype.kind == "u":
            area = box * int(row_weight)
            out[:, :full] = (blocks + area // 2) // area
        else:
            out[:, :full] = _round_half_up(blocks / (box * row_weight))
    if out.shape[1] > full:
        weights = column_weights[full * box :]
        rest = (sums[:, full * box :].astype(np.float64) * weights[None, :, None]).sum(axis=1)
        out[:, full] = _round_half_up(rest / (weights.sum() * row_weight))
    return out


def _round_half_up(values: np.ndarray) -> np.ndarray:
    """As the integer blocks round: half up, not to even."""
    rounded: np.ndarray = np.clip(np.floor(values + 0.5), 0, 255)
    return rounded


def _strips(header: LevelHeader, decode: int, threads: int, notes: list[tuple[int, int, int]]) -> Iterator[np.ndarray]:
    """The level's rows of tiles, decoded at 1/``decode`` and cropped to ``ceil(size_px / decode)``.

    The next row is decoded while the caller reduces this one. Where the
    level's size is no multiple of ``decode``, the tiles on its right and
    bottom edges are decoded at full size and reduced here from their real
    pixels alone: a decoder's reduction would mix in the tile's padding.
    """
    tile_w, tile_h = (math.ceil(v / decode) for v in header.tile_px)
    width, height = (-(-v // decode) for v in header.size_px)
    across = header.across
    ragged = (header.size_px[0] % decode != 0, header.size_px[1] % decode != 0)
    fds = [os.open(path, os.O_RDONLY) for path in header.files]
    try:
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:

            def submit(row: int) -> list[Future[np.ndarray] | None]:
                cells = header.grid[row * across : (row + 1) * across]
                return [
                    None
                    if f is None
                    else pool.submit(_decode_cell, fds[f.file], f, header, decode, (col, row), ragged, notes)
                    for col, f in enumerate(cells)
                ]

            pending = submit(0)
            for row in range(header.down):
                tiles = [None if f is None else f.result() for f in pending]
                if row + 1 < header.down:
                    pending = submit(row + 1)
                strip = np.full((tile_h, tile_w * across, 3), BACKGROUND, dtype=np.uint8)
                for col, tile in enumerate(tiles):
                    if tile is not None:
                        strip[:, col * tile_w : (col + 1) * tile_w] = tile
                yield strip[: min(tile_h, height - row * tile_h), :width]
    finally:
        for fd in fds:
            os.close(fd)


def _decode_cell(
    fd: int,
    frame: Frame,
    header: LevelHeader,
    decode: int,
    cell: tuple[int, int],
    ragged: tuple[bool, bool],
    notes: list[tuple[int, int, int]],
) -> np.ndarray:
    """One tile at 1/``decode``: by the decoder, or for a ragged edge tile exactly from its real pixels."""
    col, row = cell
    edge = (ragged[0] and col == header.across - 1) or (ragged[1] and row == header.down - 1)
    if not edge:
        return decode_frame(fd, frame, header, decode, notes)
    tile = decode_frame(fd, frame, header, 1, notes)
    real_w = min(header.tile_px[0], header.size_px[0] - col * header.tile_px[0])
    real_h = min(header.tile_px[1], header.size_px[1] - row * header.tile_px[1])
    reduced = box_reduce([tile[:real_h, :real_w]], (real_w, real_h), decode, header.item)
    padded = np.full((math.ceil(header.tile_px[1] / decode), math.ceil(header.tile_px[0] / decode), 3), BACKGROUND,
                     dtype=np.uint8)  # fmt: skip
    padded[: reduced.shape[0], : reduced.shape[1]] = reduced
    return padded


def resize_exact(
    image: pyvips.Image, size_px: tuple[int, int], extent_px: tuple[float, float] | None = None
) -> pyvips.Image:
    """Resize to exactly ``size_px`` (columns, rows) with an antialiasing Lanczos-3 filter.

    ``extent_px`` is how many of ``image``'s pixels the level spans (its
    size by default): a level reduced by ``s`` whose size is no multiple of
    ``s`` spans ``size / s``, its last pixel standing for a part of one. The
    scale is taken against that extent, so output pixel ``x`` is centred at
    ``(x + 0.5) * extent / size`` of the level, whatever the reduction. A size
    equal to the input's returns the input: we never upsample and never
    resample for nothing.
    """
    width, height = size_px
    extent_w, extent_h = extent_px or (image.width, image.height)
    if (width, height) == (image.width, image.height) == (extent_w, extent_h):
        return image
    if width > image.width or height > image.height:
        raise ValueError(f"resize to {width} x {height} px from {image.width} x {image.height} px would upsample")
    resized: pyvips.Image = image.resize(width / extent_w, vscale=height / extent_h, kernel="lanczos3")
    if (resized.width, resized.height) != (width, height):
        # libvips rounds its output size from the image's; pin it to the planned one (at most a pixel).
        resized = resized.crop(0, 0, min(width, resized.width), min(height, resized.height))
        resized = resized.embed(0, 0, width, height, extend="copy")
    return resized


# Backend openslide: rows of the level read at once, about this many bytes of RGBA.
OPENSLIDE_BAND_BYTES = 64 << 20


def openslide_reduced(path: Path, header: LevelHeader, scale: float) -> tuple[pyvips.Image, int]:
    """The one level of a downloaded DICOM file, read by OpenSlide (``target.backend: openslide``).

    Read in bands of whole rows of tiles (no tile is decoded twice), each
    box-averaged by the largest factor the resize by ``scale`` allows before the
    next is read, so memory stays near one band whatever the level's size.
    Returns the reduced image and that factor.
    """
    import openslide

    (width, height), tile_h = header.size_px, header.tile_px[1]
    box = most_shrink(scale)
    rows = tile_h * max(1, OPENSLIDE_BAND_BYTES // (4 * width * tile_h))
    with openslide.OpenSlide(str(path)) as slide:
        if slide.level_dimensions[0] != header.size_px:
            raise DecodeError(
                f"{header.item}: OpenSlide sees {slide.level_dimensions[0]} px; the header says {header.size_px}"
            )
        bands = (
            openslide_region(slide, 0, (width, min(rows, height - y)), origin=(0, y)).numpy()
            for y in range(0, height, rows)
        )
        reduced = box_reduce(bands, header.size_px, box, header.item)
    return pyvips.Image.new_from_array(reduced).copy(interpretation="srgb"), box


def openslide_region(
    slide: Any, level: int, size_px: tuple[int, int], origin: tuple[int, int] = (0, 0)
) -> pyvips.Image:
    """A region of an OpenSlide level as an RGB image; transparent (missing) areas become white.

    ``origin`` is in level 0 pixels, as OpenSlide takes it.
    """
    import numpy as np

    rgba = np.ascontiguousarray(np.asarray(slide.read_region(origin, level, size_px)))
    image = pyvips.Image.new_from_array(rgba).copy(interpretation="srgb")
    flat: pyvips.Image = image.flatten(background=[255, 255, 255]).cast("uchar")
    return flat
