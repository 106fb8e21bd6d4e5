"""Cohort selection: DuckDB over the idc-index tables, a filter and a seeded sample.

The SQL lives in ``workflow/sql/``; values from the config are bound as
parameters or passed as DuckDB expressions, never spliced into query text.
The result is the lock file ``cohort.tsv``: same config, same bytes.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from slidestock.errors import CohortError, ConfigError
from slidestock.levels import Level

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"

LOCK_COLUMNS = (
    "slide_id",
    "collection_id",
    "PatientID",
    "ContainerIdentifier",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "crdc_series_uuid",
    "aws_bucket",
    "series_size_MB",
    "source_DOI",
    "license_short_name",
    "idc_version",
)
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class TablePaths:
    """Parquet files of the three idc-index tables a cohort is drawn from."""

    index: Path
    sm_index: Path
    sm_instance_index: Path

    def as_dict(self) -> dict[str, Path]:
        return {"index": self.index, "sm_index": self.sm_index, "sm_instance_index": self.sm_instance_index}


@dataclass(frozen=True)
class Cohort:
    """The selected slides and how they were selected."""

    slides: pd.DataFrame
    n_candidates: int
    query: str


def read_sql(name: str) -> str:
    """The text of ``workflow/sql/<name>.sql``."""
    return (SQL_DIR / f"{name}.sql").read_text()


def installed_idc_version() -> int:
    """The IDC release of the installed idc-index-data wheel (its major version)."""
    import idc_index_data

    return int(str(idc_index_data.__version__).split(".")[0])


def resolve_idc_version(requested: int | str) -> int:
    """The IDC release number for ``cohort.idc_version`` (``current`` or an integer)."""
    installed = installed_idc_version()
    if requested == "current" or requested == installed:
        return installed
    if isinstance(requested, int) and requested > installed:
        raise ConfigError(
            f"cohort.idc_version: got {requested}; the installed idc-index-data holds IDC "
            f"v{installed}. Upgrade it (pip install --upgrade idc-index-data) or use "
            f"idc_version: current"
        )
    raise ConfigError(
        f"cohort.idc_version: got {requested!r}; this release selects from the installed "
        f"IDC v{installed} only (expected 'current' or {installed})"
    )


def idc_index_tables() -> TablePaths:
    """The tables of a real run: ``index`` from the wheel, the SM tables fetched by idc-index.

    ``sm_index`` and ``sm_instance_index`` are not bundled; idc-index downloads
    them (about 20 MB) into its data folder on first use.
    """
    import idc_index_data
    from idc_index.index import IDCClient

    client = IDCClient()  # type: ignore[no-untyped-call]
    paths = {}
    for name in ("sm_index", "sm_instance_index"):
        client.fetch_index(name)
        path = client.indices_overview[name]["file_path"]
        if not path:
            raise CohortError(f"idc-index could not fetch the {name} table; check the network")
        paths[name] = Path(path)
    assert idc_index_data.IDC_INDEX_PARQUET_FILEPATH is not None
    return TablePaths(
        idc_index_data.IDC_INDEX_PARQUET_FILEPATH, paths["sm_index"], paths["sm_instance_index"]
    )


def connect(tables: TablePaths) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the tables as views named as idc-index names them."""
    con = duckdb.connect()
    for name, path in tables.as_dict().items():
        if not Path(path).is_file():
            raise ConfigError(f"cohort.tables.{name}: file {str(path)!r} not found; expected a Parquet file")
        con.read_parquet(str(path)).create_view(name)
    return con


def _filter_expression(column: str, values: Sequence[Any], dtype: str) -> duckdb.Expression:
    if dtype.endswith("[]"):
        return duckdb.FunctionExpression(
            "list_has_any", duckdb.ColumnExpression(column), duckdb.ConstantExpression(list(values))
        )
    return duckdb.ColumnExpression(column).isin(*(duckdb.ConstantExpression(v) for v in values))


