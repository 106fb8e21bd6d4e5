"""A downloaded DICOM WSI level: its header, where each frame lies, and each frame decoded.

pydicom reads the header up to the pixel data; the frames are then located in the file
without being read (one instance, or the parts of a concatenation laid out as one level),
and :func:`decode_frame_data` decodes one (libjpeg-turbo and OpenJPEG through Pillow, or
uncompressed), at a reduced scale when the decoder can. :class:`FrameTiles` hands them to
:mod:`slidestock.reduce`, which streams them into a small image.
"""

from __future__ import annotations

import bisect
import io
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, UnidentifiedImageError

from slidestock.codestreams import jpeg_colour_model
from slidestock.errors import DecodeError

JPEG_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"})


JPEG2000_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"})


NATIVE_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})


IMPLICIT_VR = "1.2.840.10008.1.2"


# Brightfield background, for the tiles a TILED_SPARSE level leaves out.
BACKGROUND = 255


PIXEL_DATA = (0x7FE0, 0x0010)


ITEM, SEQUENCE_END = (0xFFFE, 0xE000), (0xFFFE, 0xE0DD)


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


@dataclass(frozen=True)
class _Part:
    """One instance's header and its frames, before they are laid out as a level."""

    ds: pydicom.Dataset
    header: LevelHeader
    frames: list[Frame]
    positions: list[tuple[int, int]] | None


def read_header(path: Path, item: str | None = None) -> LevelHeader:
    """Read a single-instance DICOM WSI level's header and locate its frames (one focal plane, one optical path).

    TILED_FULL and TILED_SPARSE organisations; JPEG baseline, JPEG 2000 and
    uncompressed RGB frames. Nothing of the pixel data is read but the item
    headers that delimit its frames.
    """
    part = _read_part(path, item or str(path))
    if "ConcatenationUID" in part.ds and part.header.organization == "TILED_FULL":
        total = part.header.across * part.header.down
        if len(part.frames) != total:
            raise DecodeError(
                f"{part.header.item}: part {part.ds.get('InConcatenationNumber', '?')} of a concatenation of "
                f"{part.ds.get('InConcatenationTotalNumber', '?')} instances holds {len(part.frames)} of the level's "
                f"{total} frames; expected all its parts to be read together"
            )
    return laid_out(part.header, part.frames, part.positions)


def read_concatenation(paths: Sequence[Path], item: str) -> LevelHeader:
    """A level written as a DICOM concatenation: its parts' frames laid out as one level.

    The parts share a ConcatenationUID, size and tiling; each holds the frames
    from its ConcatenationFrameOffsetNumber on.
    """
    parts = sorted((_read_part(path, f"{item} part {k + 1}") for k, path in enumerate(paths)),
                   key=lambda p: int(p.ds.get("ConcatenationFrameOffsetNumber", 0)))  # fmt: skip
    first = parts[0]
    uids = {str(p.ds.get("ConcatenationUID", "")) for p in parts}
    shapes = {(p.header.size_px, p.header.tile_px, p.header.transfer_syntax, p.header.organization) for p in parts}
    if len(uids) != 1 or "" in uids or len(shapes) != 1:
        raise DecodeError(
            f"{item}: {len(parts)} instances planned as one concatenated level, but their ConcatenationUIDs "
            f"{sorted(uids)} or sizes and tilings differ; expected the parts of one level"
        )
    frames: list[Frame] = []
    positions: list[tuple[int, int]] | None = [] if first.positions is not None else None
    for k, part in enumerate(parts):
        offset = int(part.ds.get("ConcatenationFrameOffsetNumber", 0))
        if offset != len(frames):
            raise DecodeError(f"{item}: part {k + 1} starts at frame {offset + 1}; expected frame {len(frames) + 1}")
        frames += [Frame(offset + f.index, f.parts, k) for f in part.frames]
        if positions is not None and part.positions is not None:
            positions += part.positions
    header = replace(first.header, item=item, paths=tuple(p.header.path for p in parts))
    return laid_out(header, frames, positions)


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


def _read_part(path: Path, item: str) -> _Part:
    """One instance's header and frames."""
    try:
        with path.open("rb") as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
            pixel_start = fp.tell()
    except (pydicom.errors.InvalidDicomError, OSError, EOFError) as err:
        raise DecodeError(f"{item}: not a readable DICOM file: {err}") from err
    header = describe_level(ds, path, item)
    n_frames = int(ds.get("NumberOfFrames", 1))
    frames = _locate_frames(path, pixel_start, header.transfer_syntax, n_frames, header.tile_px, item)
    positions = sparse_positions(ds, n_frames, header.tile_px, item) if header.organization == "TILED_SPARSE" else None
    return _Part(ds, header, frames, positions)


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


