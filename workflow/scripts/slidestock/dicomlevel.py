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
NATIVE_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})
# Brightfield background, for the tiles a TILED_SPARSE level leaves out.
BACKGROUND = (255, 255, 255)


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
    organization: str = "TILED_FULL"
    missing_tiles: int = 0
    icc_profile: bytes | None = None
    shrink: int = 1


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


def decode_shrink(syntax: str, scale: float) -> int:
    """The factor (1, 2, 4 or 8) to shrink frames by while decoding, for a resize by ``scale``.

    JPEG decodes at 1/2, 1/4 or 1/8 in the DCT, far cheaper than a full
    decode. At least a factor two is left for the Lanczos resize, so the
    result stays antialiased and sharp. Other syntaxes decode at full size.
    """
    if syntax not in JPEG_SYNTAXES or scale <= 0:
        return 1
    return max(s for s in (1, 2, 4, 8) if s == 1 or s <= 1 / (2 * scale))


def _decode_frame(
    frame: bytes, syntax: str, item: str, index: int, tile_px: tuple[int, int], shrink: int = 1
) -> pyvips.Image:
    try:
        if syntax in JPEG_SYNTAXES:
            return pyvips.Image.jpegload_buffer(frame, fail_on="error", shrink=shrink)
        if syntax in NATIVE_SYNTAXES:
            array = np.frombuffer(frame, dtype=np.uint8).reshape(tile_px[1], tile_px[0], 3)
        else:
            array = np.ascontiguousarray(imagecodecs.jpeg2k_decode(frame))
        image: pyvips.Image = pyvips.Image.new_from_array(array)
        return image.copy(interpretation="srgb")
    except (pyvips.Error, imagecodecs.Jpeg2kError, ValueError) as err:
        raise DecodeError(f"{item}: frame {index + 1} cannot be decoded ({syntax}): {err}") from err


def _frames(ds: pydicom.Dataset, syntax: str, n_frames: int, tile_px: tuple[int, int], item: str) -> list[bytes]:
    if syntax not in NATIVE_SYNTAXES:
        return list(generate_frames(ds.PixelData, number_of_frames=n_frames))
    if int(ds.get("PlanarConfiguration", 0)) != 0 or str(ds.get("PhotometricInterpretation")) != "RGB":
        raise DecodeError(f"{item}: uncompressed frames must be RGB, interleaved; found {ds.PhotometricInterpretation}")
    size = tile_px[0] * tile_px[1] * 3
    data = ds.PixelData
    if len(data) < size * n_frames:
        raise DecodeError(f"{item}: {len(data)} bytes of pixel data; expected {size * n_frames} for {n_frames} frames")
    return [data[i * size : (i + 1) * size] for i in range(n_frames)]


def _sparse_positions(ds: pydicom.Dataset, n_frames: int, tile_px: tuple[int, int], item: str) -> list[tuple[int, int]]:
    """(tile column, tile row) of each frame of a TILED_SPARSE level, from its plane positions."""
    try:
        items = ds.PerFrameFunctionalGroupsSequence
        positions = [
            (
                (int(f.PlanePositionSlideSequence[0].ColumnPositionInTotalImagePixelMatrix) - 1) // tile_px[0],
                (int(f.PlanePositionSlideSequence[0].RowPositionInTotalImagePixelMatrix) - 1) // tile_px[1],
            )
            for f in items
        ]
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as err:
        raise DecodeError(f"{item}: TILED_SPARSE without readable plane positions: {err}") from err
    if len(positions) != n_frames:
        raise DecodeError(f"{item}: {len(positions)} plane positions for {n_frames} frames; expected one per frame")
    return positions


def read_level(path: Path, item: str | None = None, shrink: int = 1) -> DicomLevel:
    """Read a single-instance DICOM WSI level (one focal plane, one optical path).

    TILED_FULL and TILED_SPARSE organisations; JPEG baseline, JPEG 2000 and
    uncompressed RGB frames. Tiles a sparse level leaves out are background.
    With ``shrink`` (see :func:`decode_shrink`) frames are decoded at 1/shrink
    size and the image is ``size_px // shrink``: the last, partial pixel of
    each axis is dropped rather than mixed with tile padding.
    """
    item = item or str(path)
    try:
        ds = pydicom.dcmread(path)
    except (pydicom.errors.InvalidDicomError, OSError, EOFError) as err:
        raise DecodeError(f"{item}: not a readable DICOM file: {err}") from err
    syntax = str(ds.file_meta.TransferSyntaxUID)
    if syntax not in JPEG_SYNTAXES | JPEG2000_SYNTAXES | NATIVE_SYNTAXES:
        raise DecodeError(
            f"{item}: transfer syntax {syntax} is not supported; expected JPEG baseline, JPEG 2000 or uncompressed"
        )
    shrink = shrink if syntax in JPEG_SYNTAXES else 1
    organization = str(ds.get("DimensionOrganizationType", "TILED_FULL"))
    if organization not in ("TILED_FULL", "TILED_SPARSE"):
        raise DecodeError(f"{item}: DimensionOrganizationType {organization}; expected TILED_FULL or TILED_SPARSE")
    width, height = int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows)
    tile_px = (int(ds.Columns), int(ds.Rows))
    across, down = math.ceil(width / tile_px[0]), math.ceil(height / tile_px[1])
    n_frames = int(ds.get("NumberOfFrames", 1))
    if organization == "TILED_FULL" and n_frames != across * down:
        raise DecodeError(
            f"{item}: {n_frames} frames; expected {across} x {down} = {across * down} tiles "
            f"for {width} x {height} px in {tile_px[0]} x {tile_px[1]} px tiles"
        )
    frames = _frames(ds, syntax, n_frames, tile_px, item)
    if organization == "TILED_FULL":
        grid: list[pyvips.Image | None] = [
            _decode_frame(f, syntax, item, i, tile_px, shrink) for i, f in enumerate(frames)
        ]
    else:
        grid = [None] * (across * down)
        for i, (col, row) in enumerate(_sparse_positions(ds, n_frames, tile_px, item)):
            if 0 <= col < across and 0 <= row < down and grid[row * across + col] is None:
                grid[row * across + col] = _decode_frame(frames[i], syntax, item, i, tile_px, shrink)
    missing = sum(tile is None for tile in grid)
    decoded_tile = (-(-tile_px[0] // shrink), -(-tile_px[1] // shrink))
    blank = pyvips.Image.black(*decoded_tile, bands=3).new_from_image(list(BACKGROUND)).cast("uchar")
    tiles = [blank.copy(interpretation="srgb") if tile is None else tile for tile in grid]
    joined = pyvips.Image.arrayjoin(tiles, across=across) if len(tiles) > 1 else tiles[0]
    image = joined.crop(0, 0, width // shrink, height // shrink)
    if image.bands != 3:
        raise DecodeError(f"{item}: {image.bands} samples per pixel after decoding; expected 3 (RGB)")
    return DicomLevel(
        image=image,
        size_px=(width, height),
        spacing_xy_um=header_spacing_um(ds),
        transfer_syntax=syntax,
        photometric=str(ds.get("PhotometricInterpretation", "")),
        sop_instance_uid=str(ds.SOPInstanceUID),
        organization=organization,
        missing_tiles=missing,
        icc_profile=_icc_profile(ds),
        shrink=shrink,
    )


def _icc_profile(ds: pydicom.Dataset) -> bytes | None:
    """The ICC profile of the (first) optical path, which the output image carries on."""
    try:
        profile = ds.OpticalPathSequence[0].ICCProfile
    except (AttributeError, IndexError):
        return None
    return bytes(profile) if profile else None
