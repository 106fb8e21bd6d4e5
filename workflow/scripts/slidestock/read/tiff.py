"""Read the directory of a tiled TIFF (Aperio SVS) through byte ranges.

Only the bytes asked for are read: the header, the IFDs and the tag values of
the page that is wanted, then that page's tiles. Classic TIFF and BigTIFF,
either byte order.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

from slidestock.errors import DecodeError

ReadRange = Callable[[int, int], bytes]  # (offset, length) -> bytes

_TYPES = {1: ("B", 1), 2: ("s", 1), 3: ("H", 2), 4: ("I", 4), 5: ("II", 8), 7: ("B", 1), 16: ("Q", 8), 17: ("q", 8)}
_MPP = re.compile(r"\|\s*MPP\s*=\s*([0-9.]+)")


@dataclass(frozen=True)
class TiffPage:
    """One image file directory: its size, tiling, compression and where its tiles are."""

    index: int
    size_px: tuple[int, int]
    tile_px: tuple[int, int] | None
    compression: int
    photometric: int
    description: str
    subfiletype: int
    jpegtables: bytes | None
    spacing_um: float | None
    # Where the tile (or strip) offsets and byte counts are: read only for the page chosen.
    locations: tuple[tuple[int, int, bytes], tuple[int, int, bytes]] | None
    byteorder: str
    bigtiff: bool

    @property
    def kind(self) -> str:
        """``level`` for a pyramid level; ``label``, ``macro`` or ``thumbnail`` otherwise.

        Aperio's label and macro pages are stripped and say so in their description's last line;
        its thumbnail is stripped too. Every tiled page is a level: NewSubfileType 1 only says a
        page is a reduced-resolution copy, which libvips sets on each of its pyramid's pages.
        """
        last_line = self.description.lower().splitlines()[-1] if self.description.strip() else ""
        if last_line.startswith("macro"):
            return "macro"
        if last_line.startswith("label"):
            return "label"
        if self.tile_px is None:
            return "thumbnail"
        return "level"


class _Reader:
    """Header parsing state: byte order and offset size."""

    def __init__(self, read: ReadRange, item: str, layout: tuple[str, bool] | None = None) -> None:
        self.read = read
        self.item = item
        if layout is not None:
            self.order, self.big = layout
            self.first_ifd = 0
            return
        head = read(0, 16)
        if head[:2] not in (b"II", b"MM"):
            raise DecodeError(f"{item}: not a TIFF file (starts with {head[:4]!r})")
        self.order = "<" if head[:2] == b"II" else ">"
        magic = struct.unpack(self.order + "H", head[2:4])[0]
        if magic == 42:
            self.big = False
            self.first_ifd = struct.unpack(self.order + "I", head[4:8])[0]
        elif magic == 43:
            self.big = True
            self.first_ifd = struct.unpack(self.order + "Q", head[8:16])[0]
        else:
            raise DecodeError(f"{item}: TIFF magic {magic}; expected 42 (TIFF) or 43 (BigTIFF)")

    def ifd(self, offset: int) -> tuple[dict[int, tuple[int, int, bytes]], int]:
        """Tags of the IFD at ``offset`` as (type, count, raw value or inline bytes), and the next offset."""
        count_size, entry_size, next_size = (8, 20, 8) if self.big else (2, 12, 4)
        count = struct.unpack(self.order + ("Q" if self.big else "H"), self.read(offset, count_size))[0]
        if count > 10_000:
            raise DecodeError(f"{self.item}: IFD at {offset} claims {count} tags; expected a real TIFF directory")
        body = self.read(offset + count_size, count * entry_size + next_size)
        tags = {}
        for i in range(count):
            entry = body[i * entry_size : (i + 1) * entry_size]
            if self.big:
                tag, typ, n = struct.unpack(self.order + "HHQ", entry[:12])
                tags[tag] = (typ, n, entry[12:20])
            else:
                tag, typ, n = struct.unpack(self.order + "HHI", entry[:8])
                tags[tag] = (typ, n, entry[8:12])
        next_offset = struct.unpack(self.order + ("Q" if self.big else "I"), body[-next_size:])[0]
        return tags, next_offset

    def values(self, entry: tuple[int, int, bytes]) -> tuple[int | float | bytes, ...]:
        typ, count, inline = entry
        if typ not in _TYPES:
            raise DecodeError(f"{self.item}: TIFF field type {typ} is not supported")
        code, size = _TYPES[typ]
        total = size * count
        room = 8 if self.big else 4
        if total <= room:
            data = inline[:total]
        else:
            offset = struct.unpack(self.order + ("Q" if self.big else "I"), inline[:room])[0]
            data = self.read(offset, total)
        if typ in (2, 7):
            return (data,)
        if typ == 5:
            pairs = struct.unpack(self.order + "I" * (2 * count), data)
            return tuple(pairs[i] / pairs[i + 1] if pairs[i + 1] else 0.0 for i in range(0, len(pairs), 2))
        return tuple(struct.unpack(self.order + code * count, data))


def _spacing_um(description: str, x_resolution: float | None, unit: int) -> float | None:
    """µm per pixel: Aperio's ``MPP = `` in the description, else the TIFF resolution tags."""
    match = _MPP.search(description)
    if match:
        return float(match.group(1))
    if x_resolution and unit in (2, 3):
        return (25400.0 if unit == 2 else 10000.0) / x_resolution
    return None


