"""Plan: one chosen instance per slide of the cohort, written as ``instances.tsv``."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from slidestock.errors import FetchError, LevelError, UnreachableError
from slidestock.plan.levels import Level, LevelChoice, Target, choose_level, pyramid_index, volume_levels
from slidestock.plan.rows import ASSOCIATED
from slidestock.records import PLAN_COLUMNS, PlanColumns, empty_plan_row

if TYPE_CHECKING:  # batch jobs import this module for its plan files; they need not load pandas
    import pandas as pd
    import pydicom

    from slidestock.read.headers import HeaderReader


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


def gdc_plan_row(slide: Mapping[Hashable, Any]) -> PlanColumns:
    """A GDC slide's plan: its page is chosen from the SVS directory when it is fetched."""
    row = empty_plan_row()
    row["slide_id"] = slide["slide_id"]
    row["status"] = "planned"
    row["reason"] = f"GDC file {slide['gdc_filename']}: pyramid page chosen from its SVS directory when fetched"
    row["SeriesInstanceUID"] = slide.get("SeriesInstanceUID") or ""
    row["url"] = f"gdc:{slide['gdc_file_id']}"
    row["instance_size"] = row["series_size_bytes"] = slide["gdc_size"]
    row["transfer_syntax"] = "svs"
    row["md5"] = slide["gdc_md5"]
    return row


def plan_row(
    slide: Mapping[Hashable, Any],
    levels: Sequence[Level],
    target: Target,
    reader: HeaderReader | None = None,
) -> PlanColumns:
    """The plan of one slide; a slide no level can serve gets status ``failed`` and the reason.

    With a ``reader``, headers are read where the index's rounded spacings
    cannot decide the level (``mpp`` targets), for the chosen level's exact
    output size, and for instances the same size as the chosen one: the parts
    of a DICOM concatenation (all fetched), or the channels of a fluorescence
    series (skipped with the reason).
    """
    row = empty_plan_row()
    row["slide_id"] = slide["slide_id"]
    row["SeriesInstanceUID"] = slide["SeriesInstanceUID"]
    row["series_size_bytes"] = sum(lv.size_bytes for lv in levels)
    row["n_levels"] = sum(lv.flavor == "VOLUME" for lv in levels)
    unavailable = _unavailable_reason(slide, levels)
    if unavailable:
        row["status"], row["reason"] = "failed", unavailable
        return row
    headers = None if reader is None else _SlideHeaders(slide, reader)
    try:
        choice, parts = _choose(slide, levels, target, headers)
    except LevelError as err:
        row["status"], row["reason"] = "failed", str(err)
        row["header_bytes"] = 0 if headers is None else headers.bytes_fetched
        return row
    row["header_bytes"] = 0 if headers is None else headers.bytes_fetched
    lv = choice.level
    if len(parts) > 1:
        _set_concatenation(row, slide, parts)
        lv = parts[0]
        # The level rule's words stand; a note on same-size volumes does not, for these are one level.
        choice = replace(choice, reason=f"{choice.reason.split('; ')[0]}; a DICOM concatenation of {len(parts)} "
                         "instances (one ConcatenationUID): all fetched and read as one level")  # fmt: skip
    _set_chosen_level(row, slide, choice, lv)
    for kind in ASSOCIATED:
        found = sorted((a for a in levels if a.flavor == kind.upper()), key=lambda a: a.sop_instance_uid)
        if found:
            url = object_url(slide["aws_bucket"], slide["crdc_series_uuid"], found[0].crdc_instance_uuid)
            if kind == "label":
                row["label_url"], row["label_size"] = url, found[0].size_bytes
            else:
                row["overview_url"], row["overview_size"] = url, found[0].size_bytes
    return row


def _choose(
    slide: Mapping[Hashable, Any], levels: Sequence[Level], target: Target, headers: _SlideHeaders | None
) -> tuple[LevelChoice, list[Level]]:
    """The level rule's choice, on header spacings where they decide it, and the instances it spans.

    Raises :class:`LevelError` when no level can serve the slide.
    """
    slide_id = str(slide["slide_id"])
    spacing = None if headers is None or target.mpp is None else headers.spacing
    try:
        choice = choose_level(levels, target, slide_id, spacing)
        return choice, [] if headers is None else _same_level_parts(slide_id, levels, choice, headers)
    except UnreachableError:
        raise  # the store cannot be reached at all: the same for every slide, so the plan stops
    except FetchError as err:
        # This object's header could not be read: decide on the index alone (never coarser than
        # the target) and say so; the batch then meets the object's trouble itself.
        choice = choose_level(levels, target, slide_id)
        return replace(choice, reason=f"{choice.reason}; header not read ({err}): decided on the index alone"), []


def _set_chosen_level(row: PlanColumns, slide: Mapping[Hashable, Any], choice: LevelChoice, lv: Level) -> None:
    """The plan fields of the chosen level: where it is, its size and spacing, the output's size."""
    row["status"], row["reason"] = "planned", choice.reason
    row["SOPInstanceUID"] = lv.sop_instance_uid
    row["url"] = object_url(slide["aws_bucket"], slide["crdc_series_uuid"], lv.crdc_instance_uuid)
    row["instance_size"] = row["instance_size"] or lv.size_bytes  # a concatenation's parts' total, set before
    row["level_columns"], row["level_rows"] = lv.size_px
    row["level_spacing_um"] = _number(choice.spacing_xy_um and choice.spacing_xy_um[0])
    row["level_row_spacing_um"] = _number(choice.spacing_xy_um and choice.spacing_xy_um[1])
    row["spacing_source"] = choice.spacing_source
    row["index_spacing_um"] = _number(lv.spacing_um)
    row["spacing_derived"] = str(choice.spacing_derived).lower()
    row["output_columns"], row["output_rows"] = choice.output_size_px
    row["transfer_syntax"] = lv.transfer_syntax


