"""Where a DICOM level's frames lie: one class per way of finding them, behind one interface
(:class:`FrameIndex`), over a downloaded file and an object read by range alike (:class:`Source`).

The ways, in the order a level read by range prefers them (each reads less than the next):

- :class:`FixedSize`: uncompressed frames, each ``columns x rows x 3`` bytes, one after another;
- :class:`ExtendedTable`: the Extended Offset Table in the header, an offset and a length per frame;
- :class:`BasicTable`: the Basic Offset Table that opens the pixel data, an offset per frame;
- :class:`TiffDirectory`: the TIFF directory of a dual-personality file (IDC's converted slides have
  no offset table, but their 128-byte preamble starts a TIFF whose directory holds every tile);
- :class:`ItemWalk`: the fragments' item headers read in order, up to the last frame wanted.

A downloaded file is walked whole (``complete``): it costs no request, and every item is checked
before a frame is decoded. What a way finds is a :class:`Located`: each wanted frame's span, and
whether the span starts at its item header (the tables, a walk by range) or is the frame's data
(a TIFF directory, uncompressed frames, a walked file).
"""

from __future__ import annotations

import bisect
import os
import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from slidestock.errors import DecodeError
from slidestock.read.dicom import IMPLICIT_VR, NATIVE_SYNTAXES, Frame, Instance, laid_out
from slidestock.read.tiff import read_pages, tile_locations

PIXEL_TAG = struct.pack("<HH", 0x7FE0, 0x0010)
ITEM_TAG, SEQUENCE_END_TAG = struct.pack("<HH", 0xFFFE, 0xE000), struct.pack("<HH", 0xFFFE, 0xE0DD)
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# A TIFF directory and the values it points to lie together: read this much ahead.
DIRECTORY_AHEAD_BYTES = 64 << 10
# Walking to a frame past this share of the level reads nearly all of it: read it whole, in large requests.
WALK_WHOLE_SHARE = 0.8


class Walker(Protocol):
    """The item headers of a walk, read in order: ``header(pos)`` is the 8 bytes at ``pos`` (fewer at the end);
    ``keep`` marks a wanted fragment, whose bytes an object read by range keeps for the frame's fetch."""

    reads: int

    def header(self, pos: int) -> bytes: ...

    def keep(self, offset: int, length: int) -> None: ...


class Source(Protocol):
    """An object's bytes: a downloaded file, or an object read by range that keeps what it read."""

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int, ahead: int = 0) -> bytes:
        """``length`` bytes at ``offset`` (fewer at the end); a remote source fetches at least ``ahead``."""
        ...

    def walker(self, start: int, whole: bool) -> Walker:
        """A walk from ``start``; ``whole``: it will read nearly all that follows, so read in large pieces."""
        ...


@dataclass(frozen=True)
class Located:
    """Where the frames asked for lie, by the key they were asked for (a sparse level's missing tiles absent).

    ``items`` is true when each span starts at an item header (the frame's data
    follows it), false when spans are the data alone.
    """

    frames: Mapping[int, Frame]
    method: str
    note: str
    items: bool


class FrameIndex(Protocol):
    """One way of finding a level's frames: ``locate`` takes {key: frame number} and says where each lies."""

    def locate(self, wanted: Mapping[int, int]) -> Located: ...


@dataclass(frozen=True)
class FixedSize:
    """Uncompressed frames: each ``size`` bytes, the first at ``start``."""

    start: int
    size: int

    def locate(self, wanted: Mapping[int, int]) -> Located:
        frames = {key: Frame(f, ((self.start + f * self.size, self.size),)) for key, f in wanted.items()}
        return Located(frames, "uncompressed: fixed-size frames", "", False)


@dataclass(frozen=True)
class ExtendedTable:
    """The Extended Offset Table: each frame's offset from the first item (``first``) and its length."""

    first: int
    offsets: np.ndarray
    lengths: np.ndarray

    def locate(self, wanted: Mapping[int, int]) -> Located:
        frames = {
            key: Frame(f, ((self.first + int(self.offsets[f]), 8 + int(self.lengths[f])),)) for key, f in wanted.items()
        }
        return Located(frames, "Extended Offset Table", "", True)


@dataclass(frozen=True)
class BasicTable:
    """The Basic Offset Table: each frame's offset from the first item (``first``); the last frame ends where
    its item says."""

    source: Source
    first: int
    table: np.ndarray

    def locate(self, wanted: Mapping[int, int]) -> Located:
        ends = np.append(self.table[1:], -1)
        if len(self.table) - 1 in wanted.values():
            last_item = self.source.read(self.first + int(self.table[-1]), 8)
            ends[-1] = int(self.table[-1]) + 8 + struct.unpack("<I", last_item[4:8])[0]
        frames = {
            key: Frame(f, ((self.first + int(self.table[f]), int(ends[f] - self.table[f])),))
            for key, f in wanted.items()
        }
        return Located(frames, "Basic Offset Table", "", True)


