"""A level reduced to the exact output size: the decoder's own reduction where it keeps agreement, then Lanczos-3.

Measured on real H&E texture (benchmarks/agreement.py; JPEG 256 px frames at Q90 4:2:2, and JPEG
2000), against a full decode of the level and an exact Lanczos-3 to the output: a reduction in the
decoder (JPEG's DCT scaling to 1/2, 1/4, 1/8; JPEG 2000's resolution levels) agrees at 49 dB or more
on every ratio when it leaves the Lanczos filter at least a factor 3 (:data:`MIN_LEFT`); leaving
only 2 gives 44.7 dB, 1.5 gives 40 dB. :func:`plan_decode` takes the largest reduction that leaves 3.

The Lanczos-3 filter is Pillow's: an exact convolution that maps each output pixel's centre onto the
level's extent, even where the decoded image stands for a fractional number of pixels (a level of
2,221 px decoded at 1/2 spans 1,110.5). libvips's ``resize`` on such an image agrees with that only
at 34 dB, and its ``reduce`` at large ratios at 38 dB, so it is not used to resample.

Memory holds two rows of tiles and the level resampled across (its rows at the output's width),
never the level: the rows of tiles are decoded (the next while this one is resampled across), and
the rows down are resampled once at the end. Both backends end here: ours from the frames or tiles
(:func:`reduce_tiles`), OpenSlide's from its bands (:func:`openslide_reduced`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyvips
from PIL import Image

from slidestock.errors import DecodeError
from slidestock.read.codestreams import j2k_resolution_levels
from slidestock.read.dicom import BACKGROUND, JPEG2000_SYNTAXES, JPEG_SYNTAXES, LevelHeader
from slidestock.read.local import FrameTiles, label_disagreement, read_frame, read_header

# The least factor a decoder's reduction leaves to the Lanczos filter (see the module's docstring).
MIN_LEFT = 3.0
JPEG, JPEG2000, RAW = "jpeg", "jpeg2000", "raw"


def plan_decode(codec: str, scale: float | None, tile_px: tuple[int, int], size_px: tuple[int, int],
                j2k_levels: int = 0) -> int:  # fmt: skip
    """The decoder's reduction (1, 2, 4 or 8) for a resize by ``scale``: the largest that leaves Lanczos a factor 3.

    JPEG reduces in the DCT. JPEG 2000 drops resolution levels (up to ``j2k_levels``), whose pixels
    sit at the level's ``d * n`` rather than a block's centre; the offset is corrected, but only
    where no edge tile is cut short (a cut tile decoded whole, then reduced, would sit elsewhere),
    so a ragged JPEG 2000 level is decoded at full size. Uncompressed levels are read as they are.
    """
    if scale is None or scale >= 1.0:
        return 1
    most = 1.0 / (scale * MIN_LEFT)
    if codec == JPEG:
        factors = [1, 2, 4, 8]
    elif codec == JPEG2000:
        factors = [2**r for r in range(min(j2k_levels, 3) + 1) if all(v % 2**r == 0 for v in (*tile_px, *size_px))]
    else:
        factors = [1]
    return max((f for f in factors if f <= most), default=1)


def decoded_offset(codec: str, decode: int) -> float:
    """Where the decoded image's pixel 0 starts, in its own pixels, against the level's left (or top) edge.

    A block reduction (JPEG's DCT) centres pixel ``n`` on its block: 0. JPEG 2000's low-pass keeps
    level sample ``d * n``: its pixel ``n`` is centred ``(d - 1) / 2`` level pixels to the left of
    the block's centre, so the level's edge is ``(d - 1) / (2 d)`` of a decoded pixel further in.
    """
    return (decode - 1) / (2 * decode) if codec == JPEG2000 else 0.0


class Tiles(Protocol):
    """A tiled level as the reducer reads it: its geometry, each row's tiles as stored, and one tile decoded."""

    @property
    def size_px(self) -> tuple[int, int]: ...

    @property
    def tile_px(self) -> tuple[int, int]: ...

    def row(self, row: int) -> Sequence[bytes | None]:
        """The stored bytes of row ``row``'s tiles, left to right (None for a tile the level leaves out)."""
        ...

    def decode(self, data: bytes, index: int, decode: int) -> np.ndarray:
        """Tile ``index`` (row-major) at 1/``decode``: ``(ceil(tile_h / d), ceil(tile_w / d), 3)`` uint8."""
        ...


@dataclass(frozen=True)
class Reduced:
    """A level at the output size, and how it was reduced: the decoder's factor and the rest left to Lanczos."""

    image: pyvips.Image
    decode_shrink: int
    lanczos_factor: float
    warnings: tuple[str, ...] = ()


def output_image(array: np.ndarray) -> pyvips.Image:
    image: pyvips.Image = pyvips.Image.new_from_array(np.ascontiguousarray(array)).copy(interpretation="srgb")
    return image


def reduce_tiles(
    tiles: Tiles, codec: str, out_px: tuple[int, int] | None, threads: int = 1, j2k_levels: int = 0
) -> Reduced:
    """The level resampled to ``out_px`` (its own size when None), decoded a row of tiles at a time on ``threads``."""
    width, height = tiles.size_px
    out_w, out_h = out_px or tiles.size_px
    scale = max(out_w / width, out_h / height)
    decode = plan_decode(codec, scale, tiles.tile_px, tiles.size_px, j2k_levels)
    offset = decoded_offset(codec, decode)
    strips = tile_strips(tiles, decode, threads)
    extent = (width / decode, height / decode)
    array = resample_rows(strips, (-(-width // decode), -(-height // decode)), (out_w, out_h), extent, offset)
    return Reduced(output_image(array), decode, round(1 / (scale * decode), 4))


def tile_strips(tiles: Tiles, decode: int, threads: int) -> Iterator[np.ndarray]:
    """The level's rows of tiles at 1/``decode``, cropped to ``ceil(size_px / decode)``; on more than one thread,
    the next row is fetched and decoded while the caller takes this one.

    Where the level's size is no multiple of ``decode``, its right and bottom tiles are decoded at
    full size and reduced here from their real pixels alone: a decoder's reduction would mix in
    the tile's padding.
    """
    width, height = tiles.size_px
    tile_w, tile_h = tiles.tile_px
    across, down = -(-width // tile_w), -(-height // tile_h)
    out_w, out_h = -(-width // decode), -(-height // decode)
    cell_w, cell_h = -(-tile_w // decode), -(-tile_h // decode)
    ragged = (width % decode != 0, height % decode != 0)

    def one(data: bytes | None, col: int, row: int) -> np.ndarray | None:
        if data is None:
            return None
        edge = (ragged[0] and col == across - 1) or (ragged[1] and row == down - 1)
        if not edge:
            return tiles.decode(data, row * across + col, decode)
        full = tiles.decode(data, row * across + col, 1)
        real_w, real_h = min(tile_w, width - col * tile_w), min(tile_h, height - row * tile_h)
        return block_mean(full[:real_h, :real_w], decode)

    def strip(row: int, cells: Sequence[np.ndarray | None]) -> np.ndarray:
        pixels = np.full((cell_h, cell_w * across, 3), BACKGROUND, dtype=np.uint8)
        for col, cell in enumerate(cells):
            if cell is not None:
                pixels[: cell.shape[0], col * cell_w : col * cell_w + cell.shape[1]] = cell
        return pixels[: min(cell_h, out_h - row * cell_h), :out_w]

    if threads <= 1:  # in this thread: a pool started and joined per slide cost a small one a fifth of its time
        for row in range(down):
            yield strip(row, [one(data, col, row) for col, data in enumerate(tiles.row(row))])
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:

        def submit(row: int) -> list[Future[np.ndarray | None]]:
            return [pool.submit(one, data, col, row) for col, data in enumerate(tiles.row(row))]

        pending = pool.submit(submit, 0)
        for row in range(down):
            cells = [future.result() for future in pending.result()]
            if row + 1 < down:
                pending = pool.submit(submit, row + 1)
            yield strip(row, cells)


def block_mean(pixels: np.ndarray, block: int) -> np.ndarray:
    """Each ``block x block`` block of an RGB array averaged (half up); a block cut short averages what it has."""
    if block == 1:
        return pixels
    rows, cols = pixels.shape[:2]
    padded = np.zeros((-(-rows // block) * block, -(-cols // block) * block, 3), dtype=np.uint32)
    counts = np.zeros(padded.shape[:2], dtype=np.uint32)
    padded[:rows, :cols] = pixels
    counts[:rows, :cols] = 1
    shape = (padded.shape[0] // block, block, padded.shape[1] // block, block)
    sums = padded.reshape(*shape, 3).sum(axis=(1, 3))
    n = counts.reshape(shape).sum(axis=(1, 3))[..., None]
    mean: np.ndarray = ((2 * sums + n) // (2 * n)).astype(np.uint8)
    return mean


def resample_rows(
    strips: Iterable[np.ndarray],
    size_px: tuple[int, int],
    out_px: tuple[int, int],
    extent_px: tuple[float, float] | None = None,
    offset_px: float = 0.0,
) -> np.ndarray:
    """An image arriving as strips of whole rows, Lanczos-3 resampled to ``out_px``: across as the strips come,
    down at the end (Pillow's order, so the result is the same as resampling it whole).

    ``extent_px`` is how many of the image's pixels the level spans (its size by default) and
    ``offset_px`` where the level starts in them (see :func:`decoded_offset`): output pixel ``x``
    is centred on ``offset + (x + 0.5) * extent / out`` of the image.
    """
    width, height = size_px
    out_w, out_h = out_px
    extent_w, extent_h = extent_px or (float(width), float(height))
    pad = 1 if offset_px else 0  # room for a window that starts inside the image and ends past its last pixel
    across: list[np.ndarray] = []
    for strip in strips:
        rows = _padded(strip, pad, 0)
        box = (offset_px, 0.0, offset_px + extent_w, float(rows.shape[0]))
        across.append(_lanczos(rows, (out_w, rows.shape[0]), box))
    if sum(len(rows) for rows in across) != height:
        raise DecodeError(f"{sum(len(rows) for rows in across)} of {height} rows arrived; expected the whole level")
    columns = _padded(np.concatenate(across), 0, pad)
    return _lanczos(columns, (out_w, out_h), (0.0, offset_px, float(out_w), offset_px + extent_h))


def _padded(pixels: np.ndarray, right: int, bottom: int) -> np.ndarray:
    if not (right or bottom):
        return pixels
    return np.pad(pixels, ((0, bottom), (0, right), (0, 0)), mode="edge")


def _lanczos(pixels: np.ndarray, size: tuple[int, int], box: tuple[float, float, float, float]) -> np.ndarray:
    """Pillow's Lanczos-3 (a = 3) of ``box`` of ``pixels`` to ``size``; a pass it need not make is skipped."""
    if size == (pixels.shape[1], pixels.shape[0]) and box == (0.0, 0.0, float(size[0]), float(size[1])):
        return pixels
    image = Image.fromarray(np.ascontiguousarray(pixels))
    resized = np.asarray(image.resize(size, Image.Resampling.LANCZOS, box=box, reducing_gap=None))
    return resized


def resize_exact(
    image: pyvips.Image | np.ndarray, size_px: tuple[int, int], extent_px: tuple[float, float] | None = None
) -> pyvips.Image:
    """Resize a whole image to exactly ``size_px`` (columns, rows) with Lanczos-3, as :func:`resample_rows` does.

    ``extent_px`` is how many of ``image``'s pixels the region spans (its size by default). A size
    equal to the input's returns the input: we never upsample and never resample for nothing.
    The image's ICC profile, if it has one, is carried.
    """
    array = image if isinstance(image, np.ndarray) else image.numpy()
    height, width = array.shape[:2]
    extent = extent_px or (float(width), float(height))
    if (size_px[0], size_px[1]) == (width, height) == extent and not isinstance(image, np.ndarray):
        return image
    if size_px[0] > width or size_px[1] > height:
        raise ValueError(f"resize to {size_px[0]} x {size_px[1]} px from {width} x {height} px would upsample")
    resized = output_image(resample_rows([array], (width, height), size_px, extent))
    if not isinstance(image, np.ndarray) and image.get_typeof("icc-profile-data"):
        resized.set_type(pyvips.GValue.blob_type, "icc-profile-data", image.get("icc-profile-data"))
    return resized


def reduce_level(header: LevelHeader, out_px: tuple[int, int] | None = None, threads: int = 1) -> Reduced:
    """A downloaded DICOM level resampled to ``out_px`` (its own size when None), on ``threads`` threads.

    Tiles a sparse level leaves out are background (white). What was unusual about the frames (edge
    frames stored smaller than the tile, a JPEG labelled in another colour model) is in ``warnings``.
    """
    syntax = header.transfer_syntax
    codec = JPEG if syntax in JPEG_SYNTAXES else JPEG2000 if syntax in JPEG2000_SYNTAXES else RAW
    first = next((frame for frame in header.grid if frame is not None), None)
    levels = 0
    if codec == JPEG2000 and first is not None:
        levels = j2k_resolution_levels(read_frame(header.files[first.file], first, header.item))
    with FrameTiles(header) as tiles:
        reduced = reduce_tiles(tiles, codec, out_px, threads, levels)
        label_note = label_disagreement(header, first)
        warnings = (*((label_note,) if label_note else ()), *tiles.notes())
    return Reduced(reduced.image, reduced.decode_shrink, reduced.lanczos_factor, warnings)


def read_level(path: Path, item: str | None = None, out_px: tuple[int, int] | None = None, threads: int = 1) -> Reduced:
    """Read a downloaded DICOM level and resample it to ``out_px`` (its own size when None)."""
    return reduce_level(read_header(path, item), out_px, threads)


# Backend openslide: rows of the level read at once, about this many bytes of RGBA.
OPENSLIDE_BAND_BYTES = 64 << 20


def openslide_reduced(path: Path, level_px: tuple[int, int], tile_h: int, out_px: tuple[int, int]) -> Reduced:
    """The one level of a downloaded DICOM file read by OpenSlide (``target.backend: openslide``), resampled."""
    import openslide

    with openslide.OpenSlide(str(path)) as slide:
        if slide.level_dimensions[0] != level_px:
            raise DecodeError(f"{path.name}: OpenSlide sees {slide.level_dimensions[0]} px; the header says {level_px}")
        return openslide_level_reduced(slide, 0, level_px, out_px, tile_h)


def openslide_level_reduced(
    slide: Any, level: int, level_px: tuple[int, int], out_px: tuple[int, int], tile_h: int = 256
) -> Reduced:
    """Level ``level`` of an open OpenSlide slide, resampled to ``out_px``.

    Read in bands of whole rows of tiles (``tile_h`` rows each; no tile is decoded twice), each
    resampled across before the next is read, so memory stays near one band whatever the level's size.
    """
    width, height = level_px
    rows = tile_h * max(1, OPENSLIDE_BAND_BYTES // (4 * width * tile_h))
    downsample = slide.level_downsamples[level]
    bands = (
        openslide_region(slide, level, (width, min(rows, height - y)), origin=(0, round(y * downsample))).numpy()
        for y in range(0, height, rows)
    )
    array = resample_rows(bands, level_px, out_px)
    scale = max(out_px[0] / width, out_px[1] / height)
    return Reduced(output_image(array), 1, round(1 / scale, 4))


def openslide_region(
    slide: Any, level: int, size_px: tuple[int, int], origin: tuple[int, int] = (0, 0)
) -> pyvips.Image:
    """A region of an OpenSlide level as an RGB image; transparent (missing) areas become white.

    ``origin`` is in level 0 pixels, as OpenSlide takes it.
    """
    rgba = np.ascontiguousarray(np.asarray(slide.read_region(origin, level, size_px)))
    image = pyvips.Image.new_from_array(rgba).copy(interpretation="srgb")
    flat: pyvips.Image = image.flatten(background=[255, 255, 255]).cast("uchar")
    return flat
