"""Thumbnails of the output images: for the report page (as data URIs) and the contact sheet."""

from __future__ import annotations

import base64
import io
import itertools
from collections.abc import Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

THUMBNAIL_PX = 160
# Outputs larger than this many pixels are shrunk by libvips, which streams them; Pillow holds them whole.
LARGE_PX = 50_000_000


def thumbnail(path: Path, size_px: int = THUMBNAIL_PX) -> Image.Image:
    """``path`` shrunk to fit ``size_px`` (never enlarged), on white where it has alpha; an output of any size.

    Pillow for the usual small outputs (pyvips' cost per call would dominate); libvips for a large
    one (a one-level slide at a fine target can give hundreds of megapixels, past Pillow's limit).
    """
    try:
        with Image.open(path) as opened:
            large = opened.width * opened.height > LARGE_PX
            if not large:
                opened.draft("RGB", (size_px, size_px))  # a JPEG decodes at a reduced scale
                # Only an image with alpha is put on white: converting an RGB one to RGBA cost a third of the time.
                image = opened.convert("RGBA" if _has_alpha(opened) else "RGB")
    except Image.DecompressionBombError:
        large = True
    if large:
        import pyvips

        shrunk = pyvips.Image.thumbnail(str(path), size_px, height=size_px, size="down")
        image = Image.fromarray(shrunk.numpy()).convert("RGBA")
    image.thumbnail((size_px, size_px))
    if image.mode == "RGB":
        return image
    flat = Image.new("RGB", image.size, "white")
    flat.paste(image, mask=image.getchannel("A"))
    return flat


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def thumbnails(paths: Sequence[Path], threads: int = 1) -> dict[Path, Image.Image]:
    """Each image shrunk to fit ``THUMBNAIL_PX``, in memory: made once, on ``threads``, for the page and the sheet."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        made = list(pool.map(thumbnail, paths))
    return dict(zip(paths, made, strict=True))


def thumbnail_data_uri(path: Path, made: Mapping[Path, Image.Image] | None = None) -> str:
    """A small JPEG of ``path`` (its thumbnail in ``made`` when there) as a data URI: the page needs no other file."""
    return data_uri(made[path] if made and path in made else thumbnail(path))


def data_uri(image: Image.Image, fmt: str = "JPEG") -> str:
    """``image`` encoded (JPEG at quality 80, or PNG for sharp lines) as a data URI."""
    data = io.BytesIO()
    image.save(data, fmt, **({"quality": 80} if fmt == "JPEG" else {}))
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(data.getvalue()).decode("ascii")


def sheet_records(frame: pd.DataFrame, sheet_max: int | None) -> list[dict[Hashable, Any]]:
    """The rows the contact sheets show: finished slides whose image exists, in table order, at most ``sheet_max``."""
    done = frame[frame["status"] == "done"].to_dict("records")
    return list(itertools.islice((row for row in done if Path(str(row["output_path"])).is_file()), sheet_max))


def contact_sheet(
    paths: Sequence[Path],
    out: Path,
    across: int = 8,
    cell_px: int = 128,
    made: Mapping[Path, Image.Image] | None = None,
) -> None:
    """The images in one PNG grid of ``cell_px + 8`` px cells (for Snakemake's own report).

    From their thumbnails in ``made`` when there; one white cell when there are none.
    """
    if not paths:
        Image.new("RGB", (cell_px, cell_px), "white").save(out, "PNG")
        return
    cell = cell_px + 8
    across = min(across, len(paths))
    sheet = Image.new("RGB", (across * cell, -(-len(paths) // across) * cell), "white")
    for k, path in enumerate(paths):
        small = made[path].copy() if made and path in made else thumbnail(path, cell_px)
        small.thumbnail((cell_px, cell_px))
        left, top = (k % across) * cell, (k // across) * cell
        sheet.paste(small, (left + (cell - small.width) // 2, top + (cell - small.height) // 2))
    sheet.save(out, "PNG", compress_level=1)  # a large sheet: level 6 would take seconds for a few % less
