"""A frame's codestream: what a JPEG or JPEG 2000 stream says about itself, read from its markers without
decoding it, and a DICOM frame decoded (libjpeg-turbo and OpenJPEG through Pillow, or uncompressed)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from slidestock.errors import DecodeError
from slidestock.read.dicom import BACKGROUND, JPEG2000_SYNTAXES, JPEG_SYNTAXES, Frame, LevelHeader


def j2k_resolution_levels(codestream: bytes) -> int:
    """The number of wavelet decompositions a JPEG 2000 codestream's COD marker declares (0 if unreadable).

    Each one allows decoding at half the size of the one before.
    """
    at = 2 if codestream[:2] == b"\xff\x4f" else len(codestream)
    while at + 4 <= len(codestream) and codestream[at] == 0xFF:
        marker, length = codestream[at + 1], int.from_bytes(codestream[at + 2 : at + 4], "big")
        if marker == 0x52 and at + 9 < len(codestream):  # COD: Lcod, Scod, SGcod (4 bytes), then the levels
            return codestream[at + 9]
        if marker == 0x90:  # the first tile-part: the main header is over
            break
        at += 2 + length
    return 0


def jpeg_colour_model(data: bytes) -> str:
    """``YCbCr`` or ``RGB``: what a JPEG's own markers say its three components hold, as libjpeg reads them.

    A JFIF (APP0) stream is YCbCr; an Adobe (APP14) marker says so by its
    transform flag; otherwise components named R, G, B are RGB and any others YCbCr.
    """
    at = 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker, length = data[at + 1], int.from_bytes(data[at + 2 : at + 4], "big")
        body = data[at + 4 : at + 2 + length]
        if marker == 0xE0 and body.startswith(b"JFIF\0"):
            return "YCbCr"
        if marker == 0xEE and body.startswith(b"Adobe") and len(body) >= 12:
            return "YCbCr" if body[11] else "RGB"
        if marker in (0xC0, 0xC1, 0xC2) and len(body) >= 15:
            ids = bytes(body[6 + 3 * i] for i in range(3))
            return "RGB" if ids == b"RGB" else "YCbCr"
        at += 2 + length
    return "YCbCr"


def decode_frame_data(
    data: bytes, frame: Frame, header: LevelHeader, decode: int, notes: list[tuple[int, int, int]] | None = None
) -> np.ndarray:
    """One frame's bytes as a (rows, columns, 3) array at 1/``decode`` of the tile size.

    A frame stored smaller than the tile (some converters write edge frames at
    the size of the pixels they hold; DICOM asks for whole tiles) is placed at
    its tile's corner and the rest filled as background, with a note in ``notes``.
    """
    return decode_codestream(data, frame.index, header.item, header.transfer_syntax, header.tile_px, decode, notes)


def decode_codestream(
    data: bytes,
    index: int,
    item: str,
    syntax: str,
    tile_px: tuple[int, int],
    decode: int = 1,
    notes: list[tuple[int, int, int]] | None = None,
) -> np.ndarray:
    """Frame ``index``'s bytes, of a level of this transfer syntax and tile size, as :func:`decode_frame_data`
    says; what a reader that knows no header (slidestock.train) decodes with."""
    expected = (math.ceil(tile_px[1] / decode), math.ceil(tile_px[0] / decode), 3)
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
            f"{item}: frame {index + 1} cannot be decoded ({syntax}): {err} (the file is malformed)"
        ) from err
    if array.shape == expected:
        return array
    if (
        notes is not None
        and array.ndim == 3
        and array.shape[2] == 3
        and all(0 < got <= want for got, want in zip(array.shape[:2], expected[:2], strict=True))
    ):
        notes.append((index + 1, array.shape[1] * decode, array.shape[0] * decode))
        tile = np.full(expected, BACKGROUND, dtype=np.uint8)
        tile[: array.shape[0], : array.shape[1]] = array
        return tile
    raise DecodeError(
        f"{item}: frame {index + 1} decodes to {_describe(array.shape)}; expected {_describe(expected)} "
        "(the file is malformed)"
    )


def _describe(shape: Sequence[int]) -> str:
    bands = shape[2] if len(shape) > 2 else 1
    return f"{shape[1]} x {shape[0]} px with {bands} samples per pixel"
