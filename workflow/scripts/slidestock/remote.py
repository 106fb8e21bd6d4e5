"""A DICOM level in its bucket: its header, where the frames lie, and the frames, each read by range.

Nothing of the level is downloaded but the frames asked for. Where the frames
lie comes, in this order of preference, from the Extended Offset Table, the
Basic Offset Table, the TIFF directory of a dual-personality file (IDC's
converted slides have no offset table, but their 128-byte preamble starts a
TIFF whose directory holds every tile's offset and length), or, lacking all
three, a walk over the fragments' item headers with reads of growing size,
up to the last frame needed; when that would read nearly all of the level, the
level is read whole, in large requests, keeping only the covered frames. The
record says which.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.filereader import read_partial

from slidestock.dicom import (
    IMPLICIT_VR,
    ITEM,
    NATIVE_SYNTAXES,
    PIXEL_DATA,
    SEQUENCE_END,
    Frame,
    LevelHeader,
    describe_level,
    laid_out,
    sparse_positions,
)
from slidestock.errors import DecodeError
from slidestock.objectstore import RangeClient
from slidestock.tiff import read_pages, tile_locations

HEADER_PREFIX_BYTES = (16 << 10, 256 << 10, 2 << 20, 16 << 20)
DIRECTORY_AHEAD_BYTES = 64 << 10
WALK_FIRST_BYTES = 256 << 10
WALK_MAX_BYTES = 16 << 20
# Walking to a frame past this share of the level reads nearly all of it: read it whole, in WALK_MAX_BYTES requests.
WALK_WHOLE_SHARE = 0.8
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PIXEL_TAG = struct.pack("<HH", *PIXEL_DATA)


@dataclass
class RemoteObject:
    """One object read by range; every chunk read for the header, a directory or a walk is kept and reused."""

    client: RangeClient
    url: str
    size: int
    fetched: int = 0
    requests: int = 0
    chunks: dict[int, bytes] = field(default_factory=dict, repr=False)

    def cached(self, offset: int, length: int) -> bytes | None:
        exact = self.chunks.get(offset)  # a frame a walk kept: one lookup, however many it kept
        if exact is not None and len(exact) >= length:
            return exact[:length]
        for start, data in self.chunks.items():
            if start <= offset and offset + length <= start + len(data):
                return data[offset - start : offset - start + length]
        return None

    def read(self, offset: int, length: int, ahead: int = 0) -> bytes:
        """Bytes at ``offset``, from the kept chunks, fetching only what they lack (at least ``ahead`` bytes).

        A read that starts inside a kept chunk and runs past its end extends that
        chunk, so growing prefixes and directory reads never fetch a byte twice.
        """
        length = max(0, min(length, self.size - offset))
        for start, data in self.chunks.items():
            end = start + len(data)
            if start <= offset <= end:
                if offset + length > end:
                    data += self.fetch_once(end, max(offset + length - end, ahead))
                    self.chunks[start] = data
                return data[offset - start : offset - start + length]
        self.chunks[offset] = self.fetch_once(offset, max(length, ahead))
        return self.chunks[offset][:length]

    def tail(self, offset: int) -> bytes:
        """The kept bytes from ``offset`` to the end of the chunk that holds it (none if no chunk does)."""
        for start, data in self.chunks.items():
            if start <= offset < start + len(data):
                return data[offset - start :]
        return b""

    def keep(self, offset: int, data: bytes) -> None:
        """Keep ``data`` (the bytes at ``offset``, already fetched) to serve later reads."""
        self.chunks[offset] = data

    def fetch_once(self, offset: int, length: int) -> bytes:
        """Bytes at ``offset``, fetched and counted but not kept (a walk keeps what it needs with :meth:`keep`)."""
        data = self.client.read(self.url, offset, max(0, min(length, self.size - offset)))
        self.fetched += len(data)
        self.requests += 1
        return data

    def read_many(self, ranges: Collection[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """Several ranges: those a kept chunk holds from it, the others in as few requests as touch.

        A range that starts inside a kept chunk (a frame just after the header) fetches only what the chunk lacks.
        """
        out = {r: hit for r in ranges if (hit := self.cached(*r)) is not None}
        heads = {r: self.tail(r[0])[: r[1]] for r in ranges if r not in out}
        rests = {r: (r[0] + len(head), r[1] - len(head)) for r, head in heads.items()}
        if rests:
            got, fetched, requests = self.client.read_many(self.url, list(rests.values()))
            out.update({r: heads[r] + got[rest] for r, rest in rests.items()})
            self.fetched += fetched
            self.requests += requests
        return out


@dataclass(frozen=True)
class RemoteLevel:
    """A level's header, its dataset and where its pixel data starts in the object."""

    header: LevelHeader
    ds: pydicom.Dataset
    pixel_start: int
    header_bytes: int


@dataclass(frozen=True)
class Located:
    """Where the frames asked for lie: ``frames`` by grid index (a sparse level's missing tiles absent).

    ``items`` is true when each span starts at an item header (the frame's data
    follows it), false when spans are the data alone (a TIFF directory, native pixels).
    """

    frames: Mapping[int, Frame]
    method: str
    note: str
    items: bool


