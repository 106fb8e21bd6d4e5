"""A DICOM WSI level as its header describes it: sizes, tiling, spacing, transfer syntax, and where its frames
sit on the tile grid; no pixel data is read here.

:mod:`slidestock.read.frames` finds where the frames lie in a file or an object,
:mod:`slidestock.read.local` opens a downloaded level, :mod:`slidestock.read.remote`
one in its bucket, and :mod:`slidestock.read.codestreams` decodes a frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import pydicom

from slidestock.errors import DecodeError

JPEG_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"})


JPEG2000_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"})


NATIVE_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})


IMPLICIT_VR = "1.2.840.10008.1.2"


# Brightfield background, for the tiles a TILED_SPARSE level leaves out.
BACKGROUND = 255


@dataclass(frozen=True)
class Frame:
    """Where one frame's bytes lie: (offset, length) of each of its fragments (most often one) in file ``file``.

    ``file`` indexes :attr:`LevelHeader.paths`: 0 but for the later parts of a concatenation.
    """

    index: int
    parts: tuple[tuple[int, int], ...]
    file: int = 0

    @property
    def length(self) -> int:
        return sum(length for _, length in self.parts)


@dataclass(frozen=True)
class LevelHeader:
    """What the header says about a level, and where each tile's frame is; no pixels.

    ``spacing_xy_um`` is the header's full-precision PixelSpacing as
    (column spacing, row spacing) in µm, ``None`` when the header has none.
    ``grid`` holds the frames in tile order, row by row; ``None`` where a
    TILED_SPARSE level has no tile.
    """

    path: Path
    item: str
    size_px: tuple[int, int]
    tile_px: tuple[int, int]
    spacing_xy_um: tuple[float, float] | None
    transfer_syntax: str
    photometric: str
    sop_instance_uid: str
    organization: str
    icc_profile: bytes | None
    grid: tuple[Frame | None, ...]
    # Every file the frames are in: ``path`` alone, or the parts of a concatenation in order.
    paths: tuple[Path, ...] = ()

    @property
    def files(self) -> tuple[Path, ...]:
        return self.paths or (self.path,)

    @property
    def across(self) -> int:
        return math.ceil(self.size_px[0] / self.tile_px[0])

    @property
    def down(self) -> int:
        return math.ceil(self.size_px[1] / self.tile_px[1])

    @property
    def missing_tiles(self) -> int:
        return sum(frame is None for frame in self.grid)


@dataclass(frozen=True)
class Instance:
    """One DICOM instance of a level: what its header says, the header's data set, where its pixel data element
    starts, and the bytes read to learn it (a header read by range)."""

    header: LevelHeader
    ds: pydicom.Dataset
    pixel_start: int
    header_bytes: int = 0

    @property
    def n_frames(self) -> int:
        return int(self.ds.get("NumberOfFrames", 1))

    def positions(self) -> list[tuple[int, int]] | None:
        """(tile column, tile row) of each frame of a TILED_SPARSE level; ``None`` for TILED_FULL (frames in order)."""
        if self.header.organization != "TILED_SPARSE":
            return None
        return sparse_positions(self.ds, self.n_frames, self.header.tile_px, self.header.item)


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


def describe_level(ds: pydicom.Dataset, path: Path, item: str) -> LevelHeader:
    """What a level's header says (its frames not yet located), or why it cannot be read as a brightfield level."""
    syntax = str(ds.file_meta.TransferSyntaxUID)
    if syntax not in JPEG_SYNTAXES | JPEG2000_SYNTAXES | NATIVE_SYNTAXES:
        raise DecodeError(
            f"{item}: transfer syntax {syntax} is not supported; expected JPEG baseline, JPEG 2000 or uncompressed"
        )
    photometric, samples = str(ds.get("PhotometricInterpretation", "")), int(ds.get("SamplesPerPixel", 3))
    if photometric.startswith("MONOCHROME") or samples != 3:
        raise DecodeError(
            f"{item}: {photometric or 'no photometric interpretation'} with {samples} sample(s) per pixel: one "
            "channel of a fluorescence or multi-channel series; expected a brightfield RGB level"
        )
    organization = str(ds.get("DimensionOrganizationType", "TILED_FULL"))
    if organization not in ("TILED_FULL", "TILED_SPARSE"):
        raise DecodeError(f"{item}: DimensionOrganizationType {organization}; expected TILED_FULL or TILED_SPARSE")
    try:
        width, height = int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows)
        tile_px = (int(ds.Columns), int(ds.Rows))
        n_frames = int(ds.get("NumberOfFrames", 1))
    except (AttributeError, TypeError, ValueError) as err:
        raise DecodeError(f"{item}: no usable matrix, tile or frame sizes in the header: {err}") from err
    if min(width, height, *tile_px, n_frames) < 1:
        raise DecodeError(f"{item}: {width} x {height} px in {tile_px} px tiles, {n_frames} frames; expected sizes > 0")
    if syntax in NATIVE_SYNTAXES and (int(ds.get("PlanarConfiguration", 0)) != 0 or photometric != "RGB"):
        raise DecodeError(f"{item}: uncompressed frames must be RGB, interleaved; found {photometric}")
    return LevelHeader(
        path=path,
        item=item,
        size_px=(width, height),
        tile_px=tile_px,
        spacing_xy_um=header_spacing_um(ds),
        transfer_syntax=syntax,
        photometric=photometric,
        sop_instance_uid=str(ds.SOPInstanceUID),
        organization=organization,
        icc_profile=_icc_profile(ds),
        grid=(),
    )


def laid_out(header: LevelHeader, frames: list[Frame], positions: list[tuple[int, int]] | None) -> LevelHeader:
    """The frames placed on the level's tile grid: in order (TILED_FULL), or by their plane positions."""
    across, down = header.across, header.down
    (width, height), (tile_w, tile_h) = header.size_px, header.tile_px
    if header.organization == "TILED_FULL":
        if len(frames) != across * down:
            raise DecodeError(
                f"{header.item}: {len(frames)} frames; expected {across} x {down} = {across * down} tiles "
                f"for {width} x {height} px in {tile_w} x {tile_h} px tiles"
            )
        return replace(header, grid=tuple(frames))
    assert positions is not None
    grid: list[Frame | None] = [None] * (across * down)
    for frame, (col, row) in zip(frames, positions, strict=True):
        if 0 <= col < across and 0 <= row < down and grid[row * across + col] is None:
            grid[row * across + col] = frame
    return replace(header, grid=tuple(grid))


def sparse_positions(ds: pydicom.Dataset, n_frames: int, tile_px: tuple[int, int], item: str) -> list[tuple[int, int]]:
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


def _icc_profile(ds: pydicom.Dataset) -> bytes | None:
    """The ICC profile of the (first) optical path, which the output image carries on."""
    try:
        profile = ds.OpticalPathSequence[0].ICCProfile
    except (AttributeError, IndexError):
        return None
    return bytes(profile) if profile else None
