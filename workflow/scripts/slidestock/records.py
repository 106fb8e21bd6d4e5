"""What slidestock writes about each slide, each schema written once: the plan files' columns, a slide's record,
a slide's patch record and a row of the patch table.

They are TypedDicts, so mypy checks every key where a record is built and
where it is read; the column tuples are derived from them. Records carry
``record_version``:

- 1 (slidestock 0.4.0's first records): no ``record_version`` key;
- 2: ``record_version`` added; nothing else changed, so version 1 records read as they are (and are not redone:
  the version is not in the output digest).

Light on imports: every Snakefile parse and every job reads these.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict, cast

RECORD_VERSION = 2


class PlanColumns(TypedDict):
    """One row of a plan file (``results/cohort/instances.tsv`` and the batch plans), as text or values.

    Spacings are µm/px, sizes pixels and bytes; a GDC slide's ``url`` is ``gdc:<file id>``. ``part_urls`` and
    ``part_sizes`` list the parts of a level written as a DICOM concatenation (space-separated, frame order).
    """

    slide_id: object
    status: object
    reason: object
    SeriesInstanceUID: object
    SOPInstanceUID: object
    url: object
    instance_size: object
    series_size_bytes: object
    level_columns: object
    level_rows: object
    level_spacing_um: object
    level_row_spacing_um: object
    spacing_source: object
    index_spacing_um: object
    spacing_derived: object
    n_levels: object
    output_columns: object
    output_rows: object
    transfer_syntax: object
    md5: object
    part_urls: object
    part_sizes: object
    header_bytes: object
    label_url: object
    label_size: object
    overview_url: object
    overview_size: object


class PatchPlanColumns(PlanColumns):
    """A patch plan's row (``results/cohort/patches/``): the plan's, the series' base level size, which patch
    positions are also given in, and the level's place among the series' levels (empty for a GDC slide)."""

    base_columns: object
    base_rows: object
    level_index: object


PLAN_COLUMNS: tuple[str, ...] = tuple(PlanColumns.__annotations__)
PATCH_PLAN_COLUMNS: tuple[str, ...] = tuple(PatchPlanColumns.__annotations__)


def empty_plan_row() -> PlanColumns:
    """A plan row with every column empty."""
    return cast(PlanColumns, dict.fromkeys(PLAN_COLUMNS, ""))


class OutputFile(TypedDict):
    """A slide's image as its record names it: where, in what format, its size (pixels, µm/px; spacing ``None``
    where the slide has none), its bytes and SHA-256; with ``target.tissue_mask``, the mask and its share."""

    path: str
    format: str
    size_px: list[int]
    spacing_um: list[float] | None
    bytes: int
    sha256: str
    tissue_fraction: NotRequired[float]
    mask_path: NotRequired[str]


class AssociatedImage(TypedDict):
    """A label or overview image written beside the slide's (``target.associated``), as it came."""

    path: str
    size_px: list[int]
    spacing_um: list[float] | None
    bytes_fetched: int
    sha256: str


class Failure(TypedDict):
    """Why a slide failed, and whether a re-run may get past it."""

    error: str
    retryable: bool


class Record(TypedDict):
    """What a slide's record and its patch record share: the slide, how it ended, and what was fetched."""

    slide_id: str
    status: Literal["done", "failed"]
    error: NotRequired[str | None]
    retryable: NotRequired[bool]
    record_version: NotRequired[int]
    bytes_fetched: NotRequired[int]
    source: dict[str, Any]
    settings: dict[str, Any]
    level: dict[str, Any]
    warnings: NotRequired[list[str]]


class SlideRecord(Record):
    """``results/slides/{slide}.json``: the slide's output image, or why there is none, and how it was made.

    ``output_digest`` is taken over the slide's plan row and the output settings
    (:meth:`slidestock.settings.StockSettings.digest`); ``level`` holds what the
    level's source says of it (sizes, spacings, the reason it was chosen, how it
    was reduced), ``source`` where its bytes came from.
    """

    output_digest: str
    output: OutputFile | None
    series_size_bytes: int
    target: dict[str, Any]
    software: NotRequired[dict[str, str]]
    started_at: NotRequired[str]
    scale: NotRequired[list[float]]
    associated: NotRequired[dict[str, AssociatedImage | None]]
    fetch_attempts: NotRequired[int]
    gdc: NotRequired[dict[str, Any]]
    timings_s: NotRequired[dict[str, float]]


