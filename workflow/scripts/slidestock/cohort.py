"""Cohort selection: DuckDB over the idc-index tables, a filter and a seeded sample.

Every source (``idc``, ``idc_parquet``, ``idc_manifest``, ``gdc_manifest``,
``lock``) ends as the same views, ``index``, ``sm_index``,
``sm_instance_index`` and ``prior_versions_index``, so selection and planning
are one code path. The SQL lives in ``workflow/sql/``; config values are bound
as parameters or passed as DuckDB expressions, never spliced into query text.
The result is the lock file ``cohort.tsv``: same config, same bytes.
"""

from __future__ import annotations

import difflib
import glob
import hashlib
import importlib.metadata
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from slidestock.errors import CohortError, ConfigError, UnreachableError
from slidestock.levels import Level
from slidestock.manifests import read_gdc_manifest, read_idc_manifest

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
SOURCES = ("idc", "idc_parquet", "idc_manifest", "gdc_manifest", "lock")

LOCK_COLUMNS = (
    "slide_id",
    "fetch_from",
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
    "in_current_index",
    "gdc_file_id",
    "gdc_filename",
    "gdc_md5",
    "gdc_size",
    "stratum",
)
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_NULL_STRATUM = "(null)"


@dataclass(frozen=True)
class TablePaths:
    """Parquet files of the idc-index tables a cohort is drawn from."""

    index: Path
    sm_index: Path
    sm_instance_index: Path
    prior_versions_index: Path | None = None

    def as_dict(self) -> dict[str, Path]:
        tables = {"index": self.index, "sm_index": self.sm_index, "sm_instance_index": self.sm_instance_index}
        tables["prior_versions_index"] = self.prior_versions_index or bundled_prior_versions()
        return tables


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
    def from_config(cls, cohort: Mapping[str, Any], base: Path) -> CohortSpec:
        def path(key: str) -> Path | None:
            value = cohort.get(key)
            return None if value is None else base / Path(value)

        return cls(
            source=cohort.get("source", "idc"),
            idc_version=cohort.get("idc_version", "current"),
            filters=dict(cohort.get("filter") or {}),
            sql=path("sql"),
            sql_params=dict(cohort.get("sql_params") or {}),
            manifest=path("manifest"),
            n=cohort.get("n"),
            seed=int(cohort.get("seed", 42)),
            stratify_by=cohort.get("stratify_by"),
            one_per_patient=bool(cohort.get("one_per_patient", False)),
        )


@dataclass(frozen=True)
class Cohort:
    """The selected slides and how they were selected."""

    slides: pd.DataFrame
    n_candidates: int
    query: str
    strata: dict[str, dict[str, int]] = field(default_factory=dict)
    unmatched: int = 0


def read_sql(name: str) -> str:
    """The text of ``workflow/sql/<name>.sql``."""
    return (SQL_DIR / f"{name}.sql").read_text()


def installed_idc_version() -> int:
    """The IDC release of the installed idc-index-data wheel (its major version), from its metadata."""
    return int(importlib.metadata.version("idc-index-data").split(".")[0])


def bundled_prior_versions() -> Path:
    import idc_index_data

    path = idc_index_data.PRIOR_VERSIONS_INDEX_PARQUET_FILEPATH
    assert path is not None
    return Path(path)


def resolve_idc_version(requested: int | str) -> int:
    """The IDC release number for ``cohort.idc_version`` (``current`` or an integer)."""
    installed = installed_idc_version()
    if requested == "current":
        return installed
    if not isinstance(requested, int) or requested < 1:
        raise ConfigError(f"cohort.idc_version: got {requested!r}; expected 'current' or a release number")
    if requested > installed:
        raise ConfigError(
            f"cohort.idc_version: got {requested}; the installed idc-index-data holds IDC "
            f"v{installed}. Upgrade it (pip install --upgrade idc-index-data, or pin "
            f"idc-index-data=={requested}.* in requirements.txt) or use idc_version: current"
        )
    return requested


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
        url = client.indices_overview[name].get("url") or name
        try:
            client.fetch_index(name)
        except OSError as err:  # requests' connection errors are OSErrors
            raise UnreachableError(
                f"cannot download idc-index's {name} table from {url}: {type(err).__name__}. Check the network "
                "or proxy; or, on a node that cannot reach it, fetch the tables where it can "
                "(idc_index.IDCClient().fetch_index) and set cohort.tables to them"
            ) from None
        path = client.indices_overview[name]["file_path"]
        if not path:
            raise CohortError(f"idc-index could not fetch the {name} table; check the network")
        paths[name] = Path(path)
    assert idc_index_data.IDC_INDEX_PARQUET_FILEPATH is not None
    return TablePaths(idc_index_data.IDC_INDEX_PARQUET_FILEPATH, paths["sm_index"], paths["sm_instance_index"])


