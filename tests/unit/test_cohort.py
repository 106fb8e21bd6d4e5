"""Cohort selection on the real idc-index table and on the demo tables."""

from __future__ import annotations

import hashlib
from pathlib import Path

import idc_index_data
import pandas as pd
import pyarrow.parquet as pq
import pytest

from slidestock.cohort import (
    TablePaths,
    connect,
    instance_levels,
    lock_frame,
    lock_text,
    read_lock,
    select_cohort,
    slide_id,
)
from slidestock.errors import CohortError, ConfigError
from slidestock.synthetic import arrow_table

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
    cohort = select_cohort(connect(real_tables), BRCA, 100, 42)
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
    original = select_cohort(con, BRCA, 50, 3)
    other = connect(TablePaths(shuffled_path, real_tables.sm_index, real_tables.sm_instance_index))
    other.execute("SET threads = 2")
    again = select_cohort(other, BRCA, 50, 3)
    assert lock_text(lock_frame(original, 25), {}) == lock_text(lock_frame(again, 25), {})


def test_different_seed_draws_different_slides(real_tables: TablePaths) -> None:
    first = set(select_cohort(connect(real_tables), BRCA, 100, 42).slides["SeriesInstanceUID"])
    second = set(select_cohort(connect(real_tables), BRCA, 100, 43).slides["SeriesInstanceUID"])
    assert len(first) == len(second) == 100
    assert len(first & second) < 50


def test_n_null_takes_every_candidate(real_tables: TablePaths, real_index: pd.DataFrame) -> None:
    cohort = select_cohort(connect(real_tables), {"collection_id": ["tcga_ucs"]}, None, 1)
    assert len(cohort.slides) == cohort.n_candidates
    assert set(cohort.slides["SeriesInstanceUID"]) == expected_sample(real_index, "tcga_ucs", None, 1)


def test_unknown_column_names_the_nearest(real_tables: TablePaths) -> None:
    with pytest.raises(ConfigError, match=r"column 'colection_id' is not in .*did you mean collection_id"):
        select_cohort(connect(real_tables), {"colection_id": ["tcga_brca"]}, 5, 1)


def test_unknown_value_stops_with_nearest_and_query(real_tables: TablePaths) -> None:
    with pytest.raises(CohortError) as info:
        select_cohort(connect(real_tables), {"collection_id": ["tcga-brca"]}, 5, 1)
    message = str(info.value)
    assert "collection_id='tcga-brca' matches no series (did you mean tcga_brca" in message
    assert 'FROM "index"' in message


def test_list_column_matches_any_element(demo_build: dict[str, Path]) -> None:
    tables = TablePaths(demo_build["index"], demo_build["sm_index"], demo_build["sm_instance_index"])
    stain = {"staining_usingSubstance_CodeMeaning": ["water soluble eosin stain"]}
    assert select_cohort(connect(tables), stain, None, 1).n_candidates == 6
    with pytest.raises(CohortError):
        select_cohort(connect(tables), {"staining_usingSubstance_CodeMeaning": ["Congo red"]}, None, 1)


def test_lock_file_is_sorted_and_round_trips(demo_build: dict[str, Path], tmp_path: Path) -> None:
    tables = TablePaths(demo_build["index"], demo_build["sm_index"], demo_build["sm_instance_index"])
    frame = lock_frame(select_cohort(connect(tables), {"collection_id": ["demo_luad"]}, None, 9), 25)
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