@dataclass(frozen=True)
class TiffDirectory:
    """The tiles of the TIFF page that has the level's size and tiling, in the file's TIFF directory."""

    tiles: list[tuple[int, int]]

    @classmethod
    def find(cls, source: Source, instance: Instance) -> TiffDirectory | None:
        """The directory's tiles for the level, ``None`` when no page has its size, tiling and frame count."""
        header = instance.header

        def read(offset: int, length: int) -> bytes:
            return source.read(offset, length, ahead=DIRECTORY_AHEAD_BYTES)

        pages = read_pages(read, header.item)
        page = next((p for p in pages if p.size_px == header.size_px and p.tile_px == header.tile_px), None)
        if page is None:
            return None
        tiles = tile_locations(read, page, header.item)
        if len(tiles) != instance.n_frames:
            return None
        if any(offset + length > source.size for offset, length in tiles):
            raise DecodeError(
                f"{header.item}: the TIFF directory points past the end of the object ({source.size} bytes)"
            )
        return cls(tiles)

    def locate(self, wanted: Mapping[int, int]) -> Located:
        frames = {key: Frame(f, (self.tiles[f],)) for key, f in wanted.items()}
        return Located(frames, "TIFF directory (dual-personality preamble)", "", False)


@dataclass(frozen=True)
class ItemWalk:
    """The fragments' item headers read in order from ``first`` (the item after the Basic Offset Table).

    By range, the walk stops at the last frame wanted, one fragment per frame
    (as a level without any offset table must have), and hands each frame's
    item; when that frame lies past :data:`WALK_WHOLE_SHARE` of the level, the
    level is read whole, in large requests, keeping only the wanted frames.
    ``complete`` walks to the sequence's end (a downloaded file) and hands each
    frame's data, its fragments grouped by the Basic Offset Table (``table``)
    where a frame has several.
    """

    source: Source
    first: int
    n_frames: int
    table: bytes
    item: str
    complete: bool = False

    def locate(self, wanted: Mapping[int, int]) -> Located:
        last = self.n_frames - 1 if self.complete else max(wanted.values(), default=-1)
        whole = not self.complete and last + 1 >= WALK_WHOLE_SHARE * self.n_frames
        needed = set() if self.complete else set(wanted.values())
        walker = self.source.walker(self.first, whole)
        fragments = self._walk(walker, last, needed)
        if self.complete:
            frames = group_fragments(fragments, self.table, self.n_frames, self.item)
            return Located({key: frames[f] for key, f in wanted.items()}, "fragment walk", "", False)
        spans = {key: Frame(f, ((fragments[f][0] - 8, fragments[f][1] + 8),)) for key, f in wanted.items()}
        why = "no offset table and no TIFF directory"
        if whole:
            note = (
                f"{why}: frame {last + 1} of {self.n_frames} is needed, so the level was read whole "
                f"(in {walker.reads} reads, keeping only the covered frames)"
            )
            return Located(spans, "level read whole", note, True)
        note = f"{why}: walked {last + 1} of {self.n_frames} fragment headers in {walker.reads} reads"
        return Located(spans, "fragment walk", note, True)

    def _walk(self, walker: Walker, last: int, needed: Collection[int]) -> list[tuple[int, int]]:
        """(data offset, length) of each fragment, up to fragment ``last`` (to the sequence's end if complete)."""
        fragments: list[tuple[int, int]] = []
        pos = self.first
        while self.complete or len(fragments) <= last:
            head = walker.header(pos)
            if len(head) < 8:
                raise DecodeError(
                    f"{self.item}: the pixel data ends at byte {pos} after {len(fragments)} fragments, before its "
                    "sequence delimiter"
                )
            tag, length = head[:4], struct.unpack("<I", head[4:8])[0]
            if tag == SEQUENCE_END_TAG:
                if self.complete:
                    break
                raise DecodeError(
                    f"{self.item}: {len(fragments)} fragments for {self.n_frames} frames; expected one per frame"
                )
            if tag != ITEM_TAG or pos + 8 + length > self.source.size:
                raise DecodeError(
                    f"{self.item}: pixel data item at byte {pos} is not a complete item of {length} bytes "
                    f"in a {self.source.size} byte file; expected encapsulated frames"
                )
            if len(fragments) in needed:
                walker.keep(pos, 8 + length)
            fragments.append((pos + 8, length))
            pos += 8 + length
        return fragments


