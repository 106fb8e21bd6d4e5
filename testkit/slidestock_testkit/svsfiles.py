"""Aperio SVS files as GDC serves them, and the manifest that lists them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyvips

from slidestock_testkit.slides import BUILD_VERSION, base_image, level_image, to_array, uuid_for


@dataclass(frozen=True)
class SvsSpec:
    """An Aperio-style SVS: tiled JPEG pyramid in 4x steps, thumbnail, label and macro pages."""

    barcode: str
    base_size_px: tuple[int, int]
    mpp: float = 0.25
    n_levels: int = 3
    seed: int = 0
    # The base is the real CMU-1 region itself (see :func:`slides.base_image`).
    real_region: bool = False

    @property
    def file_id(self) -> str:
        return uuid_for("gdc", self.barcode)

    @property
    def filename(self) -> str:
        return f"{self.barcode}.{uuid_for('gdc-name', self.barcode).upper()}.svs"


GDC_SLIDES: tuple[SvsSpec, ...] = (
    SvsSpec("TCGA-G1-A001-01Z-00-DX1", (8000, 6000), seed=21),
    SvsSpec("TCGA-G1-A002-01Z-00-DX1", (6400, 9000), seed=22),
    SvsSpec("TCGA-G2-A003-01Z-00-DX1", (9600, 7200), n_levels=2, seed=23),
)
# The GDC twin of FIDELITY_SLIDES' one-level slide: the same pixels as an SVS.
FIDELITY_SVS = SvsSpec("FID-ONELEVEL-01", (2220, 2967), mpp=0.499, n_levels=1, seed=42, real_region=True)
_APERIO = "Aperio Image Library v12.0.15"


def write_svs(spec: SvsSpec, path: Path) -> None:
    """Write ``spec`` as an SVS in Aperio's page order: base, thumbnail, levels, label, macro."""
    import tifffile

    width, height = spec.base_size_px
    base = base_image(spec.base_size_px, spec.seed, spec.real_region).copy_memory()
    head = f"{_APERIO} \r\n{width}x{height} [0,0 {width}x{height}] (256x256) JPEG/RGB Q=80"
    options: dict[str, Any] = {"photometric": "rgb", "metadata": None}
    tiled: dict[str, Any] = {"tile": (256, 256), "compression": "jpeg", "compressionargs": {"level": 80}}
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        tif.write(to_array(base), description=f"{head}|AppMag = 40|MPP = {spec.mpp:.4f}", **tiled, **options)
        thumb = to_array(base.thumbnail_image(768))
        tif.write(thumb, description=f"{_APERIO} \r\n{width}x{height} -> {thumb.shape[1]}x{thumb.shape[0]} - ",
                  compression="jpeg", **options)  # fmt: skip
        for k in range(1, spec.n_levels):
            w, h = width // 4**k, height // 4**k
            level = to_array(level_image(base, (w, h)))
            tif.write(level, description=f"{head} -> {w}x{h} JPEG/RGB Q=80", **tiled, **options)
        label = np.full((320, 480, 3), 255, dtype=np.uint8)
        label[40:280:8, 40:440] = 0
        tif.write(label, description=f"{_APERIO}\r\nlabel 480x320", compression="lzw", subfiletype=1, **options)
        macro = to_array(base.thumbnail_image(1024))
        tif.write(macro, description=f"{_APERIO}\r\nmacro {macro.shape[1]}x{macro.shape[0]}",
                  compression="jpeg", subfiletype=9, **options)  # fmt: skip


def write_vips_pyramid(spec: SvsSpec, path: Path, quality: int = 90) -> None:
    """``spec`` as libvips writes a pyramidal TIFF (``tiffsave(pyramid=True)``): not Aperio's library.

    Every page repeats the base's description, its ``MPP`` included, and the reduced pages are marked
    with NewSubfileType 1: what slidestock must read by size ratio, as OpenSlide does.
    """
    width, height = spec.base_size_px
    base = base_image(spec.base_size_px, spec.seed, spec.real_region).copy()
    description = f"{_APERIO} \r\n{width}x{height} [0,0 {width}x{height}] (256x256) JPEG/RGB Q={quality}"
    base.set_type(pyvips.GValue.gstr_type, "image-description", f"{description}|AppMag = 40|MPP = {spec.mpp:.4f}")
    base.tiffsave(str(path), tile=True, tile_width=256, tile_height=256, pyramid=True, compression="jpeg",
                  Q=quality, depth="onetile", bigtiff=False)  # fmt: skip


def build_gdc(out_dir: Path, specs: Sequence[SvsSpec] = GDC_SLIDES) -> dict[str, Path]:
    """SVS files named by GDC file id under ``out_dir/files``, and ``manifest.tsv`` listing them."""
    out_dir = out_dir.resolve()
    stamp = out_dir / "manifest.json"
    wanted = json.dumps([s.__dict__ for s in specs] + [BUILD_VERSION], sort_keys=True, default=str)
    paths = {"files": out_dir / "files", "manifest": out_dir / "manifest.tsv", "names": out_dir / "names.json"}
    if stamp.exists() and json.loads(stamp.read_text())["spec"] == wanted:
        return paths
    paths["files"].mkdir(parents=True, exist_ok=True)
    rows = ["id\tfilename\tmd5\tsize\tstate"]
    names = {}
    for spec in specs:
        path = paths["files"] / spec.file_id
        write_svs(spec, path)
        digest = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
        rows.append(f"{spec.file_id}\t{spec.filename}\t{digest}\t{path.stat().st_size}\treleased")
        names[spec.file_id] = spec.filename
    paths["manifest"].write_text("\n".join(rows) + "\n")
    paths["names"].write_text(json.dumps(names, indent=1, sort_keys=True))
    stamp.write_text(json.dumps({"spec": wanted}))
    return paths
