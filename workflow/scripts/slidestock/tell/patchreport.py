"""The report's patches section: counts per slide, bytes fetched against the level and the series, a sample.

The sample shows, for a few slides, the low-resolution image with every
patch's place drawn on it, beside some of its patches.
"""

from __future__ import annotations

import html
import io
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from slidestock.image.thumbnails import data_uri
from slidestock.records import PatchRecord, PatchRow

SAMPLE_SLIDES = 6
PATCHES_SHOWN = 8
OVERVIEW_PX = 320


def patch_totals(records: Sequence[PatchRecord]) -> dict[str, int]:
    """Slides done and failed, patches, bytes fetched, and the bytes of the patch levels and of the series."""
    done = [r for r in records if r["status"] == "done"]
    return {
        "slides": len(records),
        "done": len(done),
        "failed": len(records) - len(done),
        "patches": sum(len(r["patches"]) for r in done),
        "bytes_fetched": sum(int(r.get("bytes_fetched") or 0) for r in done),
        "level_bytes": sum(int(r["level"].get("instance_bytes") or 0) for r in done),
        "series_bytes": sum(int(r["level"].get("series_size_bytes") or 0) for r in done),
    }


def patches_html(records: Sequence[PatchRecord], folder: Path, slide_images: Mapping[str, Path]) -> str:
    """The section; ``folder`` holds the patches, ``slide_images`` each slide's low-resolution image."""
    totals = patch_totals(records)
    level_share = totals["bytes_fetched"] / totals["level_bytes"] if totals["level_bytes"] else 0.0
    series_share = totals["bytes_fetched"] / totals["series_bytes"] if totals["series_bytes"] else 0.0
    rows = "".join(_slide_row(r) for r in records)
    sample = [r for r in records if r["status"] == "done" and r["patches"]][:SAMPLE_SLIDES]
    figures = "".join(_sample_figure(r, folder, slide_images.get(r["slide_id"])) for r in sample)
    return (
        '<h2 id="patches-title">Patches</h2>'
        f'<p id="patches-summary">{totals["patches"]:,} patches from {totals["done"]} of {totals["slides"]} slides '
        f"({totals['failed']} failed). Fetched {totals['bytes_fetched'] / 1e6:,.2f} MB by range: "
        f"{100 * level_share:.2f} % of the patch levels' {totals['level_bytes'] / 1e6:,.2f} MB and "
        f"{100 * series_share:.2f} % of the whole series' {totals['series_bytes'] / 1e6:,.2f} MB.</p>"
        '<table id="patches"><thead><tr><th>slide_id</th><th>status</th><th>patches</th><th>frames located by</th>'
        "<th>bytes fetched</th><th>level bytes</th><th>% of level</th><th>note or error</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        f'<div class="sheet" id="patch-sample">{figures}</div>'
    )


def _slide_row(record: PatchRecord) -> str:
    level_bytes = int(record["level"].get("instance_bytes") or 0)
    fetched = int(record.get("bytes_fetched") or 0)
    share = f"{100 * fetched / level_bytes:.2f}" if level_bytes and record["status"] == "done" else ""
    said = record.get("error") or record.get("note") or (record.get("frames") or {}).get("note") or ""
    cells = [
        record["slide_id"],
        record["status"],
        len(record.get("patches", [])),
        (record.get("frames") or {}).get("located_by", ""),
        f"{fetched:,}",
        f"{level_bytes:,}",
        share,
        said,
    ]
    css = ' class="failed"' if record["status"] != "done" else ""
    return f"<tr{css}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"


def _sample_figure(record: PatchRecord, folder: Path, image_path: Path | None) -> str:
    """The slide's image with its patches' places outlined, then a few of its patches."""
    parts = []
    if image_path is not None and image_path.is_file():
        parts.append(_img(_outlined(record, image_path), record["slide_id"]))
    pixels = [row for row in record["patches"] if row["path"] or row["shard"]]
    for row in pixels[:PATCHES_SHOWN]:
        with Image.open(_patch_file(folder, row)) as patch:
            small = patch.convert("RGB")
        small.thumbnail((96, 96))
        parts.append(_img(small, row["patch_id"]))
    total = len(record["patches"])
    shown = f"{total} patches, the first {PATCHES_SHOWN} shown" if total > PATCHES_SHOWN else f"{total} patches"
    if not pixels:  # patches.format: coordinates
        shown = f"{total} patches placed (coordinates only, no pixels fetched)"
    caption = f"{html.escape(record['slide_id'])}: {shown}, each outlined on the slide"
    return f"<figure>{''.join(parts)}<figcaption>{caption}</figcaption></figure>"


def _patch_file(folder: Path, row: PatchRow) -> Path | io.BytesIO:
    """A patch's PNG: its file, or its member of a webdataset shard."""
    if not row.get("shard"):
        return folder / str(row["path"])
    with tarfile.open(folder / str(row["shard"])) as tar:
        member = tar.extractfile(f"{row['patch_id']}.png")
        data: bytes = member.read() if member is not None else b""
    return io.BytesIO(data)


def _outlined(record: PatchRecord, image_path: Path) -> Image.Image:
    with Image.open(image_path) as opened:
        image = opened.convert("RGB")
    scale = min(2.0, OVERVIEW_PX / max(image.size))  # small slides drawn up to twice their size
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    level_w, level_h = record["level"]["size_px"]
    fx, fy = image.width / level_w, image.height / level_h
    draw = ImageDraw.Draw(image)
    for row in record["patches"]:
        span_x = row["size_px"] * row["mpp"] / row["level_spacing_um"]
        x, y = row["x_level_px"], row["y_level_px"]
        draw.rectangle([x * fx, y * fy, (x + span_x) * fx, (y + span_x) * fy], outline=(0, 90, 255))
    return image


def _img(image: Image.Image, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="{data_uri(image, "PNG")}">'