def group_fragments(fragments: list[tuple[int, int]], table: bytes, n_frames: int, item: str) -> list[Frame]:
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


def frame_index(source: Source, instance: Instance, complete: bool = False) -> FrameIndex:
    """The way to find ``instance``'s frames in ``source``, in the order of preference above; ``complete``:
    walk every item (a downloaded file)."""
    header, item = instance.header, instance.header.item
    element = source.read(instance.pixel_start, 12)
    if element[:4] != PIXEL_TAG:
        found = "nothing" if len(element) < 4 else "element {:04X},{:04X}".format(*struct.unpack("<HH", element[:4]))
        raise DecodeError(f"{item}: no pixel data; found {found} where it should be")
    if header.transfer_syntax in NATIVE_SYNTAXES:
        return _fixed_size(source, instance, element)
    head = source.read(instance.pixel_start + 12, 8)
    if head[:4] != ITEM_TAG:
        raise DecodeError(
            f"{item}: the pixel data does not start with an offset table item; expected encapsulated frames"
        )
    bot_length = struct.unpack("<I", head[4:8])[0]
    first = instance.pixel_start + 20 + bot_length
    if complete:
        table = source.read(instance.pixel_start + 20, bot_length)
        return ItemWalk(source, first, instance.n_frames, table, item, complete=True)
    ds = instance.ds
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        offsets = np.frombuffer(bytes(ds.ExtendedOffsetTable), "<u8")
        lengths = np.frombuffer(bytes(ds.ExtendedOffsetTableLengths), "<u8")
        _check_count(len(offsets), instance.n_frames, "Extended Offset Table", item)
        return ExtendedTable(first, offsets, lengths)
    if bot_length:
        offsets = np.frombuffer(source.read(instance.pixel_start + 20, bot_length), "<u4").astype(np.int64)
        _check_count(len(offsets), instance.n_frames, "Basic Offset Table", item)
        return BasicTable(source, first, offsets)
    if source.read(0, 4) in TIFF_MAGIC and (directory := TiffDirectory.find(source, instance)) is not None:
        return directory
    return ItemWalk(source, first, instance.n_frames, b"", item)


def _fixed_size(source: Source, instance: Instance, element: bytes) -> FixedSize:
    """Uncompressed frames after the pixel data element's header (8 bytes in implicit VR, else 12); checked whole."""
    header, n_frames = instance.header, instance.n_frames
    implicit = header.transfer_syntax == IMPLICIT_VR
    start = instance.pixel_start + (8 if implicit else 12)
    length = struct.unpack("<I", element[4:8] if implicit else element[8:12])[0]
    size = header.tile_px[0] * header.tile_px[1] * 3
    available = min(length, source.size - start)
    if available < size * n_frames:
        raise DecodeError(
            f"{header.item}: {available} bytes of pixel data; expected {size * n_frames} for {n_frames} frames"
        )
    return FixedSize(start, size)


def _check_count(found: int, n_frames: int, table: str, item: str) -> None:
    if found != n_frames:
        raise DecodeError(f"{item}: the {table} has {found} entries for {n_frames} frames; expected one per frame")


def locate(source: Source, instance: Instance, wanted: Mapping[int, int], complete: bool = False) -> Located:
    """Where the frames ``wanted`` ({key: frame number in this instance}) lie (see :func:`frame_index`)."""
    return frame_index(source, instance, complete).locate(wanted)


def locate_tiles(source: Source, instance: Instance, tiles: Collection[int]) -> Located:
    """Where the frames of grid ``tiles`` (row-major tile indices) lie, by tile; a sparse level's missing tiles
    absent."""
    frames = [Frame(i, ()) for i in range(instance.n_frames)]
    placed = laid_out(instance.header, frames, instance.positions())
    return locate(source, instance, {t: frame.index for t in tiles if (frame := placed.grid[t]) is not None})


class LocalFile:
    """A downloaded file as a :class:`Source`: read with ``pread``; a walk reads each item header alone."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self._size = path.stat().st_size

    def __enter__(self) -> LocalFile:
        self._fd = os.open(self.path, os.O_RDONLY)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)
        self._fd = -1

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int, ahead: int = 0) -> bytes:
        return os.pread(self._fd, max(0, length), offset)

    def walker(self, start: int, whole: bool) -> Walker:
        return _FileWalker(self)


class _FileWalker:
    """A walk over a file: each item header read alone (a seek and 8 bytes); nothing is kept."""

    def __init__(self, file: LocalFile) -> None:
        self.file = file
        self.reads = 0

    def header(self, pos: int) -> bytes:
        self.reads += 1
        return self.file.read(pos, 8)

    def keep(self, offset: int, length: int) -> None:
        return None
