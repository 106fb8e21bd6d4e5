"""A slide's patch coordinates as CLAM's and TRIDENT's patching steps leave them: a ``coords`` dataset of level-0
(x, y) top-left corners, one row per patch in the record's order, with each tool's attributes.

``{slide}.h5`` follows CLAM's ``create_patches_fp.py``: ``patch_size`` is the
side read at ``patch_level`` (the level's pixels a patch spans, rounded up),
``patch_level`` the level's number in the slide's pyramid (finest 0, as
OpenSlide numbers a local copy), ``level_dim``, ``downsampled_level_dim`` and
``downsample`` the level's size and its ratio to level 0 (also as
``level_downsample``). CLAM's feature extraction reads it from
``{data_h5_dir}/patches/{slide}.h5``.

``{slide}_patches.h5`` follows TRIDENT's ``coords_to_h5``: ``patch_size`` is the
patch's side at the target magnification (``patches.size_px``),
``patch_size_level0`` its side in level-0 pixels, ``level0_magnification`` and
``target_magnification`` 10 µm over the spacings (40 at 0.25 µm/px), with
``level0_width``, ``level0_height``, ``overlap`` (0) and ``name``. TRIDENT reads it
from ``{job_dir}/{coords_dir}/patches/{slide}_patches.h5``. The two tools mean
different things by ``patch_size``, hence two files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slidestock.image.patches import crop_px
from slidestock.records import PatchRow


def clam_attributes(
    slide_id: str,
    level_size: tuple[int, int],
    base_size: tuple[int, int],
    level_index: int,
    span: tuple[float, float],
) -> dict[str, Any]:
    """The ``coords`` attributes of CLAM's file for a slide's patches (see the module's docstring)."""
    downsample = np.array((base_size[0] / level_size[0], base_size[1] / level_size[1]), dtype=np.float64)
    return {
        "name": slide_id,
        "patch_size": crop_px(span)[0],
        "patch_level": level_index,
        "level_dim": np.array(level_size, dtype=np.int64),
        "downsampled_level_dim": np.array(level_size, dtype=np.int64),
        "downsample": downsample,
        "level_downsample": downsample,
    }


def trident_attributes(
    slide_id: str, base_size: tuple[int, int], base_mpp: float, size_px: int, mpp: float
) -> dict[str, Any]:
    """The ``coords`` attributes of TRIDENT's file for a slide's patches (see the module's docstring)."""
    return {
        "name": slide_id,
        "patch_size": size_px,
        "patch_size_level0": round(size_px * mpp / base_mpp),
        "level0_magnification": 10.0 / base_mpp,
        "target_magnification": 10.0 / mpp,
        "level0_width": base_size[0],
        "level0_height": base_size[1],
        "overlap": 0,
    }


def write_coords_h5(path: Path, rows: Sequence[PatchRow], attributes: dict[str, Any]) -> None:
    """``path`` (written whole, then moved into place) with the rows' level-0 corners and these attributes."""
    import h5py

    coords = np.array([[row["x_px"], row["y_px"]] for row in rows], dtype=np.int64).reshape(-1, 2)
    partial = path.with_name(f".{path.name}.partial")
    try:
        with h5py.File(partial, "w", track_order=True) as h5:
            dataset = h5.create_dataset("coords", data=coords, track_times=False)
            for key, value in attributes.items():
                dataset.attrs[key] = value
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def read_coords_h5(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """A ``{slide}.h5`` file's coordinates and attributes, as CLAM and TRIDENT read them."""
    import h5py

    with h5py.File(path, "r") as h5:
        dataset = h5["coords"]
        return np.asarray(dataset[:]), dict(dataset.attrs)