def apply_filter(
    relation: duckdb.DuckDBPyRelation, filters: Mapping[str, Sequence[Any]]
) -> duckdb.DuckDBPyRelation:
    """Keep rows whose column value is one of the allowed values, for every filter column.

    A list-valued column (e.g. staining substances) matches when any element is allowed.
    """
    types = dict(zip(relation.columns, (str(t) for t in relation.types), strict=True))
    for column, values in sorted(filters.items()):
        if column not in types:
            near = difflib.get_close_matches(column, types, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise ConfigError(
                f"cohort.filter: column {column!r} is not in the index or sm_index tables{hint}"
            )
        if not values:
            raise ConfigError(f"cohort.filter.{column}: got an empty list; expected allowed values")
        relation = relation.filter(_filter_expression(column, values, types[column]))
    return relation


def select_cohort(
    con: duckdb.DuckDBPyConnection,
    filters: Mapping[str, Sequence[Any]],
    n: int | None,
    seed: int,
) -> Cohort:
    """Filter the candidates, then draw ``n`` of them (all when ``n`` is None)."""
    candidates = apply_filter(con.sql(read_sql("candidates")), filters)
    candidates.create_view("candidates")
    n_candidates = int(con.sql("SELECT count(*) FROM candidates").fetchone()[0])  # type: ignore[index]
    query = "\n".join(
        [
            read_sql("candidates").strip(),
            f"-- filter: {json.dumps(dict(filters), sort_keys=True)}",
            read_sql("sample").strip(),
        ]
    )
    if n_candidates == 0:
        _raise_empty(con, filters, query)
    sample = con.execute(read_sql("sample"), {"n": n, "seed": seed}).df()
    log.info("cohort: %d of %d candidate series drawn with seed %d", len(sample), n_candidates, seed)
    return Cohort(slides=sample, n_candidates=n_candidates, query=query)


def _present_values(con: duckdb.DuckDBPyConnection, column: str) -> set[str]:
    """Distinct values of a candidate column as text (list columns contribute their elements)."""
    values = con.sql(read_sql("candidates")).select(duckdb.ColumnExpression(column)).distinct().fetchall()
    present: set[str] = set()
    for (value,) in values:
        present.update(str(v) for v in (value if isinstance(value, list) else [value]) if v is not None)
    return present


def _raise_empty(con: duckdb.DuckDBPyConnection, filters: Mapping[str, Sequence[Any]], query: str) -> None:
    hints = []
    for column, values in sorted(filters.items()):
        present = _present_values(con, column)
        for value in values:
            if str(value) not in present:
                near = difflib.get_close_matches(str(value), present, n=3)
                hint = f" (did you mean {', '.join(near)}?)" if near else ""
                hints.append(f"{column}={value!r} matches no series{hint}")
    detail = "; ".join(hints) if hints else "each value exists, but no series has all of them together"
    raise CohortError(f"cohort.filter selects no slides: {detail}. Query:\n{query}")


def slide_id(container_id: str | None, patient_id: str | None, crdc_series_uuid: str) -> str:
    """A file-name-safe, unique slide id: the slide barcode and 8 hex digits of the series UUID."""
    stem = container_id or patient_id or "series"
    stem = _UNSAFE_ID_CHARS.sub("_", stem).strip("._-") or "series"
    return f"{stem}_{crdc_series_uuid.replace('-', '')[:8]}"


def lock_frame(cohort: Cohort, idc_version: int) -> pd.DataFrame:
    """The lock file's rows: one per slide, sorted by slide id."""
    frame = cohort.slides.copy()
    frame["slide_id"] = [
        slide_id(c, p, u)
        for c, p, u in zip(
            frame["ContainerIdentifier"], frame["PatientID"], frame["crdc_series_uuid"], strict=True
        )
    ]
    duplicated = frame["slide_id"][frame["slide_id"].duplicated()]
    if not duplicated.empty:
        raise CohortError(
            f"cohort: slide ids {sorted(set(duplicated))} are not unique; expected one per series"
        )
    frame["idc_version"] = idc_version
    return frame.loc[:, list(LOCK_COLUMNS)].sort_values("slide_id").reset_index(drop=True)


def lock_text(frame: pd.DataFrame, header: Mapping[str, Any]) -> str:
    """The lock file: ``# key: value`` header lines, then the TSV (no timestamps: same input, same bytes)."""
    lines = []
    for key, value in header.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        for i, part in enumerate(text.splitlines() or [""]):
            lines.append(f"# {key}: {part}" if i == 0 else f"#   {part}")
    body = frame.to_csv(sep="\t", index=False, lineterminator="\n", float_format="%.6f")
    return "\n".join(lines) + "\n" + body


def read_lock(path: Path) -> pd.DataFrame:
    """Read a ``cohort.tsv`` written by :func:`lock_text`."""
    frame = pd.read_csv(path, sep="\t", comment="#", dtype=str, keep_default_na=False)
    missing = set(LOCK_COLUMNS) - set(frame.columns)
    if missing:
        raise CohortError(f"{path}: columns {sorted(missing)} missing; expected a slidestock cohort.tsv")
    return frame


def instance_levels(con: duckdb.DuckDBPyConnection, series_uids: Sequence[str]) -> dict[str, list[Level]]:
    """The instances of each series as :class:`Level` values, keyed by SeriesInstanceUID."""
    rows = con.execute(read_sql("instances"), {"series": list(series_uids)}).fetchall()
    levels: dict[str, list[Level]] = {uid: [] for uid in series_uids}
    for series, sop, crdc, image_type, spacing_mm, cols, rows_px, syntax, size in rows:
        spacing = (
            None if spacing_mm is None or math.isnan(spacing_mm) else round(float(spacing_mm) * 1000.0, 9)
        )
        levels[series].append(
            Level(
                sop_instance_uid=sop,
                crdc_instance_uuid=crdc,
                image_type=tuple(image_type or ()),
                size_px=(int(cols), int(rows_px)),
                spacing_um=spacing,
                transfer_syntax=syntax or "",
                size_bytes=int(size),
            )
        )
    return levels
