"""A slide's plan as a frozen value, and the plan files it is read from and written to, in one place.

The plan step writes ``instances.tsv`` and one file per batch (``results/cohort/batches/``),
whose columns :class:`slidestock.records.PlanColumns` defines; a batch job reads its file as
:class:`PlanRow` values. Light on imports: every Snakefile
parse and every batch job reads these files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slidestock.errors import LevelError
from slidestock.provenance import write_text_atomic
from slidestock.records import PLAN_COLUMNS

if TYPE_CHECKING:  # batch jobs and every Snakefile parse read plan files; they need not load pandas
    import pandas as pd

ASSOCIATED = ("label", "overview")
GDC_PREFIX = "gdc:"


@dataclass(frozen=True)
class PlanRow:
    """One slide's plan: the level chosen (or why none), where its bytes are, and what the output will be.

    ``source`` is ``idc`` (``url`` an ``s3://`` object) or ``gdc`` (``url`` is
    ``gdc:<file id>``). Spacings are (column, row) in µm; sizes in pixels and bytes.
    ``line`` is the row as its plan file holds it: a slide's output digest is
    taken over it, so a plan written again the same way re-does nothing.
    """

    slide_id: str
    status: str
    reason: str
    source: str
    url: str
    series_instance_uid: str
    sop_instance_uid: str
    instance_size: int
    series_size_bytes: int
    n_levels: int
    transfer_syntax: str
    level_size_px: tuple[int, int] | None
    level_spacing_um: tuple[float, float] | None
    spacing_source: str
    index_spacing_um: float | None
    spacing_derived: bool
    output_size_px: tuple[int, int] | None
    md5: str
    # (URL, size) of each part of a level written as a DICOM concatenation, in frame order.
    parts: tuple[tuple[str, int], ...]
    header_bytes: int
    # kind ("label", "overview") -> (URL, size), for the associated images the series has.
    associated: Mapping[str, tuple[str, int]]
    line: str = field(repr=False, compare=False)

    @property
    def planned(self) -> bool:
        return self.status == "planned"

    @property
    def gdc_file_id(self) -> str:
        return self.url.removeprefix(GDC_PREFIX)

    @classmethod
    def from_columns(cls, columns: Mapping[str, Any]) -> PlanRow:
        """A row from its plan-file columns (text as read, or the planner's values)."""
        text = {name: "" if columns.get(name) is None else str(columns.get(name)) for name in PLAN_COLUMNS}
        column_um = _float(text["level_spacing_um"])
        return cls(
            slide_id=text["slide_id"],
            status=text["status"],
            reason=text["reason"],
            source="gdc" if text["url"].startswith(GDC_PREFIX) else "idc",
            url=text["url"],
            series_instance_uid=text["SeriesInstanceUID"],
            sop_instance_uid=text["SOPInstanceUID"],
            instance_size=_int(text["instance_size"]),
            series_size_bytes=_int(text["series_size_bytes"]),
            n_levels=_int(text["n_levels"]),
            transfer_syntax=text["transfer_syntax"],
            level_size_px=_pair(text["level_columns"], text["level_rows"]),
            level_spacing_um=None
            if column_um is None
            else (column_um, _float(text["level_row_spacing_um"]) or column_um),
            spacing_source=text["spacing_source"],
            index_spacing_um=_float(text["index_spacing_um"]),
            spacing_derived=text["spacing_derived"] == "true",
            output_size_px=_pair(text["output_columns"], text["output_rows"]),
            md5=text["md5"],
            parts=tuple(
                (url, int(size))
                for url, size in zip(text["part_urls"].split(), text["part_sizes"].split(), strict=True)
            ),
            header_bytes=_int(text["header_bytes"]),
            associated={
                kind: (text[f"{kind}_url"], _int(text[f"{kind}_size"])) for kind in ASSOCIATED if text[f"{kind}_url"]
            },
            line=plan_line(text),
        )


def _int(text: str) -> int:
    return int(float(text)) if text else 0


def _float(text: str) -> float | None:
    return float(text) if text else None


def _pair(columns: str, rows: str) -> tuple[int, int] | None:
    return (int(float(columns)), int(float(rows))) if columns and rows else None


def plan_line(row: Mapping[Any, Any], columns: Sequence[str] = PLAN_COLUMNS) -> str:
    """One row of a plan file: the columns' text, tab-separated."""
    values = ["" if row[c] is None else str(row[c]) for c in columns]
    if any("\t" in v or "\n" in v or "\r" in v for v in values):
        raise LevelError(f"{row['slide_id']}: a plan value holds a tab or line break; expected plain text")
    return "\t".join(values) + "\n"


def slide_plan_text(row: PlanRow) -> str:
    """One slide's plan as a two-line TSV (header, values): what its output digest is taken over."""
    return "\t".join(PLAN_COLUMNS) + "\n" + row.line


def batch_name(index: int) -> str:
    """``b00000``, ``b00001``, ...: batches in cohort order."""
    return f"b{index:05d}"


def n_batches(n_slides: int, batch_size: int) -> int:
    return -(-n_slides // batch_size)


# fetch.batch_size: auto aims at about this many batches, of AUTO_BATCH_SIZE slides each.
AUTO_BATCHES = 20
AUTO_BATCH_SIZE = (500, 1000)


def batch_size_for(n_slides: int, setting: int | str) -> int:
    """Slides per batch: the configured number, or for ``auto`` about ``AUTO_BATCHES`` batches of 500 to 1,000.

    It depends on the cohort's size alone (not on the cores), so the same cohort is
    always batched the same way: each job's fixed cost (starting Python, one ``s5cmd
    run``) stays small against its slides, and a cluster gets few, full jobs.
    """
    if setting != "auto":
        return int(setting)
    low, high = AUTO_BATCH_SIZE
    return min(high, max(low, -(-n_slides // AUTO_BATCHES)))


def write_batch_plans(plan: pd.DataFrame, folder: Path, batch_size: int, columns: Sequence[str] = PLAN_COLUMNS) -> int:
    """Write ``folder/<batch>.tsv`` (``batch_size`` slides each, in cohort order), touching only changed files.

    A batch job depends on its plan file, so re-planning re-runs only batches
    whose plan changed, and inside those only slides whose own plan changed
    (each slide's record holds the digest of its plan). Plan files of batches
    beyond the cohort's end are removed. Returns how many files were written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rows = plan.to_dict("records")
    header = "\t".join(columns) + "\n"
    wanted = set()
    written = 0
    for index in range(n_batches(len(rows), batch_size)):
        path = folder / f"{batch_name(index)}.tsv"
        wanted.add(path.name)
        text = header + "".join(plan_line(row, columns) for row in rows[index * batch_size : (index + 1) * batch_size])
        if not path.exists() or path.read_text() != text:
            write_text_atomic(path, text)
            written += 1
    for stale in folder.glob("b*.tsv"):
        if stale.name not in wanted:
            stale.unlink()
    return written


def read_base_sizes(path: Path) -> dict[str, tuple[tuple[int, int] | None, int]]:
    """Each slide's base level size (columns, rows) from a patch plan, None where the plan has none (GDC), and
    its level's place in the pyramid (finest 0; -1 where the plan has none)."""
    header, *lines = path.read_text().rstrip("\n").split("\n")
    columns = header.split("\t")
    rows = [dict(zip(columns, line.split("\t"), strict=True)) for line in lines if line]
    return {
        row["slide_id"]: (
            _pair(row.get("base_columns", ""), row.get("base_rows", "")),
            _int(row["level_index"]) if row.get("level_index", "") not in ("", "nan") else -1,
        )
        for row in rows
    }


def read_batch_plan(path: Path) -> list[PlanRow]:
    """The slide plans of a file written by :func:`write_batch_plans`, in order."""
    header, *lines = path.read_text().rstrip("\n").split("\n")
    columns = header.split("\t")
    missing = set(PLAN_COLUMNS) - set(columns)
    if missing:
        raise LevelError(f"{path}: columns {sorted(missing)} missing; expected a slidestock batch plan")
    return [PlanRow.from_columns(dict(zip(columns, line.split("\t"), strict=True))) for line in lines if line]
