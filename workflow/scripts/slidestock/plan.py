"""Plan: one chosen instance per slide of the cohort, written as ``instances.tsv``."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slidestock.errors import FetchError, LevelError, UnreachableError
from slidestock.levels import HeaderSpacing, Level, Target, choose_level
from slidestock.provenance import write_text_atomic

if TYPE_CHECKING:  # batch jobs import this module for its plan files; they need not load pandas
    import pandas as pd

    from slidestock.headers import HeaderReader

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
    "level_row_spacing_um",
    "spacing_source",
    "index_spacing_um",
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


def plan_row(
    slide: Mapping[Hashable, Any],
    levels: Sequence[Level],
    target: Target,
    reader: HeaderReader | None = None,
) -> dict[str, object]:
    """The plan of one slide; a slide no level can serve gets status ``failed`` and the reason.

    With a ``reader``, headers are read where the index's rounded spacings
    cannot decide the level, and for the chosen level's exact output size.
    """
    row: dict[str, object] = {c: "" for c in PLAN_COLUMNS}
    row["slide_id"] = slide["slide_id"]
    row["SeriesInstanceUID"] = slide["SeriesInstanceUID"]
    row["series_size_bytes"] = sum(lv.size_bytes for lv in levels)
    row["n_levels"] = sum(lv.flavor == "VOLUME" for lv in levels)
    unavailable = _unavailable_reason(slide, levels)
    if unavailable:
        row.update(status="failed", reason=unavailable)
        return row
    slide_id = str(slide["slide_id"])
    try:
        try:
            choice = choose_level(levels, target, slide_id, None if reader is None else _header_spacing(slide, reader))
        except UnreachableError:
            raise  # the store cannot be reached at all: the same for every slide, so the plan stops
        except FetchError as err:
            # This object's header could not be read: decide on the index alone (never coarser than
            # the target) and say so; the batch then meets the object's trouble itself.
            choice = choose_level(levels, target, slide_id)
            choice = replace(choice, reason=f"{choice.reason}; header not read ({err}): decided on the index alone")
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
        level_spacing_um=_number(choice.spacing_xy_um and choice.spacing_xy_um[0]),
        level_row_spacing_um=_number(choice.spacing_xy_um and choice.spacing_xy_um[1]),
        spacing_source=choice.spacing_source,
        index_spacing_um=_number(lv.spacing_um),
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


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.9g}"


def _header_spacing(slide: Mapping[Hashable, Any], reader: HeaderReader) -> HeaderSpacing:
    def read(level: Level) -> tuple[float, float] | None:
        url = object_url(slide["aws_bucket"], slide["crdc_series_uuid"], level.crdc_instance_uuid)
        return reader.spacing_xy_um(url)

    return read


def plan_frame(
    cohort: pd.DataFrame,
    levels: Mapping[str, Sequence[Level]],
    target: Target,
    prefer: str = "idc",
    reader: HeaderReader | None = None,
    parallel: int = 16,
) -> pd.DataFrame:
    """``instances.tsv``: one row per cohort slide, in cohort order; headers read ``parallel`` at a time."""
    import pandas as pd

    def row(slide: Mapping[Hashable, Any]) -> dict[str, object]:
        if uses_gdc(slide, prefer):
            return gdc_plan_row(slide)
        return plan_row(slide, levels.get(slide["SeriesInstanceUID"], ()), target, reader)

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        rows = list(pool.map(row, cohort.to_dict("records")))
    return pd.DataFrame(rows, columns=list(PLAN_COLUMNS))


def _plan_line(row: Mapping[Any, Any]) -> str:
    values = ["" if row[c] is None else str(row[c]) for c in PLAN_COLUMNS]
    if any("\t" in v or "\n" in v or "\r" in v for v in values):
        raise LevelError(f"{row['slide_id']}: a plan value holds a tab or line break; expected plain text")
    return "\t".join(values) + "\n"


def slide_plan_text(row: Mapping[Any, Any]) -> str:
    """One slide's plan as a two-line TSV (header, values): what its output digest is taken over."""
    return "\t".join(PLAN_COLUMNS) + "\n" + _plan_line(row)


def batch_name(index: int) -> str:
    """``b00000``, ``b00001``, ...: batches in cohort order."""
    return f"b{index:05d}"


def n_batches(n_slides: int, batch_size: int) -> int:
    return -(-n_slides // batch_size)


def write_batch_plans(plan: pd.DataFrame, folder: Path, batch_size: int) -> int:
    """Write ``folder/<batch>.tsv`` (``batch_size`` slides each, in cohort order), touching only changed files.

    A batch job depends on its plan file, so re-planning re-runs only batches
    whose plan changed, and inside those only slides whose own plan changed
    (each slide's record holds the digest of its plan). Plan files of batches
    beyond the cohort's end are removed. Returns how many files were written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rows = plan.to_dict("records")
    header = "\t".join(PLAN_COLUMNS) + "\n"
    wanted = set()
    written = 0
    for index in range(n_batches(len(rows), batch_size)):
        path = folder / f"{batch_name(index)}.tsv"
        wanted.add(path.name)
        text = header + "".join(_plan_line(row) for row in rows[index * batch_size : (index + 1) * batch_size])
        if not path.exists() or path.read_text() != text:
            write_text_atomic(path, text)
            written += 1
    for stale in folder.glob("b*.tsv"):
        if stale.name not in wanted:
            stale.unlink()
    return written


def read_batch_plan(path: Path) -> list[dict[str, str]]:
    """The slide plans of a file written by :func:`write_batch_plans`, in order."""
    header, *lines = path.read_text().rstrip("\n").split("\n")
    columns = header.split("\t")
    missing = set(PLAN_COLUMNS) - set(columns)
    if missing:
        raise LevelError(f"{path}: columns {sorted(missing)} missing; expected a slidestock batch plan")
    return [dict(zip(columns, line.split("\t"), strict=True)) for line in lines if line]
