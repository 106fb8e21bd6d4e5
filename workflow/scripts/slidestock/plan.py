"""Plan: one chosen instance per slide of the cohort, written as ``instances.tsv``."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from slidestock.errors import LevelError
from slidestock.levels import Level, Target, choose_level

PLAN_COLUMNS = (
    "slide_id",
    "status",
    "reason",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "url",
    "instance_size",
    "series_size_bytes",
    "level_columns",
    "level_rows",
    "level_spacing_um",
    "spacing_derived",
    "n_levels",
    "output_columns",
    "output_rows",
    "transfer_syntax",
    "md5",
    "label_url",
    "label_size",
    "overview_url",
    "overview_size",
)
ASSOCIATED = ("label", "overview")


def object_url(bucket: str, crdc_series_uuid: str, crdc_instance_uuid: str) -> str:
    """The IDC object of one instance: ``s3://<bucket>/<crdc_series_uuid>/<crdc_instance_uuid>.dcm``."""
    return f"s3://{bucket}/{crdc_series_uuid}/{crdc_instance_uuid}.dcm"


def _unavailable_reason(slide: Mapping[Hashable, Any], levels: Sequence[Level]) -> str:
    """Why a slide has no instances to choose from, or "" when it has some."""
    if levels:
        return ""
    if slide.get("in_current_index") == "false":
        return (
            f"{slide['slide_id']}: series {slide['SeriesInstanceUID']} of IDC v{slide['idc_version']} was "
            "revised or removed since, so the installed sm_instance_index does not describe its instances; "
            "use cohort.source idc_parquet with that release's export"
        )
    return f"{slide['slide_id']}: series {slide['SeriesInstanceUID']} has no instances in sm_instance_index"


def uses_gdc(slide: Mapping[Hashable, Any], prefer: str) -> bool:
    """GDC files no IDC series matches take the GDC path, and matched ones too with ``prefer: gdc``."""
    return slide.get("fetch_from") == "gdc" or (prefer == "gdc" and bool(slide.get("gdc_file_id")))


def gdc_plan_row(slide: Mapping[Hashable, Any]) -> dict[str, object]:
    """A GDC slide's plan: its page is chosen from the SVS directory when it is fetched."""
    row: dict[str, object] = {c: "" for c in PLAN_COLUMNS}
    row.update(
        slide_id=slide["slide_id"],
        status="planned",
        reason=f"GDC file {slide['gdc_filename']}: pyramid page chosen from its SVS directory when fetched",
        SeriesInstanceUID=slide.get("SeriesInstanceUID") or "",
        url=f"gdc:{slide['gdc_file_id']}",
        instance_size=slide["gdc_size"],
        series_size_bytes=slide["gdc_size"],
        transfer_syntax="svs",
        md5=slide["gdc_md5"],
    )
    return row


def plan_row(slide: Mapping[Hashable, Any], levels: Sequence[Level], target: Target) -> dict[str, object]:
    """The plan of one slide; a slide no level can serve gets status ``failed`` and the reason."""
    row: dict[str, object] = {c: "" for c in PLAN_COLUMNS}
    row["slide_id"] = slide["slide_id"]
    row["SeriesInstanceUID"] = slide["SeriesInstanceUID"]
    row["series_size_bytes"] = sum(lv.size_bytes for lv in levels)
    row["n_levels"] = sum(lv.flavor == "VOLUME" for lv in levels)
    unavailable = _unavailable_reason(slide, levels)
    if unavailable:
        row.update(status="failed", reason=unavailable)
        return row
    try:
        choice = choose_level(levels, target, slide=str(slide["slide_id"]))
    except LevelError as err:
        row.update(status="failed", reason=str(err))
        return row
    lv = choice.level
    row.update(
        status="planned",
        reason=choice.reason,
        SOPInstanceUID=lv.sop_instance_uid,
        url=object_url(slide["aws_bucket"], slide["crdc_series_uuid"], lv.crdc_instance_uuid),
        instance_size=lv.size_bytes,
        level_columns=lv.size_px[0],
        level_rows=lv.size_px[1],
        level_spacing_um="" if choice.spacing_um != choice.spacing_um else f"{choice.spacing_um:.9g}",
        spacing_derived=str(choice.spacing_derived).lower(),
        output_columns=choice.output_size_px[0],
        output_rows=choice.output_size_px[1],
        transfer_syntax=lv.transfer_syntax,
    )
    for kind in ASSOCIATED:
        found = sorted((a for a in levels if a.flavor == kind.upper()), key=lambda a: a.sop_instance_uid)
        if found:
            row[f"{kind}_url"] = object_url(slide["aws_bucket"], slide["crdc_series_uuid"], found[0].crdc_instance_uuid)
            row[f"{kind}_size"] = found[0].size_bytes
    return row


def plan_frame(
    cohort: pd.DataFrame, levels: Mapping[str, Sequence[Level]], target: Target, prefer: str = "idc"
) -> pd.DataFrame:
    """``instances.tsv``: one row per cohort slide, in cohort order."""
    rows = [
        gdc_plan_row(slide)
        if uses_gdc(slide, prefer)
        else plan_row(slide, levels.get(slide["SeriesInstanceUID"], ()), target)
        for slide in cohort.to_dict("records")
    ]
    return pd.DataFrame(rows, columns=list(PLAN_COLUMNS))


def slide_plan_text(row: Mapping[Hashable, Any]) -> str:
    """One slide's plan as a two-line TSV (header, values)."""
    values = ["" if row[c] is None else str(row[c]) for c in PLAN_COLUMNS]
    if any("\t" in v or "\n" in v for v in values):
        raise LevelError(f"{row['slide_id']}: a plan value holds a tab or newline; expected plain text")
    return "\t".join(PLAN_COLUMNS) + "\n" + "\t".join(values) + "\n"


def write_slide_plans(plan: pd.DataFrame, folder: Path) -> int:
    """Write ``folder/<slide_id>.tsv`` per slide, touching only files whose content changed.

    A slide job depends on its own plan file, so re-planning a cohort re-runs
    exactly the slides whose plan changed. Returns how many files were written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for row in plan.to_dict("records"):
        path = folder / f"{row['slide_id']}.tsv"
        text = slide_plan_text(row)
        if not path.exists() or path.read_text() != text:
            partial = path.with_name(f".{path.name}.partial")
            partial.write_text(text)
            os.replace(partial, path)
            written += 1
    return written


def read_slide_plan(path: Path) -> dict[str, str]:
    """Read a file written by :func:`write_slide_plans`."""
    header, values = path.read_text().rstrip("\n").split("\n")
    row = dict(zip(header.split("\t"), values.split("\t"), strict=True))
    missing = set(PLAN_COLUMNS) - set(row)
    if missing:
        raise LevelError(f"{path}: columns {sorted(missing)} missing; expected a slidestock slide plan")
    return row
