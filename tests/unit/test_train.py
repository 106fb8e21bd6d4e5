"""The training side without a server: the level's place in its pyramid, the CLAM/TRIDENT h5 file, a row's
parsing and the reader's bounded cache. Reading patches by range is tested end to end (tests/e2e/test_patches.py)."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from slidestock.errors import SlidestockError
from slidestock.plan.levels import Level, pyramid_index
from slidestock.plan.planner import pyramid_indices
from slidestock.tidy import owner_of
from slidestock.train.layouts import clam_attributes, read_coords_h5, trident_attributes, write_coords_h5
from slidestock.train.reader import PatchReader, PlannedPatch

VOLUME = ("DERIVED", "PRIMARY", "VOLUME", "RESAMPLED")


def level(uid: str, size: tuple[int, int], flavor: tuple[str, ...] = VOLUME) -> Level:
    return Level(uid, f"uuid-{uid}", flavor, size, 0.25, "1.2.840.10008.1.2.4.50", 1000)


def test_a_levels_place_counts_distinct_volume_sizes_finest_first() -> None:
    levels = [
        level("3", (2500, 1875)),
        level("1", (40000, 30000), ("ORIGINAL", "PRIMARY", "VOLUME", "NONE")),
        level("2a", (10000, 7500)),
        level("2b", (10000, 7500)),  # a concatenation's second part: the same level
        level("label", (800, 600), ("ORIGINAL", "PRIMARY", "LABEL", "NONE")),
    ]
    assert [pyramid_index(levels, size) for size in [(40000, 30000), (10000, 7500), (2500, 1875)]] == [0, 1, 2]
    assert pyramid_index(levels, (800, 600)) == -1  # a label is no level of the pyramid
    plan = pd.DataFrame(
        {
            "SeriesInstanceUID": ["s1", "s1", "gdc-slide"],
            "level_columns": [10000.0, float("nan"), 4000.0],
            "level_rows": [7500.0, float("nan"), 3000.0],
        }
    )
    assert pyramid_indices(plan, {"s1": levels}) == [1, -1, -1]  # no level planned; a series without levels


def test_the_h5_files_hold_level0_corners_and_the_attributes_clam_and_trident_read(tmp_path: Path) -> None:
    # A patch of 256 px at 0.5 µm/px cut from the /4 level (1.0108 µm/px) of a 40x TCGA scan (0.2527 µm/px).
    span = (256 * 0.5 / 1.0108, 256 * 0.5 / 1.0108)
    rows = [{"x_px": 4 * 100, "y_px": 4 * 200}, {"x_px": 4 * 612, "y_px": 0}]
    clam = tmp_path / "S1.h5"
    write_coords_h5(clam, rows, clam_attributes("S1", (10000, 7500), (40000, 30000), 1, span))  # type: ignore[arg-type]
    coords, found = read_coords_h5(clam)
    assert coords.dtype == np.int64
    assert coords.tolist() == [[400, 800], [2448, 0]]
    assert found["patch_size"] == math.ceil(256 * 0.5 / 1.0108) == 127  # read at patch_level, CLAM's meaning
    assert found["patch_level"] == 1
    assert found["level_dim"].tolist() == found["downsampled_level_dim"].tolist() == [10000, 7500]
    assert found["downsample"].tolist() == found["level_downsample"].tolist() == [4.0, 4.0]
    assert found["name"] == "S1"
    assert "target_magnification" not in found  # TRIDENT would read patch_size as its target size
    trident = tmp_path / "S1_patches.h5"
    write_coords_h5(trident, rows, trident_attributes("S1", (40000, 30000), 0.2527, 256, 0.5))  # type: ignore[arg-type]
    coords, found = read_coords_h5(trident)
    assert coords.tolist() == [[400, 800], [2448, 0]]
    assert found["patch_size"] == 256  # at the target magnification, TRIDENT's meaning
    assert found["patch_size_level0"] == round(256 * 0.5 / 0.2527) == 507
    # TRIDENT's WSIPatcher reads round(patch_size * level0 spacing ratio) level-0 pixels: the same 507.
    assert round(found["patch_size"] * found["level0_magnification"] / found["target_magnification"]) == 507
    assert found["target_magnification"] == 20.0
    assert (found["level0_width"], found["level0_height"], found["overlap"]) == (40000, 30000, 0)
    assert not list(tmp_path.glob(".*partial"))
    with h5py.File(clam) as h5:  # as CLAM's extract_features_fp.py opens it
        assert h5["coords"].attrs["patch_level"] == 1
        assert h5["coords"].shape == (2, 2)
    write_coords_h5(tmp_path / "none.h5", [], {"name": "none"})
    assert read_coords_h5(tmp_path / "none.h5")[0].shape == (0, 2)  # a slide with no patch: an empty (0, 2) array


def test_a_file_of_a_slide_is_owned_by_it_whatever_its_name_adds() -> None:
    owners = {"TCGA-AB_1234", "TCGA-AB"}
    assert owner_of("TCGA-AB_1234_patches.h5", owners) == "TCGA-AB_1234"  # TRIDENT's name
    assert owner_of("TCGA-AB_1234.h5", owners) == "TCGA-AB_1234"
    assert owner_of("TCGA-AB.json", owners) == "TCGA-AB"
    assert owner_of("TCGA-AC_patches.h5", owners) is None


ROW = {
    "slide_id": "S1",
    "patch_id": "S1_00000",
    "x_level_px": 300,
    "y_level_px": 500,
    "level_columns": 1000,
    "level_rows": 800,
    "size_px": 256,
    "frames": json.dumps([[5, 0, 1000, 200], [6, 0, 1208, 180]]),
    "decoding": json.dumps(
        {
            "codec": "dicom",
            "transfer_syntax": "1.2.840.10008.1.2.4.50",
            "tile_px": [256, 256],
            "items": [True],
            "span_px": [255.5, 255.5],
            "urls": ["s3://bucket/key.dcm"],
        }
    ),
}


def test_a_row_says_its_tiles_and_where_their_frames_are() -> None:
    planned = PlannedPatch.of_row(ROW)
    assert planned.tiles == [5, 6, 9, 10]  # 4 tiles across: the crop spans columns 1-2, rows 1-2
    assert planned.frames == {5: (0, 1000, 200), 6: (0, 1208, 180)}  # 9 and 10 not stored: background
    assert planned.span == (255.5, 255.5)


def test_a_row_without_what_reading_takes_is_named() -> None:
    with pytest.raises(SlidestockError, match=r"a patch row without \['frames', 'decoding'\]"):
        PlannedPatch.of_row({k: v for k, v in ROW.items() if k not in ("frames", "decoding")})
    old = {**ROW, "frames": None}
    with pytest.raises(SlidestockError, match=r"S1: patch S1_00000 has no frame ranges .*: run the workflow\)"):
        PlannedPatch.of_row(old)


def test_the_cache_keeps_within_its_bound_and_a_pickled_reader_starts_afresh() -> None:
    reader = PatchReader("http://127.0.0.1:9", cache_bytes=3 * 256 * 256 * 3)
    tile = np.zeros((256, 256, 3), dtype=np.uint8)
    for k in range(10):
        reader._keep(("s3://b/k", k), tile)
    assert reader._cached_bytes == 3 * tile.nbytes
    assert [key[1] for key in reader._cache] == [7, 8, 9]  # the least recently used dropped first
    copy = pickle.loads(pickle.dumps(reader))
    assert copy._cached_bytes == 0
    assert (copy.endpoint, copy.cache_bytes) == (reader.endpoint, reader.cache_bytes)
