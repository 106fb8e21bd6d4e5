"""Downsample a level to the exact output size and write it with its physical resolution."""

from __future__ import annotations

import os
from pathlib import Path

import pyvips

from slidestock.errors import ConfigError

FORMATS = ("png",)


def resize_exact(image: pyvips.Image, size_px: tuple[int, int]) -> pyvips.Image:
    """Resize to exactly ``size_px`` (columns, rows) with an antialiasing Lanczos-3 filter.

    A size equal to the input's returns the input: we never upsample and
    never resample for nothing.
    """
    width, height = size_px
    if (width, height) == (image.width, image.height):
        return image
    if width > image.width or height > image.height:
        raise ValueError(f"resize to {width} x {height} px from {image.width} x {image.height} px would upsample")
    resized: pyvips.Image = image.resize(width / image.width, vscale=height / image.height, kernel="lanczos3")
    if (resized.width, resized.height) != (width, height):
        # libvips rounds its output size; pin it to the planned one (at most a pixel).
        resized = resized.embed(0, 0, width, height, extend="copy")
    return resized


def write_image(image: pyvips.Image, path: Path, spacing_xy_um: tuple[float, float], fmt: str = "png") -> None:
    """Write ``image`` at ``path`` with its (column, row) spacing as resolution, atomically.

    The file appears under its final name only when complete, so no partial
    image is ever left where a finished one belongs.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"target.format: got {fmt!r}; expected one of {', '.join(FORMATS)}")
    # libvips resolution is in pixels per millimetre.
    tagged = image.copy(xres=1000.0 / spacing_xy_um[0], yres=1000.0 / spacing_xy_um[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        tagged.pngsave(str(partial), compression=6, keep="none")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