class PatchRow(TypedDict):
    """One patch: a row of ``results/patches/patches.parquet`` and of its slide's patch record.

    Positions are the patch's top-left corner in the level it was cut from, in
    the series' level 0 (``x_px``, ``y_px``) and in µm; ``bytes_fetched`` is the
    encoded bytes of the frames it covers. A patch is a file (``path``, under
    ``results/patches/``), a member of a webdataset shard (``shard``, ``member``),
    or with ``patches.format: coordinates`` neither. Every row says what reading
    its pixels again takes, without a header (:mod:`slidestock.train`): the object
    (``url``: ``s3://`` or ``gdc:<file id>``), the level's index in its pyramid
    (``level_index``, finest 0), ``frames`` (JSON: ``[tile, part, offset, length]``
    for each covered frame, in the object or the concatenation's part) and
    ``decoding`` (JSON: codec, tile size, exact span, the parts' URLs).
    """

    slide_id: str
    patch_id: str
    path: str
    level_columns: int
    level_rows: int
    level_spacing_um: float
    x_level_px: int
    y_level_px: int
    x_px: int
    y_px: int
    x_um: float
    y_um: float
    size_px: int
    mpp: float
    tissue_fraction: float
    bytes_fetched: int
    sha256: str
    shard: str
    member: str
    url: str
    level_index: int
    frames: str
    decoding: str


PATCH_COLUMNS: tuple[str, ...] = tuple(PatchRow.__annotations__)
# TRIDENT's name for a slide's coordinates: {slide}_patches.h5.
TRIDENT_SUFFIX = "_patches.h5"


def coordinate_files(slide_id: str) -> tuple[str, str]:
    """The names, under ``results/patches``, of a slide's coordinates as CLAM and TRIDENT read them
    (:mod:`slidestock.train.layouts`)."""
    return f"{slide_id}.h5", f"{slide_id}{TRIDENT_SUFFIX}"


class PatchRecord(Record):
    """``results/patches/{slide}.json``: the slide's patches, or why there are none, and how they were cut.

    ``digest`` is taken over the patch plan row, the patch settings and the
    slide's image; ``frames`` says how the covered frames were found and how many
    bytes they hold, ``locating_bytes`` what finding them took.
    """

    digest: str
    requested: int | None
    patches: list[PatchRow]
    frames: NotRequired[dict[str, Any]]
    locating_bytes: NotRequired[int]
    requests: NotRequired[int]
    tissue_pixels: NotRequired[int]
    note: NotRequired[str]
    seconds: NotRequired[float]


def read_record(path: Path) -> Record | None:
    """A slide's record or patch record, or None when there is none (or it is being replaced)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or "slide_id" not in record or "status" not in record:
        return None
    return cast(Record, record)


def as_slide_record(record: Record) -> SlideRecord:
    """A record read from ``results/slides`` as what it is."""
    return cast(SlideRecord, record)


def as_patch_record(record: Record) -> PatchRecord:
    """A record read from ``results/patches`` as what it is."""
    return cast(PatchRecord, record)


def may_pass(record: Record) -> bool:
    """A failed slide that a re-run may get past (a record that does not say counts as such)."""
    return record["status"] == "failed" and record.get("retryable") is not False


def failed_for_good(record: Record) -> bool:
    """A failed slide that a re-run would fail the same way (a missing object, a level that does not decode)."""
    return record["status"] == "failed" and record.get("retryable") is False


def output_sha256(record: SlideRecord) -> str:
    """The SHA-256 of a slide's image as its record says ("" when it has none)."""
    output = record.get("output")
    return output["sha256"] if output else ""
