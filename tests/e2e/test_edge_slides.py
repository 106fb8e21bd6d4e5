"""Awkward slides end to end: TILED_SPARSE, uncompressed frames, spacing only on the base level."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from slidestock_testkit import dicomseries, slides
from slidestock_testkit.s3server import S3Server, serving
from tests.e2e.runs import run_in

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def edge_s3(edge_build: dict[str, Path]) -> Any:
    with serving(edge_build["s3_root"]) as server:
        yield server


def edge_run(
    folder: Path, edge_build: dict[str, Path], server: S3Server, mpp: float, fmt: str = "png", **target: Any
) -> dict[str, dict[str, Any]]:
    tables = {name: edge_build[name] for name in ("index", "sm_index", "sm_instance_index")}
    top = {"target": {"mpp": mpp, "max_px": None, "format": fmt, **target}}
    run = run_in(folder, tables, server, top, filter={"collection_id": ["edge_cases"]})
    records = [json.loads(p.read_text()) for p in (run.workdir / "results/slides").glob("*.json")]
    report = pd.read_csv(run.workdir / "results/report/slides.csv").set_index("slide_id")
    for rec in records:
        rec["image"] = run.workdir / rec["output"]["path"] if rec["output"] else None
        rec["report"] = report.loc[rec["slide_id"]].to_dict()
    assert list((run.workdir / "scratch").iterdir()) == []
    return {rec["slide_id"].rsplit("_", 1)[0]: rec for rec in records}


def missing_area_px(edge_build: dict[str, Path], container: str) -> int:
    """Pixels of the base level that no frame covers, from the fixture's own plane positions."""
    index = pd.read_parquet(edge_build["index"]).set_index("SeriesInstanceUID")
    sm = pd.read_parquet(edge_build["sm_index"]).set_index("ContainerIdentifier")
    folder = (
        edge_build["s3_root"] / slides.BUCKET / index.loc[sm.loc[container, "SeriesInstanceUID"], "crdc_series_uuid"]
    )
    base = max(folder.glob("*.dcm"), key=lambda p: p.stat().st_size)
    ds = pydicom.dcmread(base, stop_before_pixels=True)
    width, height = int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows)
    covered = np.zeros((height, width), dtype=bool)
    for frame in ds.PerFrameFunctionalGroupsSequence:
        position = frame.PlanePositionSlideSequence[0]
        x, y = (
            int(position.ColumnPositionInTotalImagePixelMatrix) - 1,
            int(position.RowPositionInTotalImagePixelMatrix) - 1,
        )
        covered[y : y + int(ds.Rows), x : x + int(ds.Columns)] = True
    return int((~covered).sum())


def test_base_level_of_sparse_and_uncompressed_slides(
    tmp_path: Path, edge_build: dict[str, Path], edge_s3: S3Server
) -> None:
    recs = edge_run(tmp_path, edge_build, edge_s3, mpp=0.5)
    assert sorted(recs) == ["EDGE-MIXED-01", "EDGE-NOSPACING-01", "EDGE-RAW-01", "EDGE-SPARSE-01", "EDGE-UNSCALED-01"]
    unscaled = recs.pop("EDGE-UNSCALED-01")  # no spacing on any level, and no fallback configured
    assert unscaled["status"] == "failed"
    assert unscaled["error"].endswith(
        "no pixel spacing on any of its levels; expected one to reach 0.5 µm/px "
        "(or set target.fallback_max_px to size such slides by their long side)"
    )
    assert unscaled["image"] is None
    assert unscaled["report"]["status"] == "failed"
    for rec in recs.values():
        assert rec["status"] == "done", rec["error"]
        assert rec["output"]["size_px"] == [1300, 1000]
        with Image.open(rec["image"]) as png:
            assert png.size == (1300, 1000)
            assert 25400 / png.info["dpi"][0] == pytest.approx(0.5, rel=0.001)
    sparse = recs["EDGE-SPARSE-01"]["level"]
    assert sparse["organization"] == "TILED_SPARSE"
    assert sparse["missing_tiles"] > 0
    assert recs["EDGE-RAW-01"]["level"]["transfer_syntax"] == slides.EXPLICIT_VR_LE
    # Missing tiles are filled with white; the scanner's own background is (242, 241, 238).
    white = {k: int((np.asarray(Image.open(r["image"])) == 255).all(axis=2).sum()) for k, r in recs.items()}
    assert white["EDGE-SPARSE-01"] >= 0.8 * missing_area_px(edge_build, "EDGE-SPARSE-01") / 4  # at half the resolution
    # Elsewhere pure white is rare: real tissue's brightest glass (0.01 % of the image here, not whole tiles).
    assert max(white["EDGE-RAW-01"], white["EDGE-NOSPACING-01"], white["EDGE-MIXED-01"]) < 0.001 * 1300 * 1000
    # The ICC profile of the DICOM's optical path is carried into the image; none is invented.
    with Image.open(recs["EDGE-RAW-01"]["image"]) as png:
        assert png.info["icc_profile"] == dicomseries.srgb_profile()
    with Image.open(recs["EDGE-SPARSE-01"]["image"]) as png:
        assert "icc_profile" not in png.info


