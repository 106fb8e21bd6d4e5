"""Pyramid pages of an SVS (tiled TIFF) as levels, and a page's tiles as an image."""

from __future__ import annotations

import math
from collections.abc import Sequence

import imagecodecs
import numpy as np
import pyvips

from slidestock.errors import DecodeError
from slidestock.levels import Level, LevelChoice, Target, choose_level
from slidestock.tiff import ReadRange, TiffPage, read_pages

JPEG, JPEG2000_YCBCR, JPEG2000_RGB, NONE = 7, 33003, 33005, 1
SUPPORTED = frozenset({JPEG, JPEG2000_YCBCR, JPEG2000_RGB, NONE})


def page_levels(pages: Sequence[TiffPage]) -> list[Level]:
    """The pyramid pages as :class:`Level` values (label, macro and thumbnail pages are not levels).

    Aperio writes the spacing (MPP) on the base page only; the level rule
    derives the others from the size ratio.
    """
    return [
        Level(
            sop_instance_uid=f"page{page.index}",
            crdc_instance_uuid=f"page{page.index}",
            image_type=("ORIGINAL", "PRIMARY", "VOLUME", "NONE"),
            size_px=page.size_px,
            spacing_um=page.spacing_um,
            transfer_syntax=f"tiff-compression-{page.compression}",
            size_bytes=0,
            spacing_exact=True,  # from the file itself, not a rounded index
        )
        for page in pages
        if page.kind == "level"
    ]


def choose_page(
    read: ReadRange, target: Target, item: str
) -> tuple[TiffPage, LevelChoice, list[Level], list[TiffPage]]:
    """The pyramid page the level rule picks for ``target``: the page, the choice, the levels and every page."""
    pages = read_pages(read, item)
    levels = page_levels(pages)
    choice = choose_level(levels, target, slide=item)
    return pages[int(choice.level.sop_instance_uid.removeprefix("page"))], choice, levels, pages


def decode_tile(page: TiffPage, data: bytes, item: str, index: int) -> np.ndarray:
    tile_w, tile_h = page.tile_px or page.size_px
    try:
        if page.compression == JPEG:
            # Aperio marks JPEG tiles RGB when they were encoded without the YCbCr transform.
            colorspace = "RGB" if page.photometric == 2 else None
            array = imagecodecs.jpeg8_decode(data, tables=page.jpegtables, colorspace=colorspace)
        elif page.compression in (JPEG2000_YCBCR, JPEG2000_RGB):
            array = imagecodecs.jpeg2k_decode(data)
        else:
            array = np.frombuffer(data, dtype=np.uint8).reshape(tile_h, tile_w, -1)
    except (imagecodecs.Jpeg8Error, imagecodecs.Jpeg2kError, ValueError) as err:
        raise DecodeError(f"{item}: tile {index + 1} of page {page.index} cannot be decoded: {err}") from err
    if array.ndim != 3 or array.shape[2] < 3:
        raise DecodeError(f"{item}: tile {index + 1} of page {page.index} has shape {array.shape}; expected RGB")
    return np.ascontiguousarray(array[:tile_h, :tile_w, :3])


def decode_page(page: TiffPage, tiles: Sequence[bytes], item: str) -> pyvips.Image:
    """The page's tiles (row by row) joined and cropped to the page size."""
    if page.compression not in SUPPORTED:
        raise DecodeError(
            f"{item}: page {page.index} uses TIFF compression {page.compression}; expected JPEG (7), "
            "JPEG 2000 (33003, 33005) or none (1)"
        )
    if page.tile_px is None:
        raise DecodeError(f"{item}: page {page.index} is not tiled; expected a tiled pyramid page")
    width, height = page.size_px
    across = math.ceil(width / page.tile_px[0])
    expected = across * math.ceil(height / page.tile_px[1])
    if len(tiles) != expected:
        raise DecodeError(f"{item}: page {page.index} has {len(tiles)} tiles; expected {expected}")
    images = [
        pyvips.Image.new_from_array(decode_tile(page, data, item, i)).copy(interpretation="srgb")
        for i, data in enumerate(tiles)
    ]
    joined = pyvips.Image.arrayjoin(images, across=across) if len(images) > 1 else images[0]
    image: pyvips.Image = joined.crop(0, 0, width, height)
    return image
