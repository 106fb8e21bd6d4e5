"""Read one downloaded DICOM WSI level as a pyvips image.

pyvips has no DICOM loader, so the encapsulated frames are taken from
pydicom, decoded one by one (JPEG baseline by libvips, JPEG 2000 by
OpenJPEG through imagecodecs) and joined into the total pixel matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pyvips
from pydicom.encaps import generate_frames

from slidestock.errors import DecodeError

JPEG_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"})
JPEG2000_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"})


@dataclass(frozen=True)
class DicomLevel:
    """A decoded level: lazy pixels and what the header says about them.

    ``spacing_xy_um`` is the header's full-precision PixelSpacing as
    (column spacing, row spacing) in µm, ``None`` when the header has none.
    """

    image: pyvips.Image
    size_px: tuple[int, int]
    spacing_xy_um: tuple[float, float] | None
    transfer_syntax: str
    photometric: str
    sop_instance_uid: str


def header_spacing_um(ds: pydicom.Dataset) -> tuple[float, float] | None:
    """(column, row) spacing in µm from the shared functional groups.

    DICOM PixelSpacing is (row spacing, column spacing) in mm: y first.
    """
    try:
        spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        row_mm, col_mm = float(spacing[0]), float(spacing[1])
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return None
    if not all(v > 0 and math.isfinite(v) for v in (row_mm, col_mm)):
        return None
    return (col_mm * 1000.0, row_mm * 1000.0)


def _decode_frame(frame: bytes, syntax: str, item: str, index: int) -> pyvips.Image:
    try:
        if syntax in JPEG_SYNTAXES:
            return pyvips.Image.jpegload_buffer(frame, fail_on="error")
        array = np.ascontiguousarray(imagecodecs.jpeg2k_decode(frame))
        image: pyvips.Image = pyvips.Image.new_from_array(array)
        return image.copy(interpretation="srgb")
    except (pyvips.Error, imagecodecs.Jpeg2kError) as err:
        raise DecodeError(f"{item}: frame {index + 1} cannot be decoded ({syntax}): {err}") from err


def read_level(path: Path, item: str | None = None) -> DicomLevel:
    """Read a single-instance DICOM WSI level (TILED_FULL, one focal plane, one optical path)."""
    item = item or str(path)
    try:
        ds = pydicom.dcmread(path)
    except (pydicom.errors.InvalidDicomError, OSError, EOFError) as err:
        raise DecodeError(f"{item}: not a readable DICOM file: {err}") from err
    syntax = str(ds.file_meta.TransferSyntaxUID)
    if syntax not in JPEG_SYNTAXES | JPEG2000_SYNTAXES:
        raise DecodeError(f"{item}: transfer syntax {syntax} is not supported; expected JPEG baseline or JPEG 2000")
    organization = str(ds.get("DimensionOrganizationType", "TILED_FULL"))
    if organization != "TILED_FULL":
        raise DecodeError(f"{item}: DimensionOrganizationType {organization}; expected TILED_FULL")
    width, height = int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows)
    tile_w, tile_h = int(ds.Columns), int(ds.Rows)
    across, down = math.ceil(width / tile_w), math.ceil(height / tile_h)
    n_frames = int(ds.get("NumberOfFrames", 1))
    if n_frames != across * down:
        raise DecodeError(
            f"{item}: {n_frames} frames; expected {across} x {down} = {across * down} tiles "
            f"for {width} x {height} px in {tile_w} x {tile_h} px tiles"
        )
    frames = generate_frames(ds.PixelData, number_of_frames=n_frames)
    tiles = [_decode_frame(f, syntax, item, i) for i, f in enumerate(frames)]
    joined = pyvips.Image.arrayjoin(tiles, across=across) if len(tiles) > 1 else tiles[0]
    image = joined.crop(0, 0, width, height)
    if image.bands != 3:
        raise DecodeError(f"{item}: {image.bands} samples per pixel after decoding; expected 3 (RGB)")
    return DicomLevel(
        image=image,
        size_px=(width, height),
        spacing_xy_um=header_spacing_um(ds),
        transfer_syntax=syntax,
        photometric=str(ds.get("PhotometricInterpretation", "")),
        sop_instance_uid=str(ds.SOPInstanceUID),
    )
