"""A DICOM level in its bucket: its header, where the frames lie, and the frames, each read by range.

Nothing of the level is downloaded but the frames asked for. The header is
read as growing prefixes (:func:`slidestock.read.ranges.read_header`), where
the frames lie is found by :mod:`slidestock.read.frames` (offset tables, a
TIFF directory, or a walk over the items), and the frames are fetched together
(:meth:`RemoteObject.read_many`). Every chunk read for the header, a directory
or a walk is kept and reused: no byte is fetched twice.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from slidestock.errors import DecodeError
from slidestock.read.dicom import Frame, Instance, describe_level
from slidestock.read.frames import ITEM_TAG, SEQUENCE_END_TAG, Walker
from slidestock.read.objectstore import RangeClient
from slidestock.read.ranges import read_header

PIXEL_DATA_TAG = 0x7FE00010
WALK_FIRST_BYTES = 256 << 10
WALK_MAX_BYTES = 16 << 20


@dataclass
class RemoteObject:
    """One object read by range (a :class:`slidestock.read.frames.Source`); every chunk read for the header, a
    directory or a walk is kept and reused."""

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

    def walker(self, start: int, whole: bool) -> Walker:
        return _RangeWalker(self, start, whole)

    def read_many(self, ranges: Collection[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """Several ranges: those a kept chunk holds from it, the others in as few requests as touch.

        A range that starts inside a kept chunk (a frame just after the header) fetches only what the chunk lacks.
        """
        out = {r: hit for r in ranges if (hit := self.cached(*r)) is not None}
        heads = {r: self.tail(r[0])[: r[1]] for r in ranges if r not in out}
        rests = {r: (r[0] + len(head), r[1] - len(head)) for r, head in heads.items()}
        if rests:
            got = self.client.read_many(self.url, list(rests.values()))
            out.update({r: heads[r] + got.bodies[rest] for r, rest in rests.items()})
            self.fetched += got.bytes
            self.requests += got.requests
        return out


class _RangeWalker:
    """A walk by range: reads of growing size (from what the header read holds), each dropped once walked past but
    for the wanted frames' items, which the object keeps; so memory stays near one read plus those frames."""

    def __init__(self, obj: RemoteObject, start: int, whole: bool) -> None:
        self.obj = obj
        self.buffer, self.start = obj.tail(start), start
        self.chunk = WALK_MAX_BYTES if whole else WALK_FIRST_BYTES
        self.reads = 0

    def header(self, pos: int) -> bytes:
        if pos + 8 > self.start + len(self.buffer):  # the next item header lies past what was read: read on from it
            kept = self.buffer[pos - self.start :] if pos < self.start + len(self.buffer) else b""
            self.buffer, self.start = kept + self._fetch(pos + len(kept), self.chunk), pos
            self.chunk = min(2 * self.chunk, WALK_MAX_BYTES)
        return self.buffer[pos - self.start : pos - self.start + 8]

    def keep(self, offset: int, length: int) -> None:
        end = self.start + len(self.buffer)
        if offset + length > end:  # a wanted frame runs past the read: read on to its end
            self.buffer += self._fetch(end, offset + length - end + self.chunk)
        self.obj.keep(offset, self.buffer[offset - self.start : offset - self.start + length])

    def _fetch(self, offset: int, length: int) -> bytes:
        self.reads += 1
        return self.obj.fetch_once(offset, length)


def open_instance(obj: RemoteObject, item: str) -> Instance:
    """The instance's header up to the pixel data, read as growing prefixes of the object (kept for later reads)."""
    found = read_header(lambda offset, length: obj.read(offset, length), PIXEL_DATA_TAG, obj.url)
    if found is None or found.next_tag != PIXEL_DATA_TAG:
        read = obj.fetched
        raise DecodeError(f"{item}: no pixel data in the first {read} bytes of {obj.url}; expected a DICOM WSI level")
    header = describe_level(found.ds, Path(obj.url), item)
    return Instance(header, found.ds, found.end, obj.fetched)


def fetch_frames(obj: RemoteObject, frames: Mapping[int, Frame], items: bool, item: str) -> dict[int, bytes]:
    """Each frame's data by key; with ``items``, the spans' item headers checked and removed."""
    bodies = obj.read_many({frame.parts[0] for frame in frames.values()})
    out = {}
    for key, frame in frames.items():
        body = bodies[frame.parts[0]]
        if len(body) != frame.parts[0][1]:
            raise DecodeError(f"{item}: frame {frame.index + 1} is cut short: {len(body)} of {frame.parts[0][1]} bytes")
        out[key] = item_values(body, frame, item) if items else body
    return out


def item_values(span: bytes, frame: Frame, item: str) -> bytes:
    """The values of the fragment items that fill ``span`` (most often one), joined."""
    values, pos = [], 0
    while pos < len(span):
        tag, length = span[pos : pos + 4], struct.unpack("<I", span[pos + 4 : pos + 8])[0]
        if tag == SEQUENCE_END_TAG:
            break
        if tag != ITEM_TAG or pos + 8 + length > len(span):
            raise DecodeError(
                f"{item}: frame {frame.index + 1} is not whole fragment items at byte {frame.parts[0][0] + pos}; "
                "the offset table does not match the pixel data"
            )
        values.append(span[pos + 8 : pos + 8 + length])
        pos += 8 + length
    return b"".join(values)
