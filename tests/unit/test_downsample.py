"""Exact-size antialiased resizing and images that carry their resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pyvips
from PIL import Image

from slidestock.downsample import resize_exact, write_image
from slidestock.errors import ConfigError


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
    with pytest.raises(ConfigError, match=r"target.format: got 'bmp'; expected one of png"):
        write_image(checkerboard(4, 4), tmp_path / "x.bmp", (1.0, 1.0), "bmp")
    assert list(tmp_path.iterdir()) == []
