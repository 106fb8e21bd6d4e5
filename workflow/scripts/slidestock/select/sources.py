"""Where a cohort is drawn from: idc-index's tables, the IDC Parquet export, or given files, as DuckDB views.

Every source ends as the same views, ``index``, ``sm_index``, ``sm_instance_index`` and
``prior_versions_index``, so selection and planning are one code path. Queries live in
``workflow/sql/``.
"""

from __future__ import annotations

import glob
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from slidestock.config import with_defaults
from slidestock.errors import CohortError, ConfigError, UnreachableError
from slidestock.plan.levels import Level

SQL_DIR = Path(__file__).resolve().parents[3] / "sql"


def read_sql(name: str) -> str:
    """The text of ``workflow/sql/<name>.sql``."""
    return (SQL_DIR / f"{name}.sql").read_text()


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


def bundled_prior_versions() -> Path:
    import idc_index_data

    path = idc_index_data.PRIOR_VERSIONS_INDEX_PARQUET_FILEPATH
    assert path is not None
    return Path(path)


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
                "(idc_index.IDCClient().fetch_index) and set cohort.tables to them "
                "(config/README.md, cohort.tables, says how)"
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
        from slidestock.read.fetch import sync_prefix

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
    from slidestock.read.fetch import endpoint_url

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


def tables_of(config: Mapping[str, Any], base: Path) -> TablePaths | None:
    """Configured table paths (relative to ``base``), or None to use idc-index's tables."""
    tables = config["cohort"].get("tables")
    if not tables:
        return None
    prior = tables.get("prior_versions_index")
    return TablePaths(
        index=base / Path(tables["index"]),
        sm_index=base / Path(tables["sm_index"]),
        sm_instance_index=base / Path(tables["sm_instance_index"]),
        prior_versions_index=None if prior is None else base / Path(prior),
    )


def cohort_connection(config: Mapping[str, Any], version: int, base: Path) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the idc-index views of the configured source."""
    cohort = config["cohort"]
    if cohort["source"] == "idc_parquet":
        parquet = with_defaults("cohort.parquet", cohort.get("parquet") or {})
        source = ParquetSource(
            url=parquet["url"] or EXPORT_URL.format(version=version),
            mode=parquet["mode"],
            cache=base / Path(parquet["cache"]),
            endpoint=config["fetch"]["endpoint"],
        )
        return connect_parquet(source)
    return connect(tables_of(config, base) or idc_index_tables())


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