def read_pages(read: ReadRange, item: str = "tiff", max_pages: int = 64) -> list[TiffPage]:
    """Every page's directory, reading only headers and tag values (not tile locations)."""
    reader = _Reader(read, item)
    pages: list[TiffPage] = []
    offset = reader.first_ifd
    seen = set()
    while offset and len(pages) < max_pages:
        if offset in seen:
            raise DecodeError(f"{item}: IFD chain loops at offset {offset}")
        seen.add(offset)
        tags, offset = reader.ifd(offset)
        pages.append(_page(reader, tags, len(pages)))
    if not pages:
        raise DecodeError(f"{item}: no image directories")
    return pages


def _page(reader: _Reader, tags: dict[int, tuple[int, int, bytes]], index: int) -> TiffPage:
    def number(tag: int, default: int = 0) -> float:
        return float(reader.values(tags[tag])[0]) if tag in tags else default

    description = ""
    if 270 in tags:
        raw = reader.values(tags[270])[0]
        assert isinstance(raw, bytes)
        description = raw.rstrip(b"\0").decode("latin-1")
    tiled = 322 in tags and 324 in tags
    offsets_tag, counts_tag = (324, 325) if tiled else (273, 279)
    jpegtables = reader.values(tags[347])[0] if 347 in tags else None
    x_res = number(282) if 282 in tags else None
    return TiffPage(
        index=index,
        size_px=(int(number(256)), int(number(257))),
        tile_px=(int(number(322)), int(number(323))) if tiled else None,
        compression=int(number(259, 1)),
        photometric=int(number(262, 2)),
        description=description,
        subfiletype=int(number(254)),
        jpegtables=jpegtables if isinstance(jpegtables, bytes) else None,
        spacing_um=_spacing_um(description, x_res, int(number(296, 2))),
        locations=(tags[offsets_tag], tags[counts_tag]) if offsets_tag in tags and counts_tag in tags else None,
        byteorder=reader.order,
        bigtiff=reader.big,
    )


def tile_locations(read: ReadRange, page: TiffPage, item: str = "tiff") -> list[tuple[int, int]]:
    """(offset, byte count) of each tile of ``page``, row by row."""
    if page.locations is None:
        raise DecodeError(f"{item}: page {page.index} has no tile or strip offsets")
    reader = _Reader(read, item, layout=(page.byteorder, page.bigtiff))
    offsets = reader.values(page.locations[0])
    counts = reader.values(page.locations[1])
    if len(offsets) != len(counts):
        raise DecodeError(f"{item}: page {page.index} has {len(offsets)} offsets and {len(counts)} byte counts")
    return [(int(o), int(c)) for o, c in zip(offsets, counts, strict=True)]