def test_spacing_derived_from_the_base_level(tmp_path: Path, edge_build: dict[str, Path], edge_s3: S3Server) -> None:
    rec = edge_run(tmp_path, edge_build, edge_s3, mpp=15.0, fmt="jpeg")["EDGE-NOSPACING-01"]
    assert rec["status"] == "done", rec["error"]
    level = rec["level"]
    assert level["spacing_derived"] is True
    assert level["header_spacing_um"] is None
    assert level["size_px"] == [162, 125]
    assert "derived from size ratio" in level["reason"]
    # 162 px at 0.25 * 2600 / 162 µm/px, resampled to 15 µm/px.
    assert rec["output"]["size_px"] == [
        math.floor(2600 * 0.25 / 15 + 0.5),
        math.floor(125 * 0.25 * 2600 / 162 / 15 + 0.5),
    ]
    assert rec["image"].suffix == ".jpg"
    with Image.open(rec["image"]) as jpeg:
        assert jpeg.format == "JPEG"
        assert 25400 / jpeg.info["dpi"][0] == pytest.approx(15.0, rel=0.02)


def test_two_volumes_of_one_size_are_chosen_deterministically(
    tmp_path: Path, edge_build: dict[str, Path], edge_s3: S3Server
) -> None:
    rec = edge_run(tmp_path, edge_build, edge_s3, mpp=15.0)["EDGE-MIXED-01"]
    instances = pd.read_parquet(edge_build["sm_instance_index"])
    same_series = instances[
        (instances["SeriesInstanceUID"] == rec["source"]["SeriesInstanceUID"])
        & (instances["TotalPixelMatrixColumns"] == 162)
    ]
    assert len(same_series) == 2
    assert rec["status"] == "done", rec["error"]
    assert rec["source"]["SOPInstanceUID"] == min(same_series["SOPInstanceUID"])
    assert rec["level"]["reason"].endswith("2 VOLUME instances of this size, took the first by SOPInstanceUID")


def test_slide_without_any_spacing_is_sized_by_the_fallback(
    tmp_path: Path, edge_build: dict[str, Path], edge_s3: S3Server
) -> None:
    recs = edge_run(tmp_path, edge_build, edge_s3, mpp=15.0, fallback_max_px=1000)
    rec = recs.pop("EDGE-UNSCALED-01")
    assert rec["status"] == "done", rec["error"]
    assert rec["target"] == {"mpp": 15.0, "max_px": None, "fallback_max_px": 1000, "format": "png"}
    level = rec["level"]
    assert level["reason"] == (
        "none of its 3 VOLUME levels has a pixel spacing: sized by target.fallback_max_px; "
        "smallest of 3 VOLUME levels with long side >= 1000 px (2600 px)"
    )
    assert level["size_px"] == [2600, 2000]
    assert level["header_spacing_um"] is None
    assert level["index_spacing_um"] is None
    # The long side at 1000 px; no resolution is claimed (0: unknown), in the file or the JSON.
    assert rec["output"]["size_px"] == [1000, 769]
    assert rec["output"]["spacing_um"] is None
    with Image.open(rec["image"]) as png:
        assert png.size == (1000, 769)
        assert png.info["dpi"] == (0, 0)
    assert math.isnan(rec["report"]["output_spacing_um"])
    assert rec["report"]["output_columns"] == 1000
    # Slides with a spacing are untouched by the fallback: 15 µm/px.
    for name, other in recs.items():
        assert other["status"] == "done", name
        assert other["output"]["spacing_um"][0] == pytest.approx(15.0, rel=0.02), name
