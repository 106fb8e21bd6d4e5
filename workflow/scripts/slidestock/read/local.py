"""A downloaded DICOM level: opened (one instance, or the parts of a concatenation laid out as one level), its
frames located by walking every item, and handed to the reducer a row of tiles at a time.

pydicom reads the header up to the pixel data; the frames are located without
being read (:mod:`slidestock.read.frames`), and :class:`FrameTiles` gives
them to :mod:`slidestock.image.reduce`, which decodes each
(:func:`slidestock.read.codestreams.decode_frame_data`) and streams them into a small image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom

from slidestock.errors import DecodeError
from slidestock.read.codestreams import decode_frame_data, jpeg_colour_model
from slidestock.read.dicom import JPEG_SYNTAXES, Frame, Instance, LevelHeader, describe_level, laid_out
from slidestock.read.frames import LocalFile, locate


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


def open_instance(path: Path, item: str) -> Instance:
    """One instance's header, read up to its pixel data."""
    try:
        with path.open("rb") as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
            pixel_start = fp.tell()
    except (pydicom.errors.InvalidDicomError, OSError, EOFError) as err:
        raise DecodeError(f"{item}: not a readable DICOM file: {err}") from err
    return Instance(describe_level(ds, path, item), ds, pixel_start)


@dataclass(frozen=True)
class _Part:
    """One instance's header and its frames, before they are laid out as a level."""

    ds: pydicom.Dataset
    header: LevelHeader
    frames: list[Frame]
    positions: list[tuple[int, int]] | None


def _read_part(path: Path, item: str) -> _Part:
    """One instance and its frames in frame order, every item of its pixel data walked and checked."""
    instance = open_instance(path, item)
    with LocalFile(path) as source:
        located = locate(source, instance, {f: f for f in range(instance.n_frames)}, complete=True)
    frames = [located.frames[f] for f in range(instance.n_frames)]
    return _Part(instance.ds, instance.header, frames, instance.positions())


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
    """A downloaded level's frames as the reducer's tiles (:class:`slidestock.image.reduce.Tiles`): each row's frames
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