def connect(tables: TablePaths) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the tables as views named as idc-index names them."""
    con = duckdb.connect()
    for name, path in tables.as_dict().items():
        if not Path(path).is_file():
            raise ConfigError(f"cohort.tables.{name}: file {str(path)!r} not found; expected a Parquet file")
        con.read_parquet(str(path)).create_view(name)
    return con


def parquet_views(con: duckdb.DuckDBPyConnection, files: str | list[str]) -> duckdb.DuckDBPyConnection:
    """Views of the IDC Parquet export (``dicom_all`` files) under the idc-index table names.

    DuckDB reads only the columns the views name. The export is one release,
    so ``prior_versions_index`` is an empty view.
    """
    con.read_parquet(files, union_by_name=True).create_view("dicom_all")
    for name in ("index", "sm_index", "sm_instance_index"):
        con.sql(read_sql(f"parquet_{name}")).create_view(name)
    con.read_parquet(str(bundled_prior_versions())).limit(0).create_view("prior_versions_index")
    return con


EXPORT_URL = "s3://idc-open-metadata/bigquery_export/idc_v{version}/dicom_all/"
_HOST_PORT = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$")


@dataclass(frozen=True)
class ParquetSource:
    """Where the IDC Parquet export is and how to read it (``cohort.parquet``)."""

    url: str
    mode: str  # "in_place": DuckDB reads the needed columns over S3; "sync": s5cmd copies first
    cache: Path
    endpoint: str

    @property
    def local(self) -> bool:
        """A folder or glob on this machine (an export staged on a cluster's shared disk), not an s3:// URL."""
        return not self.url.startswith("s3://")

    def files(self) -> str | list[str]:
        """What DuckDB reads: an S3 glob, the synced local files, or the local folder's (or glob's) files."""
        if self.local:
            folder = Path(self.url)
            pattern = str(folder / "*.parquet") if folder.is_dir() else self.url
            found = sorted(glob.glob(pattern))
            if not found:
                raise CohortError(
                    f"cohort.parquet.url: no .parquet files at {self.url!r}; expected a folder (or glob) "
                    "of the export's dicom_all Parquet files"
                )
            return found
        if self.mode == "in_place":
            return self.url.rstrip("/") + "/*.parquet"
        from slidestock.fetch import sync_prefix

        sync_prefix(self.url, self.cache, self.endpoint)
        files = sorted(str(p) for p in self.cache.glob("*.parquet"))
        if not files:
            raise CohortError(f"cohort.parquet: no .parquet files under {self.url} (synced to {self.cache})")
        return files


def _load_httpfs(con: duckdb.DuckDBPyConnection, endpoint: str) -> None:
    """DuckDB's httpfs, from the duckdb-extension-httpfs wheel when installed, with an anonymous S3 secret."""
    try:
        import duckdb_extension_httpfs

        found = sorted(Path(duckdb_extension_httpfs.__file__).parent.rglob("httpfs.duckdb_extension"))
        con.execute(f"LOAD '{found[-1]}'")
    except (ImportError, IndexError):
        con.execute("INSTALL httpfs")
        con.execute("LOAD httpfs")
    from slidestock.fetch import endpoint_url

    custom = endpoint_url(endpoint)
    if custom is None:
        con.execute("CREATE SECRET idc (TYPE s3, PROVIDER config, REGION 'us-east-1')")
        return
    scheme, _, host = custom.partition("://")
    host = host.rstrip("/")
    if not _HOST_PORT.match(host):
        raise ConfigError(f"fetch.endpoint: host {host!r}; expected host or host:port")
    # A secret takes no bound parameters; the host was checked against a strict pattern above.
    con.execute(
        f"CREATE SECRET idc (TYPE s3, PROVIDER config, ENDPOINT '{host}', URL_STYLE 'path', "
        f"USE_SSL {'true' if scheme == 'https' else 'false'}, REGION 'us-east-1')"
    )


def connect_parquet(source: ParquetSource) -> duckdb.DuckDBPyConnection:
    """A connection whose idc-index views come from the IDC Parquet export."""
    con = duckdb.connect()
    if source.mode == "in_place" and not source.local:
        _load_httpfs(con, source.endpoint)
    try:
        return parquet_views(con, source.files())
    except duckdb.Error as err:
        raise CohortError(f"cohort.parquet: cannot read the export at {source.url}: {err}") from err


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
    relation = apply_filter(con.sql(read_sql("candidates"), params={"idc_version": version}), spec.filters)
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


def _raise_empty(
    con: duckdb.DuckDBPyConnection, filters: Mapping[str, Sequence[Any]], query: str, version: int
) -> None:
    hints = []
    for column, values in sorted(filters.items()):
        present = _present_values(con, column, version)
        for value in values:
            if str(value) not in present:
                near = difflib.get_close_matches(str(value), present, n=3)
                hint = f" (did you mean {', '.join(near)}?)" if near else ""
                hints.append(f"{column}={value!r} matches no series{hint}")
    detail = "; ".join(hints) if hints else "each value exists, but no series has all of them together"
    # The query goes to the log; the message stays one line a user can act on.
    log.info("the query that selected no slides:\n%s", query)
    raise CohortError(f"cohort selects no slides: {detail} (the query is in logs/cohort/cohort.log)")


def slide_id(container_id: str | None, patient_id: str | None, unique: str) -> str:
    """A file-name-safe, unique slide id: the slide barcode and 8 hex digits of a UUID."""
    stem = container_id or patient_id or "series"
    stem = _UNSAFE_ID_CHARS.sub("_", stem).strip("._-") or "series"
    return f"{stem}_{unique.replace('-', '')[:8]}"


def _none_if_missing(value: Any) -> Any:
    """None for every flavour of missing pandas hands out (None, NaN, NA)."""
    return None if value is None or (not isinstance(value, (list, tuple)) and pd.isna(value)) else value


def lock_frame(cohort: Cohort, idc_version: int) -> pd.DataFrame:
    """The lock file's rows: one per slide, sorted by slide id."""
    frame = cohort.slides.copy()
    for column in LOCK_COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    ids = []
    for row in frame.to_dict("records"):
        unique = _none_if_missing(row["crdc_series_uuid"]) or _none_if_missing(row["gdc_file_id"]) or ""
        stem = _none_if_missing(row["ContainerIdentifier"]) or _none_if_missing(row["gdc_filename"])
        ids.append(slide_id(stem, _none_if_missing(row["PatientID"]), unique))
    frame["slide_id"] = ids
    duplicated = frame["slide_id"][frame["slide_id"].duplicated()]
    if not duplicated.empty:
        raise CohortError(f"cohort: slide ids {sorted(set(duplicated))} are not unique; expected one per series")
    frame["idc_version"] = idc_version
    frame["gdc_size"] = frame["gdc_size"].map(lambda v: "" if _none_if_missing(v) is None else str(int(v)))
    frame["in_current_index"] = frame["in_current_index"].map(
        lambda v: "" if _none_if_missing(v) is None else str(bool(v)).lower()
    )
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
    """Read a ``cohort.tsv`` written by :func:`lock_text` (every value as text)."""
    if not path.is_file():
        raise CohortError(f"{path}: lock file not found")
    frame = pd.read_csv(path, sep="\t", comment="#", dtype=str, keep_default_na=False)
    missing = set(LOCK_COLUMNS) - set(frame.columns)
    if missing:
        raise CohortError(f"{path}: columns {sorted(missing)} missing; expected a slidestock cohort.tsv")
    return frame


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def instance_levels(con: duckdb.DuckDBPyConnection, series_uids: Sequence[str]) -> dict[str, list[Level]]:
    """The instances of each series as :class:`Level` values, keyed by SeriesInstanceUID."""
    rows = con.execute(read_sql("instances"), {"series": list(series_uids)}).fetchall()
    levels: dict[str, list[Level]] = {uid: [] for uid in series_uids}
    for series, sop, crdc, image_type, spacing_mm, cols, rows_px, syntax, size in rows:
        spacing = None if spacing_mm is None or math.isnan(spacing_mm) else round(float(spacing_mm) * 1000.0, 9)
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