def _locate_frames(
    path: Path, start: int, syntax: str, n_frames: int, tile_px: tuple[int, int], item: str
) -> list[Frame]:
    """The frames' places in the file: fixed-size for native pixel data, one per fragment when encapsulated."""
    file_size = path.stat().st_size
    with path.open("rb") as fp:
        fp.seek(start)
        tag, length = _element_header(fp, syntax == IMPLICIT_VR)
        if tag != PIXEL_DATA:
            raise DecodeError(f"{item}: no pixel data; found element {tag[0]:04X},{tag[1]:04X} where it should be")
        if syntax in NATIVE_SYNTAXES:
            size = tile_px[0] * tile_px[1] * 3
            available = min(length, file_size - fp.tell())
            if available < size * n_frames:
                raise DecodeError(
                    f"{item}: {available} bytes of pixel data; expected {size * n_frames} for {n_frames} frames"
                )
            return [Frame(i, ((fp.tell() + i * size, size),)) for i in range(n_frames)]
        fragments = []
        while True:
            tag, length = _item_header(fp, item)
            if tag == SEQUENCE_END:
                break
            if tag != ITEM or fp.tell() + length > file_size:
                raise DecodeError(
                    f"{item}: pixel data item at byte {fp.tell() - 8} is not a complete item of {length} bytes "
                    f"in a {file_size} byte file; expected encapsulated frames"
                )
            fragments.append((fp.tell(), length))
            fp.seek(length, io.SEEK_CUR)
        if not fragments:
            raise DecodeError(f"{item}: encapsulated pixel data without a basic offset table item")
        fp.seek(fragments[0][0])
        table = fp.read(fragments[0][1])
    return _group_fragments(fragments[1:], table, n_frames, item)


