"""A slide's patch coordinates as CLAM's and TRIDENT's patching steps leave them: ``{slide}.h5`` with a
``coords`` dataset of level-0 (x, y) top-left corners, one row per patch in the record's order.

The attributes follow CLAM's ``create_patches_fp.py``: ``patch_size`` is the side
read at ``patch_level`` (the level's pixels a patch spans, rounded up),
``patch_level`` the level's number in the slide's pyramid (finest 0, as
OpenSlide numbers a local copy), ``level_dim``, ``downsampled_level_dim`` and
``downsample`` the level's size and its ratio to level 0 (also as
``level_downsample``). TRIDENT's legacy reader takes ``patch_size``,
``patch_level`` and ``custom_downsample`` (the crop's ratio to ``size_px``); its
own attributes (``patch_size_level0``, ``level0_magnification``,
``target_magnification``, ``level0_width``, ``level0_height``, ``overlap``) are
there too, magnifications as 10 µm over the spacing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slidestock.image.patches import crop_px
from slidestock.records import PatchRow


def coords_attributes(
    slide_id: str,
    level_size: tuple[int, int],
    base_size: tuple[int, int],
    level_index: int,
    span: tuple[float, float],
    spacing_um: tuple[float, float],
    size_px: int,
    mpp: float,
) -> dict[str, Any]:
    """The ``coords`` dataset's attributes for a slide's patches (see the module's docstring)."""
    crop = crop_px(span)
    downsample = (base_size[0] / level_size[0], base_size[1] / level_size[1])
    base_mpp = spacing_um[0] / downsample[0]
    return {
        "name": slide_id,
        "patch_size": crop[0],
        "patch_level": level_index,
        "level_dim": np.array(level_size, dtype=np.int64),
        "downsampled_level_dim": np.array(level_size, dtype=np.int64),
        "downsample": np.array(downsample, dtype=np.float64),
        "level_downsample": np.array(downsample, dtype=np.float64),
        "custom_downsample": crop[0] / size_px,
        "target_patch_size": size_px,
        "mpp": mpp,
        "level_mpp": spacing_um[0],
        "patch_size_level0": round(crop[0] * downsample[0]),
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
