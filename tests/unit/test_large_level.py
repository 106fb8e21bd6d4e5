"""A single-level 40,000 x 40,000 px slide (only the base level exists) is reduced streaming, every tile right.

The fixture is a real DICOM WSI of 24,649 JPEG tiles (about 0.7 GB), written
tile by tile from a palette, so that what each tile should look like is
known; its tests are slow (``make test-fast`` leaves them out). Memory (under
1 GB for this slide) is measured by ``python benchmarks/downsample.py --large``,
not asserted here.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from slidestock.dicom import read_frame, read_header
from slidestock.output import write_image
from slidestock.reduce import openslide_reduced, read_level, resize_exact
from slidestock_testkit import dicomseries, slides


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> dicomseries.LargeLevel:
    return dicomseries.write_large_level(tmp_path_factory.mktemp("large") / "level.dcm", (40000, 40000), seed=3)


@pytest.mark.slow
def test_large_fixture_is_a_single_level_jpeg_slide(large: dicomseries.LargeLevel) -> None:
    ds = pydicom.dcmread(large.path, stop_before_pixels=True)
    assert (int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows)) == (40000, 40000)
    assert int(ds.NumberOfFrames) == 157 * 157 == large.tile_map.size
    assert str(ds.file_meta.TransferSyntaxUID) == slides.JPEG_BASELINE
    # Bigger than the 1 GB budget once read whole and split into frames, as reading it with pydicom does.
    assert large.path.stat().st_size > 600_000_000
    header = read_header(large.path)
    assert len(header.grid) == 157 * 157
    assert header.missing_tiles == 0


@pytest.mark.slow
def test_single_level_slide_is_reduced_streaming(large: dicomseries.LargeLevel, tmp_path: Path) -> None:
    level = read_level(large.path, scale=667 / 40000, threads=2)
    write_image(resize_exact(level.image, (667, 667)), tmp_path / "slide.png", (15.0, 15.0))
    # 0.25 µm/px to 15 µm/px: JPEG decoded at 1/8 (5000 px), then 3 x 3 box averages: 1666 whole blocks and
    # a last one of the 2 decoded pixels left (1667 px, the whole level); Lanczos does the last 2.5x.
    assert (level.decode_shrink, level.box) == (8, 3)
    reduced = level.image.numpy().astype(np.uint32)
    whole = 40000 // 24
    assert reduced.shape == (whole + 1, whole + 1, 3)
    with Image.open(tmp_path / "slide.png") as written:
        assert written.size == (667, 667)
        assert written.info["dpi"][0] == pytest.approx(25400 / 15.0, rel=1e-3)
    # Every tile landed where it belongs, reduced right: the reduced pixels wholly inside tile (row, col)
    # are the rounded 3 x 3 means of that palette tile as libjpeg decodes it at 1/8, read here on its own.
    header = read_header(large.path)
    palette = []
    for index in range(len(large.colours)):
        frame = header.grid[int(np.argmax(large.tile_map.ravel() == index))]
        assert frame is not None
        with Image.open(io.BytesIO(read_frame(large.path, frame, "palette"))) as tile:
            tile.draft("RGB", (32, 32))
            palette.append(np.asarray(tile).astype(np.uint32))
    assert palette[0].shape == (32, 32, 3)
    compared = 0
    for row in range(large.tile_map.shape[0]):
        top, bottom = math.ceil(32 * row / 3), min(32 * (row + 1) // 3, whole)
        for col in range(large.tile_map.shape[1]):
            left, right = math.ceil(32 * col / 3), min(32 * (col + 1) // 3, whole)
            y, x = 3 * top - 32 * row, 3 * left - 32 * col
            part = palette[large.tile_map[row, col]][y : y + 3 * (bottom - top), x : x + 3 * (right - left)]
            expected = (part.reshape(bottom - top, 3, right - left, 3, 3).sum(axis=(1, 3)) + 4) // 9
            assert np.array_equal(reduced[top:bottom, left:right], expected), (row, col)
            compared += expected.size // 3
    assert compared > 0.85 * reduced.shape[0] * reduced.shape[1]
    # The last row averages the level's last 2 decoded rows (4998 and 4999: rows 6 and 7 of the last tile row).
    last = large.tile_map.shape[0] - 1
    for col in range(large.tile_map.shape[1] - 1):
        left, right = math.ceil(32 * col / 3), min(32 * (col + 1) // 3, whole)
        x = 3 * left - 32 * col
        part = palette[large.tile_map[last, col]][6:8, x : x + 3 * (right - left)]
        expected = (part.reshape(2, right - left, 3, 3).sum(axis=(0, 2)) + 3) // 6
        assert np.array_equal(reduced[whole, left:right], expected), col


def test_openslide_backend_reads_a_single_level_slide_in_bands(tmp_path: Path) -> None:
    level = dicomseries.write_large_level(tmp_path / "level.dcm", (12000, 12000), seed=5)
    image, box = openslide_reduced(level.path, read_header(level.path), 667 / 12000)
    assert box == 8  # 0.25 µm/px to 15 µm/px: 18x, of which 8x by box average, the rest by Lanczos
    theirs = image.numpy().astype(np.int16)
    ours = read_level(level.path, scale=667 / 12000).image.numpy().astype(np.int16)
    assert theirs.shape == ours.shape == (1500, 1500, 3)
    # OpenSlide decodes in full and averages 8 x 8; ours decodes at 1/8 in the DCT: the same picture.
    diff = np.abs(theirs - ours)
    assert diff.mean() < 1.0
    assert np.percentile(diff, 99.9) <= 8
