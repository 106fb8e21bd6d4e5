"""What a JPEG or JPEG 2000 codestream says about itself, read from its markers without decoding it."""

from __future__ import annotations


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
