"""Report rows and the HTML page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from slidestock.report import render_html, report_frame, summary


def record(slide: str, status: str, fetched: int, error: str | None = None) -> dict[str, Any]:
    done = status == "done"
    return {
        "slide_id": slide,
        "status": status,
        "error": error,
        "source": {"SeriesInstanceUID": f"1.2.{slide}"},
        "series_size_bytes": 1_000_000,
        "bytes_fetched": fetched,
        "level": {"size_px": [500, 400], "header_spacing_um": [4.0, 4.0], "reason": "why"},
        "output": {"size_px": [133, 107], "spacing_um": [15.04, 14.95], "path": "", "sha256": "ab"}
        if done
        else None,
    }


def write(tmp_path: Path, records: list[dict[str, Any]]) -> list[Path]:
    paths = []
    for rec in records:
        path = tmp_path / f"{rec['slide_id']}.json"
        path.write_text(json.dumps(rec))
        paths.append(path)
    return paths


def test_rows_flatten_records_and_sort(tmp_path: Path) -> None:
    paths = write(tmp_path, [record("b", "done", 3000), record("a", "failed", 0, "no level")])
    cohort = pd.DataFrame({"slide_id": ["a", "b"], "collection_id": ["c1", "c2"], "PatientID": ["p1", "p2"]})
    frame = report_frame(paths, cohort)
    assert frame["slide_id"].tolist() == ["a", "b"]
    done = frame.iloc[1]
    assert done["collection_id"] == "c2"
    assert done["scale"] == 0.266
    assert done["fraction_fetched"] == 0.003
    assert done["output_spacing_um"] == 15.04
    assert frame.iloc[0]["error"] == "no level"
    assert summary(frame) == {
        "slides": 2,
        "done": 1,
        "failed": 1,
        "bytes_fetched": 3000,
        "series_bytes": 2_000_000,
        "fraction_fetched": 0.0015,
    }


def test_html_escapes_every_metadata_string(tmp_path: Path) -> None:
    hostile = '<script>alert("x")</script>'
    paths = write(tmp_path, [record("s1", "failed", 0, hostile)])
    cohort = pd.DataFrame({"slide_id": ["s1"], "collection_id": [hostile], "PatientID": ["p"]})
    page = render_html(report_frame(paths, cohort), {"cohort filter": hostile})
    assert "<script>" not in page
    assert page.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;") == 3
    assert "0 of 1 slides done, 1 failed" in page