def _group_fragments(fragments: list[tuple[int, int]], table: bytes, n_frames: int, item: str) -> list[Frame]:
    """Fragments (data offset, length) grouped into frames: one each, by the basic offset table, or all in one."""
    if len(fragments) == n_frames:
        return [Frame(i, (fragment,)) for i, fragment in enumerate(fragments)]
    if n_frames == 1 and fragments:
        return [Frame(0, tuple(fragments))]
    starts = list(struct.unpack(f"<{len(table) // 4}I", table[: len(table) // 4 * 4]))
    if len(starts) != n_frames or not fragments:
        raise DecodeError(
            f"{item}: {len(fragments)} fragments of pixel data for {n_frames} frames and {len(starts)} offsets "
            "in the basic offset table; expected one fragment per frame, or an offset per frame"
        )
    # Offsets count from the first fragment's item tag, 8 bytes before its data.
    first = fragments[0][0] - 8
    frames: list[list[tuple[int, int]]] = [[] for _ in starts]
    for offset, length in fragments:
        frame = bisect.bisect_right(starts, offset - 8 - first) - 1
        if frame < 0:
            raise DecodeError(f"{item}: the basic offset table does not start at the first fragment")
        frames[frame].append((offset, length))
    if not all(frames):
        raise DecodeError(f"{item}: the basic offset table leaves a frame without fragments")
    return [Frame(i, tuple(parts)) for i, parts in enumerate(frames)]


def _element_header(fp: io.BufferedReader, implicit: bool) -> tuple[tuple[int, int], int]:
    raw = fp.read(8)
    if len(raw) < 8:
        return (0, 0), 0
    group, element = struct.unpack("<HH", raw[:4])
    if implicit:
        return (group, element), struct.unpack("<I", raw[4:])[0]
    if raw[4:6] in (b"OB", b"OW", b"UN", b"OF", b"OD", b"OL", b"SQ", b"UT", b"UC", b"UR", b"OV"):
        extra = fp.read(4)
        return (group, element), struct.unpack("<I", extra)[0] if len(extra) == 4 else 0
    return (group, element), struct.unpack("<H", raw[6:])[0]


def _item_header(fp: io.BufferedReader, item: str) -> tuple[tuple[int, int], int]:
    raw = fp.read(8)
    if len(raw) < 8:
        raise DecodeError(f"{item}: the pixel data ends at byte {fp.tell()} before its sequence delimiter")
    group, element, length = struct.unpack("<HHI", raw)
    return (group, element), length


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


def label_disagreement(header: LevelHeader, first: Frame | None) -> str:
    """A warning when a JPEG level's PhotometricInterpretation and its frames' own markers disagree.

    The frames are decoded as their markers say (as every JPEG decoder does); the record says the label was wrong.
    """
    if header.transfer_syntax not in JPEG_SYNTAXES or first is None:
        return ""
    data = jpeg_colour_model(read_frame(header.files[first.file], first, header.item))
    label = "RGB" if header.photometric == "RGB" else "YCbCr" if header.photometric.startswith("YBR") else ""
    if not label or label == data:
        return ""
    return (
        f"PhotometricInterpretation is {header.photometric}, but the JPEG frames hold {data} (their own markers say "
        f"so): decoded as {data}"
    )


def read_frame(path: Path, frame: Frame, item: str) -> bytes:
    """One frame's bytes (its fragments joined)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return _pread_frame(fd, frame, item)
    finally:
        os.close(fd)


def _pread_frame(fd: int, frame: Frame, item: str) -> bytes:
    data = b"".join(os.pread(fd, length, offset) for offset, length in frame.parts)
    if len(data) != frame.length:
        raise DecodeError(f"{item}: frame {frame.index + 1} is cut short: {len(data)} of {frame.length} bytes")
    return data


class FrameTiles:
    """A downloaded level's frames as the reducer's tiles (:class:`slidestock.reduce.Tiles`): each row's frames
    read from its files, each frame decoded by :func:`decode_frame_data`. Frames stored smaller than the
    tile are noted, and said once by :meth:`notes`."""

    def __init__(self, header: LevelHeader) -> None:
        self.header = header
        self._fds: list[int] = []
        self._notes: list[tuple[int, int, int]] = []

    def __enter__(self) -> FrameTiles:
        self._fds = [os.open(path, os.O_RDONLY) for path in self.header.files]
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    @property
    def size_px(self) -> tuple[int, int]:
        return self.header.size_px

    @property
    def tile_px(self) -> tuple[int, int]:
        return self.header.tile_px

    def row(self, row: int) -> list[bytes | None]:
        across = self.header.across
        frames = self.header.grid[row * across : (row + 1) * across]
        return [None if f is None else _pread_frame(self._fds[f.file], f, self.header.item) for f in frames]

    def decode(self, data: bytes, index: int, decode: int) -> np.ndarray:
        frame = self.header.grid[index]
        assert frame is not None
        return decode_frame_data(data, frame, self.header, decode, self._notes)

    def notes(self) -> tuple[str, ...]:
        """What was unusual about the frames, said once."""
        if not self._notes:
            return ()
        first, width, height = min(self._notes)
        tile_w, tile_h = self.header.tile_px
        return (
            f"{len(set(self._notes))} frames stored smaller than the {tile_w} x {tile_h} px tile (first: frame "
            f"{first}, about {width} x {height} px): placed at their tile's corner, the rest filled as background",
        )


def decode_frame_data(
    data: bytes, frame: Frame, header: LevelHeader, decode: int, notes: list[tuple[int, int, int]] | None = None
) -> np.ndarray:
    """One frame's bytes as a (rows, columns, 3) array at 1/``decode`` of the tile size.

    A frame stored smaller than the tile (some converters write edge frames at
    the size of the pixels they hold; DICOM asks for whole tiles) is placed at
    its tile's corner and the rest filled as background, with a note in ``notes``.
    """
    item, syntax = header.item, header.transfer_syntax
    expected = (math.ceil(header.tile_px[1] / decode), math.ceil(header.tile_px[0] / decode), 3)
    array: np.ndarray
    try:
        if syntax in JPEG_SYNTAXES | JPEG2000_SYNTAXES:
            with Image.open(io.BytesIO(data), formats=["JPEG" if syntax in JPEG_SYNTAXES else "JPEG2000"]) as picture:
                if syntax in JPEG_SYNTAXES:
                    # libjpeg's DCT scaling: Pillow takes the largest of 1/2, 1/4, 1/8 that keeps this size.
                    picture.draft("RGB", (max(1, picture.width // decode), max(1, picture.height // decode)))
                else:
                    picture.reduce = decode.bit_length() - 1  # type: ignore[method-assign,assignment]
                picture.load()
                array = np.asarray(picture)
        else:
            array = np.frombuffer(data, dtype=np.uint8).reshape(expected)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError) as err:
        raise DecodeError(
            f"{item}: frame {frame.index + 1} cannot be decoded ({syntax}): {err} (the file is malformed)"
        ) from err
    if array.shape == expected:
        return array
    if (
        notes is not None
        and array.ndim == 3
        and array.shape[2] == 3
        and all(0 < got <= want for got, want in zip(array.shape[:2], expected[:2], strict=True))
    ):
        notes.append((frame.index + 1, array.shape[1] * decode, array.shape[0] * decode))
        tile = np.full(expected, BACKGROUND, dtype=np.uint8)
        tile[: array.shape[0], : array.shape[1]] = array
        return tile
    raise DecodeError(
        f"{item}: frame {frame.index + 1} decodes to {_describe(array.shape)}; expected {_describe(expected)} "
        "(the file is malformed)"
    )


def _describe(shape: Sequence[int]) -> str:
    bands = shape[2] if len(shape) > 2 else 1
    return f"{shape[1]} x {shape[0]} px with {bands} samples per pixel"


def _icc_profile(ds: pydicom.Dataset) -> bytes | None:
    """The ICC profile of the (first) optical path, which the output image carries on."""
    try:
        profile = ds.OpticalPathSequence[0].ICCProfile
    except (AttributeError, IndexError):
        return None
    return bytes(profile) if profile else None
