"""Downsample a level to the exact output size and write it with its physical resolution."""

from __future__ import annotations

import os
from pathlib import Path

import pyvips

from slidestock.errors import ConfigError

# Output format -> file extension. PNG (pHYs), TIFF (resolution tags), JPEG and WebP (EXIF)
# all carry the resolution.
FORMATS = {"png": "png", "jpeg": "jpg", "tiff": "tiff", "webp": "webp"}


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


def write_image(
    image: pyvips.Image,
    path: Path,
    spacing_xy_um: tuple[float, float] | None,
    fmt: str = "png",
    quality: int = 90,
    pyramid: bool = False,
) -> None:
    """Write ``image`` at ``path`` with its (column, row) spacing as resolution, atomically.

    With no spacing (a label image, a slide without any) the resolution is written as 0: unknown.

    ``quality`` applies to JPEG and WebP; ``pyramid`` writes a tiled, pyramidal
    TIFF. The file appears under its final name only when complete, so no
    partial image is ever left where a finished one belongs.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"target.format: got {fmt!r}; expected one of {', '.join(FORMATS)}")
    # libvips resolution is in pixels per millimetre; 0 says unknown (libvips would write its default, 1).
    if spacing_xy_um is None:
        tagged = image.copy(xres=0.0, yres=0.0)
    else:
        tagged = image.copy(xres=1000.0 / spacing_xy_um[0], yres=1000.0 / spacing_xy_um[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    icc = ["icc"] if image.get_typeof("icc-profile-data") else []
    # libvips writes the resolution into the EXIF it keeps; nothing else of the input is kept.
    with_exif = ",".join(["exif", *icc])
    keep = ",".join(icc) or "none"
    try:
        if fmt == "png":
            tagged.pngsave(str(partial), compression=6, keep=keep)
        elif fmt == "jpeg":
            tagged.jpegsave(str(partial), Q=quality, keep=with_exif)
        elif fmt == "webp":
            tagged.webpsave(str(partial), Q=quality, keep=with_exif)
        else:
            tagged.tiffsave(str(partial), compression="deflate", resunit="cm", tile=pyramid, pyramid=pyramid, keep=keep)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def tissue_mask(image: pyvips.Image, min_saturation: int = 20, max_brightness: int = 220) -> pyvips.Image:
    """A 0/255 mask of stained tissue: pixels with colour (max - min of R, G, B) or darkness.

    Glass and background are bright and grey; H&E-stained tissue is coloured
    or dark. The thresholds are on 8-bit values, at the output resolution.
    """
    bands = image.bandsplit()
    high = bands[0].maxpair(bands[1]).maxpair(bands[2])
    low = bands[0].minpair(bands[1]).minpair(bands[2])
    coloured = (high - low) > min_saturation
    dark = low < max_brightness - 60
    mask: pyvips.Image = (coloured | dark).cast("uchar")
    return mask


def tissue_fraction(mask: pyvips.Image) -> float:
    """The share of mask pixels that are tissue, rounded to 4 decimals."""
    return round(float(mask.avg()) / 255.0, 4)
