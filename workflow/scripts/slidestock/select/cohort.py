"""Cohort selection: a filter (or SQL, or a manifest, or an earlier lock file) and a seeded sample.

Config values are bound as parameters or passed as DuckDB expressions, never spliced into
query text. :mod:`slidestock.select.lockfile` writes the result.
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from slidestock.config import with_defaults
from slidestock.errors import CohortError, ConfigError
from slidestock.select.lockfile import read_lock
from slidestock.select.manifests import read_gdc_manifest, read_idc_manifest
from slidestock.select.sources import read_sql

log = logging.getLogger(__name__)


_NULL_STRATUM = "(null)"


@dataclass(frozen=True)
class CohortSpec:
    """The ``cohort`` section of the config, typed."""

    source: str = "idc"
    idc_version: int | str = "current"
    filters: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    sql: Path | None = None
    sql_params: Mapping[str, Any] = field(default_factory=dict)
    manifest: Path | None = None
    n: int | None = None
    seed: int = 42
    stratify_by: str | None = None
    one_per_patient: bool = False

    @classmethod
    def from_config(cls, section: Mapping[str, Any], base: Path) -> CohortSpec:
        cohort = with_defaults("cohort", section)

        def path(key: str) -> Path | None:
            value = cohort.get(key)
            return None if value is None else base / Path(value)

        return cls(
            source=cohort["source"],
            idc_version=cohort["idc_version"],
            filters=dict(cohort["filter"] or {}),
            sql=path("sql"),
            sql_params=dict(cohort["sql_params"] or {}),
            manifest=path("manifest"),
            n=cohort["n"],
            seed=int(cohort["seed"]),
            stratify_by=cohort["stratify_by"],
            one_per_patient=bool(cohort["one_per_patient"]),
        )


@dataclass(frozen=True)
class Cohort:
    """The selected slides and how they were selected."""

    slides: pd.DataFrame
    n_candidates: int
    query: str
    strata: dict[str, dict[str, int]] = field(default_factory=dict)
    unmatched: int = 0


def _filter_expression(column: str, values: Sequence[Any], dtype: str) -> duckdb.Expression:
    if dtype.endswith("[]"):
        return duckdb.FunctionExpression(
            "list_has_any", duckdb.ColumnExpression(column), duckdb.ConstantExpression(list(values))
        )
    return duckdb.ColumnExpression(column).isin(*(duckdb.ConstantExpression(v) for v in values))


def _check_column(relation: duckdb.DuckDBPyRelation, column: str, key: str) -> str:
    """The column's DuckDB type; an unknown column names the nearest ones."""
    types = dict(zip(relation.columns, (str(t) for t in relation.types), strict=True))
    if column not in types:
        near = difflib.get_close_matches(column, types, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise ConfigError(f"{key}: column {column!r} is not in the index or sm_index tables{hint}")
    return types[column]


def apply_filter(relation: duckdb.DuckDBPyRelation, filters: Mapping[str, Sequence[Any]]) -> duckdb.DuckDBPyRelation:
    """Keep rows whose column value is one of the allowed values, for every filter column.

    A list-valued column (e.g. staining substances) matches when any element is allowed.
    """
    for column, values in sorted(filters.items()):
        dtype = _check_column(relation, column, "cohort.filter")
        if not values:
            raise ConfigError(f"cohort.filter.{column}: got an empty list; expected allowed values")
        relation = relation.filter(_filter_expression(column, values, dtype))
    return relation


def _restrict_by_sql(
    con: duckdb.DuckDBPyConnection, relation: duckdb.DuckDBPyRelation, spec: CohortSpec
) -> duckdb.DuckDBPyRelation:
    """Keep the series the user's query returns (a ``SeriesInstanceUID`` column)."""
    assert spec.sql is not None
    if not spec.sql.is_file():
        raise ConfigError(f"cohort.sql: file {str(spec.sql)!r} not found; expected a .sql file")
    text = spec.sql.read_text()
    try:
        chosen = con.execute(text, dict(spec.sql_params) or None).df()
    except duckdb.Error as err:
        raise CohortError(f"cohort.sql {spec.sql}: the query failed: {err}") from err
    if "SeriesInstanceUID" not in chosen.columns:
        raise CohortError(
            f"cohort.sql {spec.sql}: returns columns {list(chosen.columns)}; expected a SeriesInstanceUID column"
        )
    con.register("sql_selection", chosen[["SeriesInstanceUID"]].drop_duplicates())
    return relation.join(con.table("sql_selection"), "SeriesInstanceUID", how="semi")


def _restrict_by_idc_manifest(
    con: duckdb.DuckDBPyConnection, relation: duckdb.DuckDBPyRelation, manifest: Path
) -> duckdb.DuckDBPyRelation:
    uuids = read_idc_manifest(manifest)
    con.register("manifest_series", pd.DataFrame({"crdc_series_uuid": uuids}))
    kept = relation.join(con.table("manifest_series"), "crdc_series_uuid", how="semi")
    found = {row[0] for row in kept.select(duckdb.ColumnExpression("crdc_series_uuid")).fetchall()}
    missing = [u for u in uuids if u not in found]
    if missing:
        raise CohortError(
            f"{manifest}: {len(missing)} of {len(uuids)} series are not SM series of this IDC release "
            f"(first: {', '.join(missing[:3])}); expected every manifest series in the index"
        )
    return kept


def _restrict_by_gdc_manifest(
    con: duckdb.DuckDBPyConnection, relation: duckdb.DuckDBPyRelation, manifest: Path
) -> tuple[duckdb.DuckDBPyRelation, int]:
    """Series whose slide barcode is a GDC file's, plus a row per GDC file no series matches."""
    files = pd.DataFrame([f.__dict__ for f in read_gdc_manifest(manifest)])
    con.register("gdc_files", files)
    relation.create_view("gdc_matchable", replace=True)
    matched = con.sql(read_sql("gdc_matched"))
    unmatched = con.sql(read_sql("gdc_unmatched"))
    n_unmatched = int(unmatched.aggregate("count(*)").fetchone()[0])  # type: ignore[index]
    if n_unmatched:
        log.warning("%s: %d of %d files match no IDC series; kept for the GDC path", manifest, n_unmatched, len(files))
    return _union_by_name(con, matched, unmatched), n_unmatched


def _restrict_by_lock(
    con: duckdb.DuckDBPyConnection, relation: duckdb.DuckDBPyRelation, lock_path: Path, version: int
) -> duckdb.DuckDBPyRelation:
    """Exactly the series of an earlier lock file; each must still be a candidate."""
    lock = read_lock(lock_path)
    versions = sorted(set(lock["idc_version"]))
    if versions != [str(version)]:
        raise ConfigError(
            f"cohort.manifest {lock_path}: a lock file of IDC version {', '.join(versions)}; "
            f"cohort.idc_version resolves to {version}. Set idc_version: {versions[0]} to reproduce it"
        )
    idc_rows = lock[lock["fetch_from"] != "gdc"]
    con.register("lock_series", idc_rows[["SeriesInstanceUID", "crdc_series_uuid"]])
    kept = relation.join(con.table("lock_series"), "SeriesInstanceUID, crdc_series_uuid", how="semi")
    n_kept = int(kept.aggregate("count(*)").fetchone()[0])  # type: ignore[index]
    if n_kept != len(idc_rows):
        raise CohortError(
            f"{lock_path}: {len(idc_rows) - n_kept} of {len(idc_rows)} series are not in the tables of "
            f"IDC v{version}; expected every locked series (same SeriesInstanceUID and crdc_series_uuid)"
        )
    return kept


def _union_by_name(
    con: duckdb.DuckDBPyConnection, left: duckdb.DuckDBPyRelation, right: duckdb.DuckDBPyRelation
) -> duckdb.DuckDBPyRelation:
    left.create_view("union_left", replace=True)
    right.create_view("union_right", replace=True)
    return con.sql(read_sql("union_by_name"))


_VARCHAR = duckdb.sqltype("VARCHAR")


def _with_columns(relation: duckdb.DuckDBPyRelation, **columns: duckdb.Expression) -> duckdb.DuckDBPyRelation:
    """``relation`` with columns added, or replaced when they exist."""
    kept = [duckdb.ColumnExpression(c) for c in relation.columns if c not in columns]
    return relation.select(*kept, *(expr.alias(name) for name, expr in columns.items()))


def _missing_as_null(relation: duckdb.DuckDBPyRelation, names: Sequence[str]) -> duckdb.DuckDBPyRelation:
    extra = {n: duckdb.ConstantExpression(None).cast(_VARCHAR) for n in names if n not in relation.columns}
    return _with_columns(relation, **extra) if extra else relation


def allocate(n: int | None, available: Mapping[str, int]) -> dict[str, int]:
    """How many rows each stratum gives: ``n`` split evenly, capped by what a stratum has.

    A short stratum's unused share goes to the others, again evenly; the
    remainder of an uneven split goes one each to strata in name order. With
    ``n`` None every row is taken.
    """
    if n is None:
        return dict(available)
    quotas = dict.fromkeys(available, 0)
    remaining = n
    open_strata = sorted(k for k, v in available.items() if v > 0)
    while remaining > 0 and open_strata:
        share, extra = divmod(remaining, len(open_strata))
        for i, stratum in enumerate(open_strata):
            give = min(share + (1 if i < extra else 0), available[stratum] - quotas[stratum])
            quotas[stratum] += give
            remaining -= give
        open_strata = [k for k in open_strata if quotas[k] < available[k]]
    return quotas


def select_cohort(con: duckdb.DuckDBPyConnection, spec: CohortSpec, version: int) -> Cohort:
    """Candidates of release ``version`` through filter, query, manifest, then the seeded draw."""
    candidates = con.sql(read_sql("candidates"), params={"idc_version": version})
    for column in sorted(spec.filters):
        _check_column(candidates, column, "cohort.filter")
    check_filter_values(con, spec.filters, version)
    relation = apply_filter(candidates, spec.filters)
    if spec.sql is not None:
        relation = _restrict_by_sql(con, relation, spec)
    unmatched = 0
    if spec.source in ("idc_manifest", "gdc_manifest", "lock") and spec.manifest is None:
        raise ConfigError(f"cohort.manifest: got null; source {spec.source} needs the path of its manifest")
    if spec.source == "idc_manifest":
        assert spec.manifest is not None
        relation = _restrict_by_idc_manifest(con, relation, spec.manifest)
    elif spec.source == "gdc_manifest":
        assert spec.manifest is not None
        relation, unmatched = _restrict_by_gdc_manifest(con, relation, spec.manifest)
    elif spec.source == "lock":
        assert spec.manifest is not None
        relation = _restrict_by_lock(con, relation, spec.manifest, version)
    relation = _missing_as_null(relation, ["fetch_from", "gdc_file_id", "gdc_filename", "gdc_md5", "gdc_size"])
    relation = _with_columns(
        relation,
        fetch_from=duckdb.CoalesceOperator(duckdb.ColumnExpression("fetch_from"), duckdb.ConstantExpression("idc")),
        sample_id=duckdb.CoalesceOperator(
            duckdb.ColumnExpression("SeriesInstanceUID"),
            duckdb.FunctionExpression(
                "concat", duckdb.ConstantExpression("gdc:"), duckdb.ColumnExpression("gdc_file_id")
            ),
        ),
        stratum=_stratum_expression(relation, spec.stratify_by),
    )
    relation.create_view("candidates", replace=True)
    n_candidates = int(con.sql("SELECT count(*) FROM candidates").fetchone()[0])  # type: ignore[index]
    query = _query_text(spec, version)
    if n_candidates == 0:
        _raise_empty(con, spec.filters, query, version)
    drawn = con.execute(read_sql("pool"), {"seed": spec.seed, "one_per_patient": spec.one_per_patient})
    con.register("pool_frame", drawn.df())
    con.table("pool_frame").create_view("pool", replace=True)
    available = dict(con.sql(read_sql("strata")).fetchall())
    n = None if spec.source == "lock" else spec.n
    quotas = allocate(n, available)
    con.register("quotas", pd.DataFrame({"stratum": list(quotas), "quota": list(quotas.values())}))
    sample = con.sql(read_sql("sample")).df()
    strata = {k: {"available": available[k], "taken": quotas[k]} for k in sorted(available)}
    log.info("cohort: %d of %d candidates drawn with seed %d", len(sample), n_candidates, spec.seed)
    return Cohort(sample, n_candidates, query, strata if spec.stratify_by else {}, unmatched)


def _stratum_expression(relation: duckdb.DuckDBPyRelation, column: str | None) -> duckdb.Expression:
    if column is None:
        return duckdb.ConstantExpression("all")
    dtype = _check_column(relation, column, "cohort.stratify_by")
    if dtype.endswith("[]"):
        raise ConfigError(f"cohort.stratify_by: column {column!r} holds lists; expected a single-valued column")
    return duckdb.CoalesceOperator(
        duckdb.ColumnExpression(column).cast(_VARCHAR), duckdb.ConstantExpression(_NULL_STRATUM)
    )


def _query_text(spec: CohortSpec, version: int) -> str:
    parts = [
        read_sql("candidates").strip(),
        f"-- idc_version: {version}",
        f"-- filter: {json.dumps(dict(spec.filters), sort_keys=True)}",
    ]
    if spec.sql is not None:
        parts += [f"-- sql: {spec.sql.name} with {json.dumps(dict(spec.sql_params), sort_keys=True)}"]
        parts += [spec.sql.read_text().strip()]
    parts += [read_sql("pool").strip(), read_sql("sample").strip()]
    return "\n".join(parts)


def _present_values(con: duckdb.DuckDBPyConnection, column: str, version: int) -> set[str]:
    """Distinct values of a candidate column as text (list columns contribute their elements)."""
    relation = con.sql(read_sql("candidates"), params={"idc_version": version})
    values = relation.select(duckdb.ColumnExpression(column)).distinct().fetchall()
    present: set[str] = set()
    for (value,) in values:
        present.update(str(v) for v in (value if isinstance(value, list) else [value]) if v is not None)
    return present


def unmatched_values(con: duckdb.DuckDBPyConnection, filters: Mapping[str, Sequence[Any]], version: int) -> list[str]:
    """``column='value' matches no series (did you mean ...?)`` for each filter value no series of the release has."""
    found = []
    for column, values in sorted(filters.items()):
        present = _present_values(con, column, version)
        for value in values:
            if str(value) not in present:
                near = difflib.get_close_matches(str(value), present, n=3)
                hint = f" (did you mean {', '.join(near)}?)" if near else ""
                found.append(f"{column}={value!r} matches no series{hint}")
    return found


def check_filter_values(con: duckdb.DuckDBPyConnection, filters: Mapping[str, Sequence[Any]], version: int) -> None:
    """Every value of every filter must match some series of the release: a typo in one of a list's values
    would otherwise draw the cohort from the others alone, without a word. The first that matches nothing
    stops the selection, naming the nearest values."""
    unmatched = unmatched_values(con, filters, version)
    if unmatched:
        said = unmatched[0].replace(" matches no series", f" matches no series of IDC v{version}", 1)
        raise CohortError(f"cohort.filter: {said}; every value of a filter must match some series")


def _raise_empty(
    con: duckdb.DuckDBPyConnection, filters: Mapping[str, Sequence[Any]], query: str, version: int
) -> None:
    hints = unmatched_values(con, filters, version)
    detail = "; ".join(hints) if hints else "each value exists, but no series has all of them together"
    # The query goes to the log; the message stays one line a user can act on.
    log.info("the query that selected no slides:\n%s", query)
    raise CohortError(f"cohort selects no slides: {detail} (the query is in logs/cohort/cohort.log)")
