"""The report's table: one row per slide of the plan, from its record (or saying it is still to make), written as
``slides.csv`` and ``slides.parquet``, with the counts, times and plots the page shows.

The tables hold no timestamps or paths that depend on the machine, so two runs
of the same config give byte-identical tables.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from slidestock.records import SlideRecord, as_slide_record
from slidestock.state import DONE, FAILED, SlideState
from slidestock.tell import plots

REPORT_COLUMNS: dict[str, str] = {
    # column: pandas dtype of slides.parquet
    "slide_id": "string",
    "collection_id": "string",
    "PatientID": "string",
    "SeriesInstanceUID": "string",
    "fetch_from": "string",
    "status": "string",
    "error": "string",
    "retryable": "boolean",  # for a failed slide: may a re-run get past it
    "level_columns": "Int64",
    "level_rows": "Int64",
    "level_spacing_um": "Float64",
    "level_reason": "string",
    "scale": "Float64",
    "bytes_fetched": "Int64",
    "series_size_bytes": "Int64",
    "fraction_fetched": "Float64",
    "output_columns": "Int64",
    "output_rows": "Int64",
    "output_spacing_um": "Float64",
    "tissue_fraction": "Float64",
    "output_path": "string",
    "sha256": "string",
    "source_DOI": "string",
    "license_short_name": "string",
    "log_path": "string",
}


def report_row(record: SlideRecord, slide: Mapping[Hashable, Any]) -> dict[str, Any]:
    """Flatten one slide's provenance record (and its cohort row) into a report row."""
    level = record["level"]
    output = record.get("output")
    size = level.get("size_px") or [None, None]
    out_size: list[int] | list[None] = output["size_px"] if output else [None, None]
    series_bytes = record.get("series_size_bytes") or 0
    fetched = record.get("bytes_fetched") or 0
    # IDC: the header's (column) spacing, else the plan's, else the index's; GDC: the chosen page's.
    spacing = (
        level.get("header_spacing_um")
        or level.get("plan_spacing_um")
        or [level.get("index_spacing_um") or level.get("spacing_um")]
    )[0]
    return {
        "slide_id": record["slide_id"],
        "collection_id": slide.get("collection_id") or None,
        "PatientID": slide.get("PatientID") or None,
        "SeriesInstanceUID": record["source"]["SeriesInstanceUID"] or None,
        "fetch_from": slide.get("fetch_from") or "idc",
        "status": record["status"],
        "error": record.get("error") or None,
        "retryable": record.get("retryable") if record["status"] == "failed" else None,
        "level_columns": size[0],
        "level_rows": size[1],
        "level_spacing_um": None if spacing is None else round(float(spacing), 6),
        "level_reason": level.get("reason") or None,
        "scale": round(out_size[0] / size[0], 6) if output and size[0] else None,
        "bytes_fetched": fetched,
        "series_size_bytes": series_bytes,
        "fraction_fetched": round(fetched / series_bytes, 6) if series_bytes else None,
        "output_columns": out_size[0],
        "output_rows": out_size[1],
        "output_spacing_um": round(float(output["spacing_um"][0]), 6) if output and output["spacing_um"] else None,
        "tissue_fraction": output.get("tissue_fraction") if output else None,
        "output_path": output["path"] if output else None,
        "sha256": output["sha256"] if output else None,
        "source_DOI": slide.get("source_DOI") or None,
        "license_short_name": slide.get("license_short_name") or None,
        "log_path": f"logs/slide/{record['slide_id']}.log",
    }


def current_records(states: Iterable[SlideState]) -> list[SlideRecord]:
    """The records of the slides made for the current plan and settings (done or failed)."""
    return [as_slide_record(s.record) for s in states if s.state in (DONE, FAILED) and s.record is not None]


def pending_row(state: SlideState, slide: Mapping[Hashable, Any]) -> dict[str, Any]:
    """The row of a slide still to do (or to redo): it says so, and nothing of an older record."""
    plan = state.plan
    record: SlideRecord = {
        "slide_id": plan.slide_id,
        "status": "failed",
        "error": "not made for the current plan and settings yet: the next run makes it",
        "source": {"SeriesInstanceUID": plan.series_instance_uid},
        "settings": {},
        "level": {"reason": plan.reason},
        "output_digest": "",
        "output": None,
        "series_size_bytes": plan.series_size_bytes,
        "target": {},
        "bytes_fetched": 0,
    }
    return {**report_row(record, slide), "status": state.state, "retryable": None}


def report_frame(
    records: Iterable[SlideRecord], cohort: pd.DataFrame, pending: Iterable[SlideState] = ()
) -> pd.DataFrame:
    """One typed row per record, and one per slide still to make (``pending``), sorted by slide id."""
    slides = {row["slide_id"]: row for row in cohort.to_dict("records")}
    rows = [report_row(rec, slides.get(rec["slide_id"], {})) for rec in records]
    rows += [pending_row(state, slides.get(state.slide_id, {})) for state in pending]
    frame = pd.DataFrame(rows, columns=list(REPORT_COLUMNS)).astype(REPORT_COLUMNS)
    return frame.sort_values("slide_id").reset_index(drop=True)


def write_tables(frame: pd.DataFrame, csv_path: Path, parquet_path: Path) -> None:
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(csv_path, index=False, lineterminator="\n")
    frame.to_parquet(parquet_path, index=False)


def summary(frame: pd.DataFrame) -> dict[str, Any]:
    """Counts and byte totals for the report header and the end-of-run line."""
    fetched = int(frame["bytes_fetched"].sum())
    whole = int(frame["series_size_bytes"].sum())
    return {
        "slides": len(frame),
        "done": int((frame["status"] == "done").sum()),
        "failed": int((frame["status"] == "failed").sum()),
        "not_made": int((~frame["status"].isin(["done", "failed"])).sum()),
        "bytes_fetched": fetched,
        "series_bytes": whole,
        "fraction_fetched": fetched / whole if whole else 0.0,
    }


def wall_time_s(records: Iterable[SlideRecord]) -> float | None:
    """From the first batch job's start to the last slide's end."""
    starts, ends = [], []
    for rec in records:
        times = rec.get("timings_s") or {}
        if "started_at" in rec and "total" in times:
            start = datetime.fromisoformat(rec.get("started_at", "")).timestamp()
            starts.append(start)
            ends.append(start + float(times["total"]))
    return max(ends) - min(starts) if starts else None


def plot_svgs(frame: pd.DataFrame) -> dict[str, str]:
    """The report's plots by file stem."""
    done = frame[frame["status"] == "done"]
    per_collection = frame["collection_id"].fillna("(none)").value_counts().sort_index()
    return {
        "bytes": plots.scatter_log(
            "Bytes fetched per slide",
            "whole series (bytes)",
            "fetched (bytes)",
            [float(v) for v in done["series_size_bytes"]],
            [float(v) for v in done["bytes_fetched"]],
        ),
        "spacing": plots.histogram(
            "Output spacing", "µm per pixel, across", [float(v) for v in done["output_spacing_um"].dropna()]
        ),
        "size": plots.histogram(
            "Output size",
            "long side (pixels)",
            [float(max(c, r)) for c, r in zip(done["output_columns"], done["output_rows"], strict=True)],
        ),
        "collections": plots.bars(
            "Slides per collection", [str(k) for k in per_collection.index], [int(v) for v in per_collection]
        ),
    }


def run_date(records: Iterable[SlideRecord]) -> str:
    """When the run's latest batch started, from the records (so a re-run that redoes nothing says the same)."""
    started = [r.get("started_at", "") for r in records if r.get("started_at")]
    return max(started) if started else "unknown"
