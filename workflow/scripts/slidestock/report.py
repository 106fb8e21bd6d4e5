"""The run report: ``slides.csv`` (one row a slide) and a self-contained ``index.html``."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyvips

REPORT_COLUMNS = (
    "slide_id",
    "collection_id",
    "PatientID",
    "SeriesInstanceUID",
    "status",
    "error",
    "level_columns",
    "level_rows",
    "level_spacing_um",
    "level_reason",
    "scale",
    "bytes_fetched",
    "series_size_bytes",
    "fraction_fetched",
    "output_columns",
    "output_rows",
    "output_spacing_um",
    "output_path",
    "sha256",
)
THUMBNAIL_PX = 192


def report_row(record: Mapping[str, Any], slide: Mapping[Hashable, Any]) -> dict[str, Any]:
    """Flatten one slide's provenance record (and its cohort row) into a report row."""
    level = record.get("level") or {}
    output = record.get("output") or {}
    size = level.get("size_px") or [None, None]
    out_size = output.get("size_px") or [None, None]
    series_bytes = int(record.get("series_size_bytes") or 0)
    fetched = int(record.get("bytes_fetched") or 0)
    spacing = (level.get("header_spacing_um") or [level.get("index_spacing_um")])[0]
    return {
        "slide_id": record["slide_id"],
        "collection_id": slide.get("collection_id", ""),
        "PatientID": slide.get("PatientID", ""),
        "SeriesInstanceUID": record["source"]["SeriesInstanceUID"],
        "status": record["status"],
        "error": record.get("error") or "",
        "level_columns": size[0],
        "level_rows": size[1],
        "level_spacing_um": None if spacing is None else round(float(spacing), 6),
        "level_reason": level.get("reason", ""),
        "scale": None if not output else round(out_size[0] / size[0], 6),
        "bytes_fetched": fetched,
        "series_size_bytes": series_bytes,
        "fraction_fetched": round(fetched / series_bytes, 6) if series_bytes else None,
        "output_columns": out_size[0],
        "output_rows": out_size[1],
        "output_spacing_um": None if not output else round(float(output["spacing_um"][0]), 6),
        "output_path": output.get("path", ""),
        "sha256": output.get("sha256", ""),
    }


def report_frame(json_paths: Iterable[Path], cohort: pd.DataFrame) -> pd.DataFrame:
    """One row per provenance record, sorted by slide id."""
    slides = {row["slide_id"]: row for row in cohort.to_dict("records")}
    rows = []
    for path in json_paths:
        record = json.loads(Path(path).read_text())
        rows.append(report_row(record, slides.get(record["slide_id"], {})))
    frame = pd.DataFrame(rows, columns=list(REPORT_COLUMNS))
    return frame.sort_values("slide_id").reset_index(drop=True)


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, lineterminator="\n")


def summary(frame: pd.DataFrame) -> dict[str, Any]:
    """Counts and byte totals for the report header and the end-of-run line."""
    done = frame[frame["status"] == "done"]
    fetched = int(frame["bytes_fetched"].sum())
    whole = int(frame["series_size_bytes"].sum())
    return {
        "slides": len(frame),
        "done": len(done),
        "failed": int((frame["status"] != "done").sum()),
        "bytes_fetched": fetched,
        "series_bytes": whole,
        "fraction_fetched": fetched / whole if whole else 0.0,
    }


def thumbnail_data_uri(path: Path, size_px: int = THUMBNAIL_PX) -> str:
    """A small PNG of ``path`` as a data URI, so the page needs no other file."""
    thumb = pyvips.Image.thumbnail(str(path), size_px, height=size_px)
    data = thumb.pngsave_buffer(compression=6, keep="none")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return html.escape(str(value))


def _mb(n_bytes: float) -> str:
    return f"{n_bytes / 1e6:,.2f} MB"


def render_html(frame: pd.DataFrame, meta: Mapping[str, Any], columns: Sequence[str] = REPORT_COLUMNS) -> str:
    """The report page: summary, then a table with a thumbnail per finished slide."""
    stats = summary(frame)
    rows = []
    for record in frame.to_dict("records"):
        image = record["output_path"]
        thumb = (
            f'<img alt="{_cell(record["slide_id"])}" src="{thumbnail_data_uri(Path(image))}">'
            if record["status"] == "done" and image and Path(image).exists()
            else ""
        )
        cells = "".join(f"<td>{_cell(record[c])}</td>" for c in columns if c != "output_path")
        rows.append(f'<tr class="{_cell(record["status"])}"><td>{thumb}</td>{cells}</tr>')
    header = "".join(f"<th>{html.escape(c)}</th>" for c in columns if c != "output_path")
    facts = "".join(f"<dt>{html.escape(str(k))}</dt><dd>{_cell(v)}</dd>" for k, v in meta.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>slidestock report</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; font-size: 0.85em; }}
td, th {{ border: 1px solid #ccc; padding: 0.3em; vertical-align: top; }}
tr.failed {{ background: #fdd; }}
dt {{ font-weight: bold; }} dd {{ margin: 0 0 0.4em 1em; white-space: pre-wrap; font-family: monospace; }}
</style></head>
<body>
<h1>slidestock report</h1>
<p id="summary">{stats["done"]} of {stats["slides"]} slides done, {stats["failed"]} failed.
Fetched {_mb(stats["bytes_fetched"])} of {_mb(stats["series_bytes"])} in the slides' series
({100 * stats["fraction_fetched"]:.2f} %).</p>
<dl>{facts}</dl>
<table id="slides"><thead><tr><th>image</th>{header}</tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table>
</body></html>
"""