def read_level_header(obj: RemoteObject, item: str) -> RemoteLevel:
    """The header up to the pixel data, read as growing prefixes of the object."""
    data = b""
    for length in HEADER_PREFIX_BYTES:
        data = obj.read(0, length)
        parsed = _parse_to_pixels(data)
        if parsed is not None:
            ds, pixel_start = parsed
            header = describe_level(ds, Path(obj.url), item)
            return RemoteLevel(header, ds, pixel_start, obj.fetched)
        if len(data) >= obj.size:
            break
    raise DecodeError(f"{item}: no pixel data in the first {len(data)} bytes of {obj.url}; expected a DICOM WSI level")


def _parse_to_pixels(data: bytes) -> tuple[pydicom.Dataset, int] | None:
    """The dataset before the pixel data and where the pixel data element starts, or None if ``data`` ends first."""
    stream = io.BytesIO(data)
    try:
        ds = read_partial(stream, stop_when=lambda tag, vr, length: tag >= 0x7FE00010)
    except (pydicom.errors.InvalidDicomError, EOFError, ValueError, OSError, struct.error):
        return None
    start = stream.tell()
    if data[start : start + 4] != _PIXEL_TAG or len(data) < start + 20:
        return None
    return ds, start


def locate_frames(obj: RemoteObject, level: RemoteLevel, tiles: Collection[int]) -> Located:
    """Where the frames of grid ``tiles`` (row-major tile indices) lie in the object, reading as little as can be."""
    n_frames = int(level.ds.get("NumberOfFrames", 1))
    # Which frame holds each tile: the same index for TILED_FULL, the plane positions for TILED_SPARSE.
    placed = laid_out(level.header, [Frame(i, ()) for i in range(n_frames)], _positions(level, n_frames))
    return locate_frame_numbers(obj, level, {t: frame.index for t in tiles if (frame := placed.grid[t]) is not None})


def locate_frame_numbers(obj: RemoteObject, level: RemoteLevel, wanted: Mapping[int, int]) -> Located:
    """Where the object's frames ``wanted`` (tile -> frame number in this object) lie (see :func:`locate_frames`)."""
    header, ds, item = level.header, level.ds, level.header.item
    n_frames = int(ds.get("NumberOfFrames", 1))
    element = obj.read(level.pixel_start, 20)
    if header.transfer_syntax in NATIVE_SYNTAXES:
        size = header.tile_px[0] * header.tile_px[1] * 3
        data_start = level.pixel_start + (8 if header.transfer_syntax == IMPLICIT_VR else 12)
        frames = {t: Frame(f, ((data_start + f * size, size),)) for t, f in wanted.items()}
        return Located(frames, "uncompressed: fixed-size frames", "", False)
    tag, bot_length = struct.unpack("<HH", element[12:16]), struct.unpack("<I", element[16:20])[0]
    if tag != ITEM:
        raise DecodeError(
            f"{item}: the pixel data does not start with an offset table item; expected encapsulated frames"
        )
    first = level.pixel_start + 20 + bot_length
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        offsets = np.frombuffer(bytes(ds.ExtendedOffsetTable), "<u8")
        lengths = np.frombuffer(bytes(ds.ExtendedOffsetTableLengths), "<u8")
        _check_count(len(offsets), n_frames, "Extended Offset Table", item)
        spans = {t: Frame(f, ((first + int(offsets[f]), 8 + int(lengths[f])),)) for t, f in wanted.items()}
        return Located(spans, "Extended Offset Table", "", True)
    if bot_length:
        table = np.frombuffer(obj.read(level.pixel_start + 20, bot_length), "<u4").astype(np.int64)
        _check_count(len(table), n_frames, "Basic Offset Table", item)
        ends = np.append(table[1:], -1)
        if n_frames - 1 in wanted.values():  # the last frame ends where its item says
            last_item = obj.read(first + int(table[-1]), 8)
            ends[-1] = int(table[-1]) + 8 + struct.unpack("<I", last_item[4:8])[0]
        frames = {t: Frame(f, ((first + int(table[f]), int(ends[f] - table[f])),)) for t, f in wanted.items()}
        return Located(frames, "Basic Offset Table", "", True)
    head = obj.read(0, 16)
    if head[:4] in _TIFF_MAGIC:
        located = _from_tiff(obj, header, wanted, n_frames)
        if located is not None:
            return Located(located, "TIFF directory (dual-personality preamble)", "", False)
    return _walk(obj, level, first, wanted, n_frames)


def _positions(level: RemoteLevel, n_frames: int) -> list[tuple[int, int]] | None:
    if level.header.organization != "TILED_SPARSE":
        return None
    return sparse_positions(level.ds, n_frames, level.header.tile_px, level.header.item)


def _check_count(found: int, n_frames: int, table: str, item: str) -> None:
    if found != n_frames:
        raise DecodeError(f"{item}: the {table} has {found} entries for {n_frames} frames; expected one per frame")


