"""Pyramid pages of an SVS (tiled TIFF) as levels, and a page's tiles as the reducer's tiles.

Only the base page's spacing holds: Aperio writes ``MPP`` on the base alone, and libvips repeats
the base's description, ``MPP`` included, on every page of the pyramids it writes. The other pages'
spacings are derived from the size ratio, as OpenSlide does, and a page whose own value disagrees
is named in the choice's notes. JPEG tiles are decoded by Pillow (libjpeg-turbo), shrunk in the
DCT where :mod:`slidestock.image.reduce` allows: the page's JPEG tables are put into each tile's stream,
and tiles Aperio stores as RGB (no YCbCr transform) are marked so with an Adobe segment.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import imagecodecs
import numpy as np
from PIL import Image, UnidentifiedImageError

from slidestock.errors import DecodeError
from slidestock.image.reduce import JPEG, RAW, Reduced, reduce_tiles
from slidestock.plan.levels import Level, LevelChoice, Target, choose_level
from slidestock.read.tiff import ReadRange, TiffPage, read_pages, tile_locations

JPEG_COMPRESSION, JPEG2000_YCBCR, JPEG2000_RGB, NONE = 7, 33003, 33005, 1
SUPPORTED = frozenset({JPEG_COMPRESSION, JPEG2000_YCBCR, JPEG2000_RGB, NONE})
# An Adobe APP14 segment with transform 0: the components are RGB, not YCbCr.
_ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
# A page's own spacing may differ from the derived one by this much (rounding in its description).
_SPACING_TOLERANCE = 0.01


@dataclass(frozen=True)
class PageLevels:
    """The pyramid pages as levels (label, macro and thumbnail pages are not), and notes on their spacings."""

    levels: list[Level]
    notes: tuple[str, ...] = ()


def page_levels(pages: Sequence[TiffPage]) -> PageLevels:
    """The pyramid pages as :class:`Level` values, spacings derived from the base page's and the size ratio."""
    tiled = [page for page in pages if page.kind == "level"]
    if not tiled:
        return PageLevels([])
    base = tiled[0]
    notes = []
    levels = []
    for page in tiled:
        spacing = None if base.spacing_um is None else base.spacing_um * base.size_px[0] / page.size_px[0]
        own = page.spacing_um if page is not base else None
        if own is not None and spacing is not None and abs(own - spacing) > _SPACING_TOLERANCE * spacing:
            notes.append(
                f"page {page.index} says {page.spacing_um:g} µm/px; the base page's {base.spacing_um:g} µm/px and "
                f"the size ratio give {spacing:.6g}, which is used"
            )
        levels.append(Level.of_page(page.index, page.size_px, spacing, f"tiff-compression-{page.compression}"))
    return PageLevels(levels, tuple(notes))


@dataclass(frozen=True)
class PageChoice:
    """The page the level rule picks, the choice, the levels, every page, and notes on the pages' spacings."""

    page: TiffPage
    choice: LevelChoice
    levels: list[Level]
    pages: list[TiffPage]
    notes: tuple[str, ...]


def choose_page(read: ReadRange, target: Target, item: str) -> PageChoice:
    """The pyramid page the level rule picks for ``target``."""
    pages = read_pages(read, item)
    found = page_levels(pages)
    choice = choose_level(found.levels, target, slide=item)
    page = next(page for page in pages if page.index == choice.level.page)
    return PageChoice(page, choice, found.levels, pages, found.notes)


def check_page(page: TiffPage, item: str) -> tuple[int, int]:
    """The page's tile size; a page the reader cannot take raises :class:`DecodeError` naming why."""
    if page.compression not in SUPPORTED:
        raise DecodeError(
            f"{item}: page {page.index} uses TIFF compression {page.compression}; expected JPEG (7), "
            "JPEG 2000 (33003, 33005) or none (1)"
        )
    if page.tile_px is None:
        raise DecodeError(f"{item}: page {page.index} is not tiled; expected a tiled pyramid page")
    return page.tile_px


def jpeg_stream(page: TiffPage, data: bytes) -> bytes:
    """A tile's JPEG as a whole stream: the page's tables put in, and RGB tiles marked as such."""
    head = data[:2]
    adobe = _ADOBE_RGB if page.photometric == 2 else b""
    tables = page.jpegtables[2:-2] if page.jpegtables else b""
    return head + adobe + tables + data[2:]


def decode_tile(page: TiffPage, data: bytes, item: str, index: int, decode: int = 1) -> np.ndarray:
    """One tile as ``(ceil(tile_h / decode), ceil(tile_w / decode), 3)`` uint8; JPEG tiles shrink in the DCT."""
    tile_w, tile_h = check_page(page, item)
    expected = (math.ceil(tile_h / decode), math.ceil(tile_w / decode))
    try:
        if page.compression == JPEG_COMPRESSION:
            with Image.open(io.BytesIO(jpeg_stream(page, data)), formats=["JPEG"]) as picture:
                picture.draft("RGB", (max(1, tile_w // decode), max(1, tile_h // decode)))
                array = np.asarray(picture.convert("RGB"))
        elif page.compression in (JPEG2000_YCBCR, JPEG2000_RGB):
            array = imagecodecs.jpeg2k_decode(data)
        else:
            array = np.frombuffer(data, dtype=np.uint8).reshape(tile_h, tile_w, -1)
    except (OSError, UnidentifiedImageError, imagecodecs.Jpeg2kError, ValueError) as err:
        raise DecodeError(f"{item}: tile {index + 1} of page {page.index} cannot be decoded: {err}") from err
    if array.ndim != 3 or array.shape[2] < 3 or array.shape[:2] != expected:
        raise DecodeError(
            f"{item}: tile {index + 1} of page {page.index} decodes to shape {array.shape}; expected {(*expected, 3)}"
        )
    return np.ascontiguousarray(array[:, :, :3])


class PageTiles:
    """A page's tiles as the reducer's tiles (:class:`slidestock.image.reduce.Tiles`), fetched a row at a time."""

    def __init__(
        self, page: TiffPage, read: ReadRange, fetch: Callable[[list[tuple[int, int]]], list[bytes]], item: str
    ) -> None:
        self.page, self.item, self.fetch = page, item, fetch
        self.tile = check_page(page, item)
        self.locations = tile_locations(read, page, item)
        across, down = (math.ceil(v / t) for v, t in zip(page.size_px, self.tile, strict=True))
        if len(self.locations) != across * down:
            raise DecodeError(f"{item}: page {page.index} has {len(self.locations)} tiles; expected {across * down}")
        self.across = across

    @property
    def size_px(self) -> tuple[int, int]:
        return self.page.size_px

    @property
    def tile_px(self) -> tuple[int, int]:
        return self.tile

    @property
    def tile_bytes(self) -> int:
        """The bytes of the page's tiles: what reading the level takes."""
        return sum(length for _, length in self.locations)

    def row(self, row: int) -> list[bytes | None]:
        return list(self.fetch(self.locations[row * self.across : (row + 1) * self.across]))

    def decode(self, data: bytes, index: int, decode: int) -> np.ndarray:
        return decode_tile(self.page, data, self.item, index, decode)


def reduce_page(tiles: PageTiles, out_px: tuple[int, int] | None, threads: int = 1) -> Reduced:
    """The page resampled to ``out_px`` (its own size when None), a row of tiles at a time."""
    codec = JPEG if tiles.page.compression == JPEG_COMPRESSION else RAW  # JPEG 2000 tiles: decoded whole
    return reduce_tiles(tiles, codec, out_px, threads)