def _set_concatenation(row: PlanColumns, slide: Mapping[Hashable, Any], parts: Sequence[Level]) -> None:
    """The plan fields of a level fetched as the parts of a concatenation: every URL and size, the total."""
    urls = [object_url(slide["aws_bucket"], slide["crdc_series_uuid"], p.crdc_instance_uuid) for p in parts]
    row["part_urls"] = " ".join(urls)
    row["part_sizes"] = " ".join(str(p.size_bytes) for p in parts)
    row["instance_size"] = sum(p.size_bytes for p in parts)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.9g}"


class _SlideHeaders:
    """One slide's instance headers, each read once, on demand."""

    def __init__(self, slide: Mapping[Hashable, Any], reader: HeaderReader) -> None:
        self.slide, self.reader = slide, reader
        self.read: dict[str, pydicom.Dataset | None] = {}
        self.bytes_fetched = 0

    def dataset(self, level: Level) -> pydicom.Dataset | None:
        if level.crdc_instance_uuid not in self.read:
            url = object_url(self.slide["aws_bucket"], self.slide["crdc_series_uuid"], level.crdc_instance_uuid)
            self.read[level.crdc_instance_uuid], fetched = self.reader.read(url)
            self.bytes_fetched += fetched
        return self.read[level.crdc_instance_uuid]

    def spacing(self, level: Level) -> tuple[float, float] | None:
        from slidestock.read.dicom import header_spacing_um

        found = self.dataset(level)
        return None if found is None else header_spacing_um(found)


def _same_level_parts(
    slide_id: str, levels: Sequence[Level], choice: LevelChoice, headers: _SlideHeaders
) -> list[Level]:
    """The parts of the chosen level when it is a DICOM concatenation, in frame order; [] otherwise.

    Several VOLUME instances of the chosen size are, by their headers, the
    parts of one concatenated level, the channels (optical paths) of a
    fluorescence series (a :class:`LevelError`: not rendered), or volumes of
    their own (ORIGINAL and RESAMPLED: the first by UID is taken).
    """
    twins = [lv for lv in volume_levels(levels) if lv.size_px == choice.level.size_px]
    known = [(lv, headers.read.get(lv.crdc_instance_uuid)) for lv in twins if lv.crdc_instance_uuid in headers.read]
    found = [(lv, headers.dataset(lv)) for lv in twins] if len(twins) > 1 else known
    sets = [(lv, ds) for lv, ds in found if ds is not None]
    photometric = sorted({str(ds.get("PhotometricInterpretation", "")) for _, ds in sets})
    paths = {_optical_path(ds) for _, ds in sets}
    if any(p.startswith("MONOCHROME") for p in photometric) or len(paths) > 1:
        raise LevelError(
            f"{slide_id}: a fluorescence or multi-channel series ({len(paths)} optical path(s), "
            f"PhotometricInterpretation {', '.join(photometric)}); expected a brightfield RGB slide: slidestock "
            "does not render channels (select brightfield slides with cohort.filter illuminationType_CodeMeaning: "
            "[Brightfield illumination])"
        )
    chosen = dict(sets).get(choice.level)
    uid = None if chosen is None else chosen.get("ConcatenationUID")
    if uid is None:
        return []
    parts = [
        (int(ds.get("ConcatenationFrameOffsetNumber", 0)), lv) for lv, ds in sets if ds.get("ConcatenationUID") == uid
    ]
    return [lv for _, lv in sorted(parts, key=lambda pair: pair[0])]


def _optical_path(ds: pydicom.Dataset) -> str:
    try:
        return str(ds.OpticalPathSequence[0].OpticalPathIdentifier)
    except (AttributeError, IndexError):
        return ""


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

    def row(slide: Mapping[Hashable, Any]) -> PlanColumns:
        if uses_gdc(slide, prefer):
            return gdc_plan_row(slide)
        return plan_row(slide, levels.get(slide["SeriesInstanceUID"], ()), target, reader)

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        rows = list(pool.map(row, cohort.to_dict("records")))
    return pd.DataFrame(rows, columns=list(PLAN_COLUMNS))


def pyramid_indices(plan: pd.DataFrame, levels: Mapping[str, Sequence[Level]]) -> list[int]:
    """Each planned slide's level, as its place among its series' VOLUME levels (finest 0): the level number
    OpenSlide and CLAM give it in a local copy. -1 where the plan has no level or the series no levels (GDC)."""
    out: list[int] = []
    for series, columns, rows in zip(plan["SeriesInstanceUID"], plan["level_columns"], plan["level_rows"], strict=True):
        found = levels.get(series, [])
        known = found and str(columns) not in ("", "nan", "None") and str(rows) not in ("", "nan", "None")
        out.append(pyramid_index(found, (int(float(columns)), int(float(rows)))) if known else -1)
    return out
