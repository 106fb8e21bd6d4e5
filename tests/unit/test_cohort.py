"""Cohort selection on the real idc-index table and on the demo tables."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import duckdb
import idc_index_data
import pandas as pd
import pyarrow.parquet as pq
import pytest

from slidestock.errors import CohortError, ConfigError
from slidestock.select.cohort import Cohort, CohortSpec, allocate, select_cohort
from slidestock.select.lockfile import lock_frame, lock_text, read_lock, slide_id
from slidestock.select.sources import TablePaths, connect, instance_levels
from slidestock_testkit.indextables import arrow_table

REAL_INDEX = Path(str(idc_index_data.IDC_INDEX_PARQUET_FILEPATH))
BRCA = {"collection_id": ["tcga_brca"], "Modality": ["SM"]}


@pytest.fixture(scope="module")
def real_tables(tmp_path_factory: pytest.TempPathFactory, demo_build: dict[str, Path]) -> TablePaths:
    """The bundled idc-index `index` (all of IDC v25) with an sm_index row per SM series.

    sm_index is not bundled; the rows made here carry the real schema and a
    barcode-like ContainerIdentifier, which is all selection needs.
    """
    folder = tmp_path_factory.mktemp("real")
    sm = pd.read_parquet(REAL_INDEX, columns=["SeriesInstanceUID", "PatientID", "Modality"])
    sm = sm[sm["Modality"] == "SM"]
    rows = [
        {"SeriesInstanceUID": uid, "ContainerIdentifier": f"{patient}-slide", "ObjectiveLensPower": 40}
        for uid, patient in zip(sm["SeriesInstanceUID"], sm["PatientID"], strict=True)
    ]
    pq.write_table(arrow_table("sm_index", rows), folder / "sm_index.parquet")
    return TablePaths(REAL_INDEX, folder / "sm_index.parquet", demo_build["sm_instance_index"])


def draw(
    con: duckdb.DuckDBPyConnection, filters: dict[str, list[Any]], n: int | None, seed: int, **more: Any
) -> Cohort:
    return select_cohort(con, CohortSpec(filters=filters, n=n, seed=seed, **more), 25)


def expected_sample(index: pd.DataFrame, collection: str, n: int | None, seed: int) -> set[str]:
    """The draw recomputed independently: rank by md5("seed:uid"), then uid."""
    rows = index[(index["collection_id"] == collection) & (index["Modality"] == "SM")]
    keys = [hashlib.md5(f"{seed}:{uid}".encode()).hexdigest() for uid in rows["SeriesInstanceUID"]]
    ranked = rows.assign(key=keys).sort_values(["key", "SeriesInstanceUID"])
    return set(ranked["SeriesInstanceUID"].head(n) if n else ranked["SeriesInstanceUID"])


@pytest.fixture(scope="module")
def real_index() -> pd.DataFrame:
    return pd.read_parquet(REAL_INDEX, columns=["SeriesInstanceUID", "collection_id", "Modality"])


def test_real_index_holds_the_v25_sm_series(real_index: pd.DataFrame) -> None:
    assert int((real_index["Modality"] == "SM").sum()) == 76300


def test_sample_matches_independent_md5_ranking(real_tables: TablePaths, real_index: pd.DataFrame) -> None:
    cohort = draw(connect(real_tables), BRCA, 100, 42)
    brca = real_index[(real_index["collection_id"] == "tcga_brca") & (real_index["Modality"] == "SM")]
    assert cohort.n_candidates == len(brca)
    assert cohort.n_candidates > 1000
    assert len(cohort.slides) == 100
    assert set(cohort.slides["SeriesInstanceUID"]) == expected_sample(real_index, "tcga_brca", 100, 42)


def test_sample_does_not_depend_on_row_order_or_threads(real_tables: TablePaths, tmp_path: Path) -> None:
    shuffled = pd.read_parquet(REAL_INDEX).sample(frac=1.0, random_state=7)
    shuffled_path = tmp_path / "index.parquet"
    shuffled.to_parquet(shuffled_path, index=False)
    con = connect(real_tables)
    con.execute("SET threads = 1")
    original = draw(con, BRCA, 50, 3)
    other = connect(TablePaths(shuffled_path, real_tables.sm_index, real_tables.sm_instance_index))
    other.execute("SET threads = 2")
    again = draw(other, BRCA, 50, 3)
    assert lock_text(lock_frame(original, 25), {}) == lock_text(lock_frame(again, 25), {})


def test_different_seed_draws_different_slides(real_tables: TablePaths) -> None:
    first = set(draw(connect(real_tables), BRCA, 100, 42).slides["SeriesInstanceUID"])
    second = set(draw(connect(real_tables), BRCA, 100, 43).slides["SeriesInstanceUID"])
    assert len(first) == len(second) == 100
    assert len(first & second) < 50


def test_n_null_takes_every_candidate(real_tables: TablePaths, real_index: pd.DataFrame) -> None:
    cohort = draw(connect(real_tables), {"collection_id": ["tcga_ucs"]}, None, 1)
    assert len(cohort.slides) == cohort.n_candidates
    assert set(cohort.slides["SeriesInstanceUID"]) == expected_sample(real_index, "tcga_ucs", None, 1)


def test_unknown_column_names_the_nearest(real_tables: TablePaths) -> None:
    with pytest.raises(ConfigError, match=r"column 'colection_id' is not in .*did you mean collection_id"):
        draw(connect(real_tables), {"colection_id": ["tcga_brca"]}, 5, 1)


@pytest.mark.parametrize("typo", ["tcga-brca", "tcga_brac"])
def test_unknown_value_stops_with_nearest_and_logs_the_query(
    real_tables: TablePaths, typo: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="slidestock.select.cohort")
    with pytest.raises(CohortError) as info:
        draw(connect(real_tables), {"collection_id": [typo]}, 5, 1)
    message = str(info.value)
    assert message.startswith(
        f"cohort.filter: collection_id={typo!r} matches no series of IDC v25 (did you mean tcga_brca"
    )
    assert message.endswith("; every value of a filter must match some series")
    assert "\n" not in message


def test_one_unknown_value_of_a_list_stops_the_draw(real_tables: TablePaths) -> None:
    """Observed: [tcga_brca, tcga-luad] drew from tcga_brca alone, without a word."""
    with pytest.raises(CohortError) as info:
        draw(connect(real_tables), {"collection_id": ["tcga_brca", "tcga-luad"]}, 5, 1)
    assert str(info.value) == (
        "cohort.filter: collection_id='tcga-luad' matches no series of IDC v25 (did you mean tcga_luad, tcga_stad, "
        "tcga_read?); every value of a filter must match some series"
    )


def test_values_that_exist_but_never_together_log_the_query(
    real_tables: TablePaths, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="slidestock.select.cohort")
    with pytest.raises(CohortError) as info:
        draw(
            connect(real_tables), {"collection_id": ["tcga_brca"], "Modality": ["SM"], "PatientID": ["C3L-00001"]}, 5, 1
        )
    message = str(info.value)
    assert "no series has all of them together" in message
    assert message.endswith("(the query is in logs/cohort/cohort.log)")
    assert 'FROM "index"' in caplog.text


def test_list_column_matches_any_element(demo_build: dict[str, Path]) -> None:
    tables = TablePaths(demo_build["index"], demo_build["sm_index"], demo_build["sm_instance_index"])
    stain = {"staining_usingSubstance_CodeMeaning": ["water soluble eosin stain"]}
    assert draw(connect(tables), stain, None, 1).n_candidates == 6
    with pytest.raises(CohortError):
        draw(connect(tables), {"staining_usingSubstance_CodeMeaning": ["Congo red"]}, None, 1)


def test_lock_file_is_sorted_and_round_trips(demo_build: dict[str, Path], tmp_path: Path) -> None:
    tables = TablePaths(demo_build["index"], demo_build["sm_index"], demo_build["sm_instance_index"])
    frame = lock_frame(draw(connect(tables), {"collection_id": ["demo_luad"]}, None, 9), 25)
    text = lock_text(frame, {"seed": 9, "query": "SELECT 1\nFROM x"})
    assert text.startswith("# seed: 9\n# query: SELECT 1\n#   FROM x\nslide_id\t")
    path = tmp_path / "cohort.tsv"
    path.write_text(text)
    back = read_lock(path)
    assert back["slide_id"].tolist() == sorted(back["slide_id"])
    assert back["slide_id"].tolist() == [
        "TCGA-D2-A005-01Z-00-DX1_243e082b",
        "TCGA-D2-A006-01Z-00-DX1_9f7332a0",
    ]
    assert back["idc_version"].tolist() == ["25", "25"]


def test_instances_of_demo_series(demo_build: dict[str, Path]) -> None:
    tables = TablePaths(demo_build["index"], demo_build["sm_index"], demo_build["sm_instance_index"])
    con = connect(tables)
    series = pd.read_parquet(demo_build["index"])["SeriesInstanceUID"].tolist()
    levels = instance_levels(con, series)
    flavors = sorted(sorted(lv.flavor for lv in lvs) for lvs in levels.values())
    assert flavors.count(["VOLUME"] * 4) == 4
    assert ["LABEL", "OVERVIEW", "VOLUME", "VOLUME", "VOLUME", "VOLUME"] in flavors
    assert ["VOLUME"] * 3 in flavors
    base_spacings = {min(lv.spacing_um or 99 for lv in lvs) for lvs in levels.values()}
    assert base_spacings == {0.25}


@pytest.mark.parametrize(
    ("container", "patient", "expected"),
    [
        ("TCGA-A1-A0SB-01Z-00-DX1", "TCGA-A1-A0SB", "TCGA-A1-A0SB-01Z-00-DX1_0f1e2d3c"),
        (None, "P 7/../x", "P_7_.._x_0f1e2d3c"),
        ("../../etc/passwd", None, "etc_passwd_0f1e2d3c"),
        ("$(rm -rf ~);", None, "rm_-rf_0f1e2d3c"),
        (None, None, "series_0f1e2d3c"),
    ],
)
def test_slide_ids_are_safe_file_names(container: str | None, patient: str | None, expected: str) -> None:
    assert slide_id(container, patient, "0f1e2d3c-aaaa-bbbb-cccc-000000000000") == expected


@pytest.mark.parametrize(
    ("n", "available", "expected"),
    [
        (10, {"a": 2, "b": 10, "c": 10}, {"a": 2, "b": 4, "c": 4}),
        (7, {"b": 5, "a": 5}, {"a": 4, "b": 3}),
        (100, {"a": 3, "b": 1}, {"a": 3, "b": 1}),
        (None, {"a": 3, "b": 1}, {"a": 3, "b": 1}),
        (5, {"a": 0, "b": 9}, {"a": 0, "b": 5}),
    ],
)
def test_allocate_splits_evenly_and_hands_on_what_a_short_stratum_lacks(
    n: int | None, available: dict[str, int], expected: dict[str, int]
) -> None:
    assert allocate(n, available) == expected


def test_stratified_draw_on_real_index(real_tables: TablePaths, real_index: pd.DataFrame) -> None:
    collections = ["tcga_brca", "tcga_ucs", "tcga_chol"]
    cohort = draw(connect(real_tables), {"collection_id": collections}, 150, 5, stratify_by="collection_id")
    sm = real_index[real_index["Modality"] == "SM"]
    sizes = sm[sm["collection_id"].isin(collections)].groupby("collection_id").size()
    quotas = allocate(150, sizes.to_dict())
    assert cohort.strata == {c: {"available": int(sizes[c]), "taken": quotas[c]} for c in collections}
    assert sum(quotas.values()) == 150
    for collection in collections:
        taken = set(cohort.slides.loc[cohort.slides["collection_id"] == collection, "SeriesInstanceUID"])
        assert taken == expected_sample(real_index, collection, quotas[collection], 5)


def test_one_slide_per_patient(real_tables: TablePaths) -> None:
    index = pd.read_parquet(REAL_INDEX, columns=["SeriesInstanceUID", "PatientID", "collection_id", "Modality"])
    brca = index[(index["collection_id"] == "tcga_brca") & (index["Modality"] == "SM")]
    cohort = draw(connect(real_tables), {"collection_id": ["tcga_brca"]}, None, 8, one_per_patient=True)
    assert len(cohort.slides) == brca["PatientID"].nunique() < len(brca)
    keys = brca.assign(key=[hashlib.md5(f"8:{u}".encode()).hexdigest() for u in brca["SeriesInstanceUID"]])
    first = keys.sort_values(["key", "SeriesInstanceUID"]).groupby("PatientID").head(1)
    assert set(cohort.slides["SeriesInstanceUID"]) == set(first["SeriesInstanceUID"])


def test_older_release_selects_the_series_it_held(real_tables: TablePaths) -> None:
    index = pd.read_parquet(REAL_INDEX)
    prior = pd.read_parquet(idc_index_data.PRIOR_VERSIONS_INDEX_PARQUET_FILEPATH)
    current = index[
        (index["collection_id"] == "tcga_brca")
        & (index["Modality"] == "SM")
        & (index["series_revised_idc_version"] <= 19)
    ]
    older = prior[
        (prior["collection_id"] == "tcga_brca")
        & (prior["Modality"] == "SM")
        & (prior["min_idc_version"] <= 19)
        & (prior["max_idc_version"] >= 19)
    ]
    spec = CohortSpec(filters={"collection_id": ["tcga_brca"]}, n=None, seed=1)
    cohort = select_cohort(connect(real_tables), spec, 19)
    assert cohort.n_candidates == len(current) + len(older)
    assert len(older) > 0
    slides = cohort.slides.set_index("crdc_series_uuid")
    assert set(slides.index) == set(current["crdc_series_uuid"]) | set(older["crdc_series_uuid"])
    assert (slides.loc[list(older["crdc_series_uuid"]), "in_current_index"] == False).all()  # noqa: E712
    assert set(slides.loc[list(older["crdc_series_uuid"]), "aws_bucket"]) <= set(older["aws_bucket"])


def test_sql_file_with_named_parameters_replaces_filter(real_tables: TablePaths, tmp_path: Path) -> None:
    query = tmp_path / "query.sql"
    query.write_text('SELECT SeriesInstanceUID FROM "index" WHERE collection_id = $collection AND PatientID < $below')
    spec = CohortSpec(sql=query, sql_params={"collection": "tcga_brca", "below": "TCGA-B"}, n=None, seed=1)
    cohort = select_cohort(connect(real_tables), spec, 25)
    index = pd.read_parquet(REAL_INDEX, columns=["SeriesInstanceUID", "PatientID", "collection_id", "Modality"])
    want = index[
        (index["collection_id"] == "tcga_brca") & (index["PatientID"] < "TCGA-B") & (index["Modality"] == "SM")
    ]
    assert set(cohort.slides["SeriesInstanceUID"]) == set(want["SeriesInstanceUID"])
    assert len(want) > 10


def test_sql_file_without_series_column_is_named(real_tables: TablePaths, tmp_path: Path) -> None:
    query = tmp_path / "bad.sql"
    query.write_text('SELECT PatientID FROM "index" LIMIT 3')
    with pytest.raises(CohortError, match=r"bad.sql: returns columns \['PatientID'\]; expected a SeriesInstanceUID"):
        select_cohort(connect(real_tables), CohortSpec(sql=query), 25)


def demo_tables_of(demo_build: dict[str, Path]) -> TablePaths:
    return TablePaths(demo_build["index"], demo_build["sm_index"], demo_build["sm_instance_index"])


def test_idc_manifest_selects_its_series(demo_build: dict[str, Path], tmp_path: Path) -> None:
    index = pd.read_parquet(demo_build["index"]).sort_values("crdc_series_uuid")
    chosen = index["crdc_series_uuid"].tolist()[:2]
    manifest = tmp_path / "manifest.s5cmd"
    manifest.write_text(
        "# from the IDC portal\n\n" + "".join(f"cp s3://idc-open-data/{u}/* .\n" for u in chosen) + "   \n"
    )
    spec = CohortSpec(source="idc_manifest", manifest=manifest)
    cohort = select_cohort(connect(demo_tables_of(demo_build)), spec, 25)
    assert sorted(cohort.slides["crdc_series_uuid"]) == chosen


def test_idc_manifest_series_missing_from_index_is_an_error(demo_build: dict[str, Path], tmp_path: Path) -> None:
    manifest = tmp_path / "m.s5cmd"
    manifest.write_text("cp s3://idc-open-data/00000000-0000-0000-0000-000000000000/* .\n")
    with pytest.raises(CohortError, match=r"1 of 1 series are not SM series of this IDC release"):
        select_cohort(connect(demo_tables_of(demo_build)), CohortSpec(source="idc_manifest", manifest=manifest), 25)


def test_gdc_manifest_matches_barcodes_and_keeps_the_rest(demo_build: dict[str, Path], tmp_path: Path) -> None:
    manifest = tmp_path / "gdc.tsv"
    rows = [
        ("0b2e1f4c-1111-4b5b-9c1d-000000000001", "TCGA-D1-A001-01Z-00-DX1.AAAA.svs"),
        ("0b2e1f4c-1111-4b5b-9c1d-000000000002", "TCGA-D2-A006-01Z-00-DX1.BBBB.svs"),
        ("0b2e1f4c-1111-4b5b-9c1d-000000000003", "TCGA-ZZ-Z999-01Z-00-DX1.CCCC.svs"),
    ]
    manifest.write_text(
        "id\tfilename\tmd5\tsize\tstate\n" + "".join(f"{i}\t{f}\t{'a' * 32}\t1000\treleased\n" for i, f in rows)
    )
    cohort = select_cohort(
        connect(demo_tables_of(demo_build)), CohortSpec(source="gdc_manifest", manifest=manifest), 25
    )
    frame = lock_frame(cohort, 25).set_index("gdc_file_id")
    assert cohort.unmatched == 1
    assert frame.loc[rows[0][0], "ContainerIdentifier"] == "TCGA-D1-A001-01Z-00-DX1"
    assert frame.loc[rows[0][0], "fetch_from"] == "idc"
    assert isinstance(frame.loc[rows[0][0], "SeriesInstanceUID"], str)
    unmatched = frame.loc[rows[2][0]]
    assert unmatched["fetch_from"] == "gdc"
    assert unmatched["slide_id"] == "TCGA-ZZ-Z999-01Z-00-DX1_0b2e1f4c"
    assert unmatched["gdc_filename"] == rows[2][1]


def test_lock_source_reproduces_the_locked_rows(demo_build: dict[str, Path], tmp_path: Path) -> None:
    tables = demo_tables_of(demo_build)
    original = lock_frame(draw(connect(tables), {"Modality": ["SM"]}, 3, 77), 25)
    path = tmp_path / "cohort.tsv"
    path.write_text(lock_text(original, {"seed": 77}))
    again = lock_frame(select_cohort(connect(tables), CohortSpec(source="lock", manifest=path, n=1, seed=1), 25), 25)
    assert lock_text(again, {}) == lock_text(original, {})


def test_lock_of_another_release_is_refused(demo_build: dict[str, Path], tmp_path: Path) -> None:
    original = lock_frame(draw(connect(demo_tables_of(demo_build)), {"Modality": ["SM"]}, 2, 1), 24)
    path = tmp_path / "cohort.tsv"
    path.write_text(lock_text(original, {}))
    with pytest.raises(ConfigError, match=r"a lock file of IDC version 24; cohort.idc_version resolves to 25"):
        select_cohort(connect(demo_tables_of(demo_build)), CohortSpec(source="lock", manifest=path), 25)
