"""One slide, three readers: the IDC DICOM path, the GDC SVS path and OpenSlide agree on every pixel's place.

The fixture is a one-level 2220 x 2967 px slide at 0.499 µm/px (no multiple of 8),
as a DICOM series and as an SVS of the same pixels. The reference reads the DICOM
level with OpenSlide and resizes it whole with pyvips' Lanczos filter.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import openslide
import pandas as pd
import pytest
import pyvips

from slidestock.dicom import read_header
from slidestock.levels import Target, choose_level, output_size_px
from slidestock.reduce import openslide_reduced, openslide_region, reduce_level, resize_exact
from slidestock.svs import decode_page, page_levels
from slidestock.tiff import read_pages, tile_locations
from slidestock_testkit import slides, svsfiles


def psnr(a: pyvips.Image, b: pyvips.Image) -> float:
    x, y = a.numpy().astype(float), b.numpy().astype(float)
    assert x.shape == y.shape
    mse = float(((x - y) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


@pytest.fixture(scope="module")
def dicom_level(fidelity_build: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one-level slide's DICOM file, alone in a folder (OpenSlide reads every file of a folder's series)."""
    index = pd.read_parquet(fidelity_build["index"]).set_index("SeriesInstanceUID")
    sm = pd.read_parquet(fidelity_build["sm_index"]).set_index("ContainerIdentifier")
    series = sm.loc["FID-ONELEVEL-01", "SeriesInstanceUID"]
    folder = fidelity_build["s3_root"] / slides.BUCKET / index.loc[series, "crdc_series_uuid"]
    (source,) = folder.glob("*.dcm")
    alone = tmp_path_factory.mktemp("one") / "level.dcm"
    shutil.copyfile(source, alone)
    return alone


def svs_output(path: Path, mpp: float) -> pyvips.Image:
    """The GDC path over a local file: pages from our TIFF reader, the level rule, tiles decoded, resized."""
    data = path.read_bytes()

    def read(offset: int, length: int) -> bytes:
        return data[offset : offset + length]

    pages = read_pages(read, path.name)
    choice = choose_level(page_levels(pages), Target(mpp=mpp))
    page = pages[int(choice.level.sop_instance_uid.removeprefix("page"))]
    tiles = [read(offset, length) for offset, length in tile_locations(read, page, path.name)]
    return resize_exact(decode_page(page, tiles, path.name), choice.output_size_px)


@pytest.mark.parametrize(("mpp", "shrink"), [(1.0, 1), (4.0, 4), (8.0, 8)])
def test_dicom_svs_and_openslide_agree(
    dicom_level: Path, fidelity_svs: dict[str, Path], mpp: float, shrink: int
) -> None:
    header = read_header(dicom_level)
    (width, height), spacing = header.size_px, header.spacing_xy_um
    size = output_size_px(header.size_px, spacing, Target(mpp=mpp))
    level = reduce_level(header, scale=max(size[0] / width, size[1] / height), threads=2)
    assert level.shrink == shrink
    ours = resize_exact(level.image, size, (width / shrink, height / shrink))
    with openslide.OpenSlide(str(dicom_level)) as slide:
        reference = resize_exact(openslide_region(slide, 0, (width, height)), size)
    backend, box = openslide_reduced(dicom_level, header, max(size[0] / width, size[1] / height))
    through_openslide = resize_exact(backend, size, (width / box, height / box))
    svs = svs_output(fidelity_svs["files"] / svsfiles.FIDELITY_SVS.file_id, mpp)
    assert (ours.width, ours.height) == (svs.width, svs.height) == size
    floor = 50.0 if shrink == 1 else 40.0
    assert psnr(ours, reference) >= floor
    assert psnr(through_openslide, reference) >= floor
    # The SVS holds the same pixels under another JPEG encoder: both readers place them alike.
    assert psnr(svs, reference) >= 40.0
    # The last column and row are the level's edge, not padding and not a stretched neighbour.
    edge = np.abs(ours.numpy()[-1].astype(int) - reference.numpy()[-1].astype(int)).mean()
    assert edge < 3.0
