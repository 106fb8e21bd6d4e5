"""Exact-size antialiased resizing and images that carry their resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pyvips
from PIL import Image

from slidestock.errors import ConfigError
from slidestock.image.output import write_image
from slidestock.image.reduce import resize_exact


def checkerboard(width: int, height: int) -> pyvips.Image:
    """One-pixel black and white checks: the worst case for aliasing."""
    yy, xx = np.mgrid[0:height, 0:width]
    grey = ((xx + yy) % 2 * 255).astype(np.uint8)
    return pyvips.Image.new_from_array(np.ascontiguousarray(np.stack([grey] * 3, axis=-1))).copy(interpretation="srgb")


@pytest.mark.parametrize(
    ("source", "target"),
    [((512, 384), (137, 103)), ((2500, 1875), (667, 500)), ((1001, 7), (250, 2)), ((300, 300), (1, 1))],
)
def test_resize_gives_exactly_the_planned_size(source: tuple[int, int], target: tuple[int, int]) -> None:
    out = resize_exact(checkerboard(*source), target)
    assert (out.width, out.height) == target


def test_resize_is_antialiased() -> None:
    # Nearest-neighbour sampling of a checkerboard gives pure black or white; a
    # proper low-pass filter gives mid grey everywhere.
    pixels = resize_exact(checkerboard(400, 400), (97, 97)).numpy().astype(float)
    inner = pixels[2:-2, 2:-2]
    assert abs(inner.mean() - 127.5) < 3
    assert inner.std() < 6


def test_same_size_is_returned_untouched_and_upsampling_refused() -> None:
    image = checkerboard(20, 10)
    assert resize_exact(image, (20, 10)) is image
    with pytest.raises(ValueError, match="would upsample"):
        resize_exact(image, (21, 10))


def test_png_carries_its_spacing(tmp_path: Path) -> None:
    path = tmp_path / "out" / "slide.png"
    write_image(checkerboard(30, 20), path, (15.0, 14.9))
    with Image.open(path) as png:
        dpi_x, dpi_y = png.info["dpi"]
        assert png.size == (30, 20)
    # dpi -> µm per pixel: 25,400 µm per inch.
    assert 25400 / dpi_x == pytest.approx(15.0, rel=1e-4)
    assert 25400 / dpi_y == pytest.approx(14.9, rel=1e-4)
    assert [p.name for p in path.parent.iterdir()] == ["slide.png"]


def test_unknown_format_is_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"target.format: got .bmp.; expected one of png, jpeg, tiff, webp"):
        write_image(checkerboard(4, 4), tmp_path / "x.bmp", (1.0, 1.0), "bmp")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("fmt", "suffix"), [("png", "png"), ("jpeg", "jpg"), ("tiff", "tiff"), ("webp", "webp")])
def test_every_format_that_can_carries_the_resolution(tmp_path: Path, fmt: str, suffix: str) -> None:
    from slidestock.plan.levels import FORMATS

    assert FORMATS[fmt] == suffix
    path = tmp_path / f"slide.{suffix}"
    write_image(checkerboard(40, 30), path, (15.0, 15.0), fmt, quality=80)
    back = pyvips.Image.new_from_file(str(path))
    assert (back.width, back.height) == (40, 30)
    with Image.open(path) as image:
        exif = image.getexif()
        dpi_x, dpi_y = image.info["dpi"] if fmt != "webp" else (float(exif[282]), float(exif[283]))
    assert 25400 / dpi_x == pytest.approx(15.0, rel=1e-3)
    assert 25400 / dpi_y == pytest.approx(15.0, rel=1e-3)


def test_pyramidal_tiff_has_levels(tmp_path: Path) -> None:
    path = tmp_path / "slide.tiff"
    write_image(checkerboard(1200, 900), path, (2.0, 2.0), "tiff", pyramid=True)
    assert pyvips.Image.new_from_file(str(path)).get("n-pages") >= 3


def test_icc_profile_is_carried_into_the_png(tmp_path: Path) -> None:
    from slidestock_testkit.dicomseries import srgb_profile

    image = checkerboard(8, 8).copy()
    image.set_type(pyvips.GValue.blob_type, "icc-profile-data", srgb_profile())
    write_image(image, tmp_path / "with.png", (15.0, 15.0))
    write_image(checkerboard(8, 8), tmp_path / "without.png", (15.0, 15.0))
    with Image.open(tmp_path / "with.png") as png:
        assert png.info["icc_profile"] == srgb_profile()
    with Image.open(tmp_path / "without.png") as png:
        assert "icc_profile" not in png.info


def test_tissue_mask_finds_stain_and_not_glass() -> None:
    from slidestock.image.output import tissue_fraction, tissue_mask

    pixels = np.full((10, 20, 3), (242, 241, 238), dtype=np.uint8)  # glass
    pixels[:, :5] = (200, 120, 170)  # eosin-pink: coloured
    pixels[:5, 5:10] = (90, 80, 100)  # dark, nearly grey: a dense nucleus cluster
    mask = tissue_mask(pyvips.Image.new_from_array(pixels).copy(interpretation="srgb"))
    values = mask.numpy()
    assert values[:, :5].min() == 255
    assert values[:5, 5:10].min() == 255
    assert values[:, 10:].max() == 0
    assert tissue_fraction(mask) == (50 + 25) / 200
