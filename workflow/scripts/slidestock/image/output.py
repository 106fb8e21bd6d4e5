"""What a slide's job writes: the image at its exact size and spacing, and its tissue mask."""

from __future__ import annotations

import os
from pathlib import Path

import pyvips

from slidestock.errors import ConfigError
from slidestock.jobs.slide import SlideJob, side_path
from slidestock.plan.levels import FORMATS, Target, output_size_px
from slidestock.provenance import Written, sha256_file
from slidestock.records import OutputFile


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


def with_icc_profile(image: pyvips.Image, profile: bytes | None) -> pyvips.Image:
    """``image`` carrying the level's ICC profile (when it has one), which :func:`write_image` keeps."""
    if not profile:
        return image
    tagged: pyvips.Image = image.copy()
    tagged.set_type(pyvips.GValue.blob_type, "icc-profile-data", profile)
    return tagged


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


def write_output(
    job: SlideJob,
    target: Target,
    output: pyvips.Image,
    spacing: tuple[float, float] | None,
    level_size: tuple[int, int],
) -> Written:
    """Write the slide's image (and its tissue mask); what was written, for the record.

    ``output`` is the level at the target's size (:func:`slidestock.plan.levels.output_size_px`),
    ``spacing`` the level's µm/px (None: unknown, the image gets none) and ``level_size`` its size.
    """
    size = output_size_px(level_size, spacing, target)
    if (output.width, output.height) != size:
        raise ValueError(f"{job.plan.slide_id}: an output of {output.width} x {output.height} px; expected {size}")
    out_spacing = (
        None if spacing is None else (spacing[0] * level_size[0] / size[0], spacing[1] * level_size[1] / size[1])
    )
    if job.settings.tissue_mask:  # in memory: the image file and the mask are made from one computation of it
        output = output.copy_memory()
    write_image(output, job.image_path, out_spacing, job.settings.format, job.settings.quality, job.settings.pyramid)
    written: OutputFile = {
        "path": str(job.image_path),
        "format": job.settings.format,
        "size_px": list(size),
        "spacing_um": None if out_spacing is None else list(out_spacing),
        "bytes": job.image_path.stat().st_size,
        "sha256": sha256_file(job.image_path),
    }
    if job.settings.tissue_mask:
        mask = tissue_mask(output)
        mask_path = side_path(job, "mask")
        write_image(mask, mask_path, out_spacing, "png")
        written["tissue_fraction"] = tissue_fraction(mask)
        written["mask_path"] = str(mask_path)
    return Written((size[0] / level_size[0], size[1] / level_size[1]), written)
