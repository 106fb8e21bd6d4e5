"""Every output agrees with its level decoded whole and Lanczos-3 resized, on real H&E tissue, at every ratio.

The levels are real tissue (the CMU-1 region shipped in resources/tissue, CC0), encoded as scanners
and converters write them: DICOM with 256 px JPEG frames at Q90 (YBR_FULL_422) or JPEG 2000, and
SVS pages of Aperio's library and of libvips; at sizes that no decoder's reduction divides. The
reference reads the level whole with OpenSlide (another decoder) and resizes it once with Pillow's
Lanczos-3, an exact convolution. Each path must agree with it at 45 dB or more, for every ratio of
level to output from just above 1 to 1/90. Against libvips' own Lanczos resize of the same read (what
other tools do, and the held-out checks use) the bar is 40 dB.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import openslide
import pytest
from PIL import Image

from slidestock.image.reduce import openslide_reduced, reduce_level
from slidestock.plan.levels import Target
from slidestock.read.local import read_header
from slidestock.read.svs import PageTiles, choose_page, reduce_page
from slidestock_testkit import dicomseries, slides, svsfiles, tissue

# Level size over output size: from just above 1 to 1/90, on both sides of each decoder's factors.
RATIOS = (1.3, 2.5, 3.2, 5.7, 8.0, 11.3, 16.0, 23.0, 32.0, 45.0, 64.0, 90.0)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    mse = float(((a.astype(float) - b.astype(float)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def output_px(size_px: tuple[int, int], ratio: float) -> tuple[int, int]:
    return (max(1, math.floor(size_px[0] / ratio + 0.5)), max(1, math.floor(size_px[1] / ratio + 0.5)))


def whole(path: Path, page: int = 0) -> np.ndarray:
    """The level (or SVS page) read whole by OpenSlide: the reference's decode."""
    with openslide.OpenSlide(str(path)) as slide:
        size = slide.level_dimensions[page]
        return np.asarray(slide.read_region((0, 0), page, size).convert("RGB"))


def lanczos(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The reference resize: Pillow's Lanczos-3 of the whole image, once."""
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS, reducing_gap=None))


def vips_lanczos(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """libvips' Lanczos-3 resize of the whole image, as other tools (and the held-out checks) make it."""
    import pyvips

    image = pyvips.Image.new_from_array(np.ascontiguousarray(pixels))
    resized = image.resize(size[0] / pixels.shape[1], vscale=size[1] / pixels.shape[0], kernel="lanczos3")
    array: np.ndarray = resized.numpy()[: size[1], : size[0]]
    return np.pad(array, ((0, size[1] - array.shape[0]), (0, size[0] - array.shape[1]), (0, 0)), mode="edge")


@pytest.fixture(scope="module")
def levels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Single-level DICOM files of real tissue: the region itself (2220 x 2967) as JPEG, and larger planes of its
    texture as JPEG and as JPEG 2000 (one of a size every reduction divides, so that JPEG 2000 drops levels)."""
    root = tmp_path_factory.mktemp("agreement")
    region = tissue.region()
    plane = tissue.texture_array((3001, 2203), 5)
    even = tissue.texture_array((2048, 1536), 6)
    return {
        "jpeg-region": dicomseries.write_single_level(root, region, slides.JPEG_BASELINE, 0.499, "region"),
        "jpeg-plane": dicomseries.write_single_level(root, plane, slides.JPEG_BASELINE, 0.25, "plane"),
        "j2k-plane": dicomseries.write_single_level(root, plane, slides.JPEG_2000, 0.25, "plane"),
        "j2k-even": dicomseries.write_single_level(root, even, slides.JPEG_2000, 0.25, "even"),
    }


@pytest.mark.parametrize("name", ["jpeg-region", "jpeg-plane", "j2k-plane", "j2k-even"])
def test_dicom_levels_agree_at_every_ratio(levels: dict[str, Path], name: str) -> None:
    path = levels[name]
    header = read_header(path)
    reference = whole(path)
    agreement, used = {}, set()
    for ratio in RATIOS:
        size = output_px(header.size_px, ratio)
        reduced = reduce_level(header, size, threads=2)
        used.add(reduced.decode_shrink)
        assert reduced.lanczos_factor >= 3.0 or reduced.decode_shrink == 1
        agreement[ratio] = psnr(reduced.image.numpy(), lanczos(reference, size))
        assert psnr(reduced.image.numpy(), vips_lanczos(reference, size)) >= 40.0, ratio
    assert min(agreement.values()) >= 45.0, agreement
    # The decoder's own reduction was used where it keeps agreement (a ragged JPEG 2000 level: never).
    assert used == ({1} if name == "j2k-plane" else {1, 2, 4, 8}), used


def test_the_openslide_backend_agrees_at_every_ratio(levels: dict[str, Path]) -> None:
    path = levels["jpeg-plane"]
    header = read_header(path)
    reference = whole(path)
    for ratio in RATIOS[::3]:
        size = output_px(header.size_px, ratio)
        reduced = openslide_reduced(path, header.size_px, header.tile_px[1], size)
        assert psnr(reduced.image.numpy(), lanczos(reference, size)) >= 45.0, ratio


@pytest.fixture(scope="module")
def svs_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The real Aperio file itself, an SVS of the region as Aperio's library lays it out, and a libvips pyramid."""
    root = tmp_path_factory.mktemp("svs")
    aperio, vips = root / "aperio.svs", root / "vips.svs"
    spec = svsfiles.SvsSpec("AGREE-01", (2220, 2967), mpp=0.499, n_levels=1, real_region=True)
    svsfiles.write_svs(spec, aperio)
    svsfiles.write_vips_pyramid(svsfiles.SvsSpec("AGREE-02", (3001, 2203), mpp=0.2527, seed=5), vips)
    return {"cmu-1": tissue.REGION, "aperio": aperio, "vips": vips}


def local_read(path: Path):  # type: ignore[no-untyped-def]
    data = path.read_bytes()
    return lambda offset, length: data[offset : offset + length]


@pytest.mark.parametrize("name", ["cmu-1", "aperio"])
def test_svs_pages_agree_at_every_ratio(svs_files: dict[str, Path], name: str) -> None:
    path = svs_files[name]
    read = local_read(path)
    chosen = choose_page(read, Target(mpp=0.5), path.name)  # the base page: a single-level slide
    tiles = PageTiles(chosen.page, read, lambda ranges: [read(o, n) for o, n in ranges], path.name)
    reference = whole(path)
    agreement, used = {}, set()
    for ratio in RATIOS:
        size = output_px(chosen.page.size_px, ratio)
        reduced = reduce_page(tiles, size, threads=2)
        used.add(reduced.decode_shrink)
        agreement[ratio] = psnr(reduced.image.numpy(), lanczos(reference, size))
        assert psnr(reduced.image.numpy(), vips_lanczos(reference, size)) >= 40.0, ratio
    assert min(agreement.values()) >= 45.0, agreement
    assert used == {1, 2, 4, 8}
