"""A single-level 40,000 x 40,000 px slide (only the base level exists) is reduced streaming, every tile right.

The fixture is a real DICOM WSI of 24,649 JPEG tiles (about 1 GB), written
tile by tile from a palette of real tissue tiles, so that what each tile
should look like is known; its tests are slow (``make test-fast`` leaves them out). Memory (under
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

from slidestock.image.output import write_image
from slidestock.image.reduce import openslide_reduced, read_level
from slidestock.read.local import read_header
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
    # A third of a GB of real tissue tiles, 4.8 GB decoded: far past the 1 GB budget if the level were held whole.
    assert large.path.stat().st_size > 250_000_000
    header = read_header(large.path)
    assert len(header.grid) == 157 * 157
    assert header.missing_tiles == 0


@pytest.mark.slow
def test_single_level_slide_is_reduced_streaming(large: dicomseries.LargeLevel, tmp_path: Path) -> None:
    # 0.25 µm/px to 15 µm/px: 60x, JPEG decoded at 1/8 in the DCT (5,000 px), Lanczos does the last 7.5x.
    reduced = read_level(large.path, out_px=(667, 667), threads=2)
    assert (reduced.decode_shrink, reduced.lanczos_factor) == (8, pytest.approx(40000 / 8 / 667, abs=0.01))
    write_image(reduced.image, tmp_path / "slide.png", (15.0, 15.0))
    with Image.open(tmp_path / "slide.png") as written:
        assert written.size == (667, 667)
        assert written.info["dpi"][0] == pytest.approx(25400 / 15.0, rel=1e-3)
    # Every tile landed where it belongs: the same as the level decoded at 1/8 here, tile by tile from the
    # palette (as libjpeg decodes each), joined, and resized once with Pillow's Lanczos-3.
    palette = []
    for tile in large.palette:
        encoded = io.BytesIO()
        Image.fromarray(tile).save(encoded, "JPEG", quality=90, subsampling=1)
        with Image.open(io.BytesIO(encoded.getvalue())) as decoded:
            decoded.draft("RGB", (32, 32))
            palette.append(np.asarray(decoded.convert("RGB")))
    assert palette[0].shape == (32, 32, 3)
    rows = [np.concatenate([palette[i] for i in row], axis=1) for row in large.tile_map]
    level = np.concatenate(rows)[:5000, :5000]
    expected = np.asarray(
        Image.fromarray(level).resize((667, 667), Image.Resampling.LANCZOS, box=(0, 0, 5000, 5000), reducing_gap=None)
    )
    assert np.array_equal(reduced.image.numpy(), expected)


def test_openslide_backend_reads_a_single_level_slide_in_bands(tmp_path: Path) -> None:
    level = dicomseries.write_large_level(tmp_path / "level.dcm", (12000, 12000), seed=5)
    header = read_header(level.path)
    theirs = openslide_reduced(level.path, header.size_px, header.tile_px[1], (800, 800))
    ours = read_level(level.path, out_px=(800, 800))
    assert (theirs.decode_shrink, ours.decode_shrink) == (1, 4)
    # OpenSlide decodes in full, ours at 1/4 in the DCT: the same picture, at the agreement bar.
    a, b = theirs.image.numpy().astype(float), ours.image.numpy().astype(float)
    assert a.shape == b.shape == (800, 800, 3)
    assert 10 * math.log10(255**2 / ((a - b) ** 2).mean()) >= 45.0