def _from_tiff(
    obj: RemoteObject, header: LevelHeader, wanted: Mapping[int, int], n_frames: int
) -> dict[int, Frame] | None:
    """The frames' data from the TIFF directory whose page has the level's size and tiling; None if none has."""

    def read(offset: int, length: int) -> bytes:  # a directory and its values lie together: read ahead
        return obj.read(offset, length, ahead=DIRECTORY_AHEAD_BYTES)

    pages = read_pages(read, header.item)
    page = next((p for p in pages if p.size_px == header.size_px and p.tile_px == header.tile_px), None)
    if page is None:
        return None
    tiles = tile_locations(read, page, header.item)
    if len(tiles) != n_frames:
        return None
    frames = {t: Frame(f, (tiles[f],)) for t, f in wanted.items()}
    if any(offset + length > obj.size for frame in frames.values() for offset, length in frame.parts):
        raise DecodeError(f"{header.item}: the TIFF directory points past the end of the object ({obj.size} bytes)")
    return frames


def _walk(obj: RemoteObject, level: RemoteLevel, first: int, wanted: Mapping[int, int], n_frames: int) -> Located:
    """The fragments' item headers read in order, up to the last frame wanted, with reads of growing size.

    One fragment per frame, as a level without any offset table must have. The
    bytes read are read once: the wanted frames' items are kept (the object
    serves them from memory after), the rest dropped as the walk goes on, so
    memory stays near one read (at most ``WALK_MAX_BYTES``) plus those frames.
    """
    item = level.header.item
    last = max(wanted.values(), default=-1)
    whole = last + 1 >= WALK_WHOLE_SHARE * n_frames
    needed = set(wanted.values())
    requests = obj.requests
    spans: list[tuple[int, int]] = []
    buffer, start = obj.tail(first), first  # the bytes read last, from ``start`` (first: what the header read had)
    pos, chunk = first, WALK_MAX_BYTES if whole else WALK_FIRST_BYTES
    while len(spans) <= last:
        if pos + 8 > start + len(buffer):  # the next item header lies past what was read: read on from it
            kept = buffer[pos - start :] if pos < start + len(buffer) else b""
            buffer, start = kept + obj.fetch_once(pos + len(kept), chunk), pos
            chunk = min(2 * chunk, WALK_MAX_BYTES)
            if len(buffer) < 8:
                raise DecodeError(f"{item}: the pixel data ends at byte {pos} after {len(spans)} of {n_frames} frames")
        tag = struct.unpack("<HH", buffer[pos - start : pos - start + 4])
        length = struct.unpack("<I", buffer[pos - start + 4 : pos - start + 8])[0]
        if tag == SEQUENCE_END:
            raise DecodeError(f"{item}: {len(spans)} fragments for {n_frames} frames; expected one per frame")
        if tag != ITEM:
            raise DecodeError(f"{item}: no fragment item at byte {pos}; expected encapsulated frames")
        if len(spans) in needed:
            if pos + 8 + length > start + len(buffer):  # a wanted frame runs past the read: read on to its end
                buffer += obj.fetch_once(start + len(buffer), pos + 8 + length - start - len(buffer) + chunk)
            obj.keep(pos, buffer[pos - start : pos - start + 8 + length])
        spans.append((pos, 8 + length))
        pos += 8 + length
    frames = {t: Frame(f, (spans[f],)) for t, f in wanted.items()}
    reads = obj.requests - requests
    why = "no offset table and no TIFF directory"
    if whole:
        note = (
            f"{why}: frame {last + 1} of {n_frames} is needed, so the level was read whole "
            f"(in {reads} reads of up to {WALK_MAX_BYTES >> 20} MB, keeping only the covered frames)"
        )
        return Located(frames, "level read whole", note, True)
    note = f"{why}: walked {last + 1} of {n_frames} fragment headers in {reads} reads"
    return Located(frames, "fragment walk", note, True)


def fetch_frames(obj: RemoteObject, frames: Mapping[int, Frame], items: bool, item: str) -> dict[int, bytes]:
    """Each frame's data by tile index; with ``items``, the spans' item headers checked and removed."""
    spans = {frame.parts[0] for frame in frames.values()}
    bodies = obj.read_many(spans)
    out = {}
    for tile, frame in frames.items():
        body = bodies[frame.parts[0]]
        if len(body) != frame.parts[0][1]:
            raise DecodeError(f"{item}: frame {frame.index + 1} is cut short: {len(body)} of {frame.parts[0][1]} bytes")
        out[tile] = _item_values(body, frame, item) if items else body
    return out


def _item_values(span: bytes, frame: Frame, item: str) -> bytes:
    """The values of the fragment items that fill ``span`` (most often one), joined."""
    values, pos = [], 0
    while pos < len(span):
        tag, length = struct.unpack("<HH", span[pos : pos + 4]), struct.unpack("<I", span[pos + 4 : pos + 8])[0]
        if tag == SEQUENCE_END:
            break
        if tag != ITEM or pos + 8 + length > len(span):
            raise DecodeError(
                f"{item}: frame {frame.index + 1} is not whole fragment items at byte {frame.parts[0][0] + pos}; "
                "the offset table does not match the pixel data"
            )
        values.append(span[pos + 8 : pos + 8 + length])
        pos += 8 + length
    return b"".join(values)
