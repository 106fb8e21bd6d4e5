"""What the fixture slides are: specifications, real tissue pixels and stable identifiers.

The demo, the tests and the benchmarks build DICOM series (:mod:`dicomseries`), index
tables (:mod:`indextables`) and SVS files (:mod:`svsfiles`) from these. Everything is
deterministic: the same specification gives the same pixels, UIDs and table rows.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import numpy as np
import pyvips
from pydicom.uid import UID, generate_uid

from slidestock.plan.levels import Level
from slidestock_testkit.tissue import layout, region, texture

WSI_SOP_CLASS = UID("1.2.840.10008.5.1.4.1.1.77.1.6")
JPEG_BASELINE = UID("1.2.840.10008.1.2.4.50")
JPEG_2000 = UID("1.2.840.10008.1.2.4.91")
JPEG_2000_LOSSLESS = UID("1.2.840.10008.1.2.4.90")
EXPLICIT_VR_LE = UID("1.2.840.10008.1.2.1")
TRANSFER_SYNTAX_NAMES = {
    JPEG_BASELINE: "JPEG Baseline",
    JPEG_2000: "JPEG 2000",
    JPEG_2000_LOSSLESS: "JPEG 2000 Lossless",
    EXPLICIT_VR_LE: "Explicit VR Little Endian",
}
PHOTOMETRIC = {
    JPEG_BASELINE: "YBR_FULL_422",
    JPEG_2000: "YBR_ICT",
    JPEG_2000_LOSSLESS: "YBR_RCT",
    EXPLICIT_VR_LE: "RGB",
}
BUCKET = "idc-open-data"
TILE_PX = 256
# Bump when the generator's output changes, so that cached builds are redone.
BUILD_VERSION = 6
BACKGROUND_RGB = (242, 241, 238)
# UUIDs of fixture objects derive from this namespace, so they are stable.
_UUID_NAMESPACE = uuid.UUID("7c0a4c52-3b5e-4f0f-9a59-5b1d2f6c9e11")


@dataclass(frozen=True)
class SlideSpec:
    """One synthetic slide: a DICOM WSI series of ``n_levels`` levels in 4x steps.

    ``base_size_px`` is (columns, rows) of the base level; each coarser level
    has ``size // 4**k`` pixels, as scanners round, so downsample factors are
    close to but not exactly powers of four.
    """

    collection_id: str
    patient_id: str
    container_id: str
    base_size_px: tuple[int, int]
    base_spacing_um: float = 0.25
    n_levels: int = 4
    transfer_syntax: str = JPEG_BASELINE
    label_and_overview: bool = False
    seed: int = 0
    # TILED_SPARSE levels that leave out tiles holding only background.
    sparse: bool = False
    # Only the base level carries PixelSpacing (header and index), as some IDC series.
    spacing_on_base_only: bool = False
    # No level carries PixelSpacing at all (header and index).
    no_spacing: bool = False
    # An sRGB ICC profile in the optical path, which outputs must carry.
    icc_profile: bool = False
    # A transfer syntax per level (mixed within one series), instead of transfer_syntax.
    level_syntaxes: tuple[str, ...] | None = None
    # A second VOLUME instance (RESAMPLED) the size of level 2: two candidates for one level.
    second_volume: bool = False
    # Edge frames stored at the size of the pixels they hold, not Rows x Columns (seen in converter output).
    short_edge_frames: bool = False
    # PhotometricInterpretation as another converter labels it (e.g. RGB over JFIF YCbCr frames).
    photometric: str | None = None
    # Levels at least this wide are written as a DICOM concatenation of two instances (0: never).
    concatenate_from_px: int = 0
    # Fluorescence: this many channels, one MONOCHROME2 instance per optical path and level (0: brightfield RGB).
    channels: int = 0
    # Where a tiled level's frames are indexed: "bot" (a Basic Offset Table), "eot" (an Extended Offset
    # Table), "tiff" (neither, but a dual-personality TIFF directory, as IDC's converted slides) or "none".
    frame_index: str = "bot"
    # The base is the real CMU-1 region itself (resources/tissue), not pieces of its texture: its size is the region's.
    real_region: bool = False

    @property
    def key(self) -> str:
        return f"{self.collection_id}/{self.container_id}"


DEMO_SLIDES: tuple[SlideSpec, ...] = (
    SlideSpec("demo_brca", "TCGA-D1-A001", "TCGA-D1-A001-01Z-00-DX1", (8200, 6150), seed=1),
    SlideSpec(
        "demo_brca",
        "TCGA-D1-A002",
        "TCGA-D1-A002-01Z-00-DX1",
        (9000, 5400),
        transfer_syntax=JPEG_2000,
        seed=2,
    ),
    SlideSpec(
        "demo_brca",
        "TCGA-D1-A003",
        "TCGA-D1-A003-01Z-00-DX1",
        (8100, 8100),
        label_and_overview=True,
        seed=3,
    ),
    SlideSpec("demo_brca", "TCGA-D1-A004", "TCGA-D1-A004-01Z-00-DX1", (6000, 8400), seed=4),
    SlideSpec("demo_luad", "TCGA-D2-A005", "TCGA-D2-A005-01Z-00-DX1", (8800, 6600), n_levels=3, seed=5),
    SlideSpec("demo_luad", "TCGA-D2-A006", "TCGA-D2-A006-01Z-00-DX1", (10000, 7000), seed=6),
)


@dataclass(frozen=True)
class SeriesRecord:
    """What the index tables say about one written DICOM series."""

    spec: SlideSpec
    study_uid: str
    series_uid: str
    crdc_series_uuid: str
    instances: tuple[Level, ...] = field(default_factory=tuple)

    @property
    def size_bytes(self) -> int:
        return sum(i.size_bytes for i in self.instances)


def uid_for(*parts: object) -> str:
    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


def uuid_for(*parts: object) -> str:
    return str(uuid.uuid5(_UUID_NAMESPACE, "/".join(str(p) for p in parts)))


def tissue_image(size_px: tuple[int, int], seed: int) -> pyvips.Image:
    """A slide's base image: real H&E tissue (:mod:`tissue`) on a bright background.

    Where the tissue lies is :func:`tissue.layout` (the slide's low-resolution look); what it is
    made of is :func:`tissue.texture`, real at the base's full resolution.
    """
    width, height = size_px
    weight = layout(size_px, seed) / 255.0
    background = pyvips.Image.black(width, height, bands=3) + list(BACKGROUND_RGB)
    blended = texture(size_px, seed) * weight + background * (1.0 - weight)
    result: pyvips.Image = blended.cast("uchar").copy(interpretation="srgb")
    return result


def base_image(size_px: tuple[int, int], seed: int, real_region: bool = False) -> pyvips.Image:
    """A slide's base level: the real region as it is, or pieces of its texture (:func:`tissue_image`)."""
    if not real_region:
        return tissue_image(size_px, seed)
    pixels = region()
    if (pixels.shape[1], pixels.shape[0]) != size_px:
        raise ValueError(f"the real region is {pixels.shape[1]} x {pixels.shape[0]} px; the spec says {size_px}")
    image: pyvips.Image = pyvips.Image.new_from_array(pixels).copy(interpretation="srgb")
    return image


def level_image(base: pyvips.Image, size_px: tuple[int, int]) -> pyvips.Image:
    """A coarser level of a slide, as the fixture writers make it from the base: libvips' resize, cut to size."""
    width, height = size_px
    return exact_size(base.resize(width / base.width, vscale=height / base.height), width, height)


def exact_size(image: pyvips.Image, width: int, height: int) -> pyvips.Image:
    image = image.crop(0, 0, min(width, image.width), min(height, image.height))
    if image.width == width and image.height == height:
        return image
    embedded: pyvips.Image = image.embed(0, 0, width, height, extend="copy")
    return embedded


def to_array(image: pyvips.Image) -> np.ndarray:
    array: np.ndarray = image.numpy()
    return np.ascontiguousarray(array)


def level_sizes(spec: SlideSpec) -> list[tuple[int, int]]:
    """(columns, rows) of each level, base first."""
    width, height = spec.base_size_px
    return [(width // 4**k, height // 4**k) for k in range(spec.n_levels)]


# Real-world awkwardness, one slide each (small, for the tests): TILED_SPARSE levels with
# background tiles left out, uncompressed frames, spacing on the base level only or on none.
EDGE_SLIDES: tuple[SlideSpec, ...] = (
    SlideSpec("edge_cases", "EDGE-01", "EDGE-SPARSE-01", (2600, 2000), n_levels=3, sparse=True, seed=31),
    SlideSpec(
        "edge_cases",
        "EDGE-02",
        "EDGE-RAW-01",
        (2600, 2000),
        n_levels=3,
        transfer_syntax=EXPLICIT_VR_LE,
        seed=32,
        icc_profile=True,
    ),
    SlideSpec(
        "edge_cases",
        "EDGE-04",
        "EDGE-MIXED-01",
        (2600, 2000),
        n_levels=3,
        level_syntaxes=(JPEG_BASELINE, JPEG_2000_LOSSLESS, JPEG_2000),
        second_volume=True,
        seed=34,
    ),
    SlideSpec(
        "edge_cases", "EDGE-03", "EDGE-NOSPACING-01", (2600, 2000), n_levels=3, spacing_on_base_only=True, seed=33
    ),
    SlideSpec("edge_cases", "EDGE-05", "EDGE-UNSCALED-01", (2600, 2000), n_levels=3, no_spacing=True, seed=35),
)

# Shaped like what users bring (issue 15): a TCGA pyramid, whose 0.2527 µm base gives levels of
# 1.011, 4.047 and 16.19 µm that idc-index rounds to 1, 4 and 16 µm; and a one-level slide of
# 0.499 µm (indexed 0.5) whose size is no multiple of 8: the real CMU-1 region, with a GDC twin of
# the same pixels.
FIDELITY_SLIDES: tuple[SlideSpec, ...] = (
    SlideSpec("fidelity", "TCGA-F1-A001", "TCGA-F1-A001-01Z-00-DX1", (8200, 6150), base_spacing_um=0.2527, seed=41),
    SlideSpec(
        "fidelity",
        "FID-02",
        "FID-ONELEVEL-01",
        (2220, 2967),
        base_spacing_um=0.499,
        n_levels=1,
        seed=42,
        real_region=True,
    ),
    SlideSpec("fidelity", "FID-03", "FID-SHORTEDGE-01", (1500, 1100), n_levels=2, short_edge_frames=True, seed=43),
    SlideSpec("fidelity", "FID-04", "FID-RGBLABEL-01", (1200, 900), n_levels=2, photometric="RGB", seed=44),
    # Both levels (1600 and 400 px wide) split into two instances sharing a ConcatenationUID.
    SlideSpec("fidelity", "FID-05", "FID-CONCAT-01", (1600, 1200), n_levels=2, concatenate_from_px=400, seed=45),
    SlideSpec(
        "fidelity", "FID-06", "FID-FLUO-01", (1200, 900), n_levels=2, channels=2, photometric="MONOCHROME2", seed=46
    ),
)


# One slide per way of finding frames in a level without reading it (patches): a Basic Offset
# Table, an Extended Offset Table, neither but a dual-personality TIFF directory (as IDC's
# converted TCGA slides, with their 0.2527 µm base), and neither at all.
PATCH_SLIDES: tuple[SlideSpec, ...] = (
    SlideSpec("patch_demo", "PT-01", "PT-BOT-01", (4000, 3000), n_levels=3, icc_profile=True, seed=61),
    SlideSpec("patch_demo", "PT-02", "PT-EOT-01", (3600, 2800), n_levels=3, frame_index="eot", seed=62),
    SlideSpec(
        "patch_demo",
        "PT-03",
        "PT-TIFF-01",
        (4200, 3100),
        base_spacing_um=0.2527,
        n_levels=3,
        frame_index="tiff",
        seed=63,
    ),
    SlideSpec("patch_demo", "PT-04", "PT-NONE-01", (3800, 3000), n_levels=3, frame_index="none", seed=64),
)
# How slidestock's patch records say each of them had its frames located.
PATCH_FRAMES_LOCATED_BY = {
    "PT-BOT-01": "Basic Offset Table",
    "PT-EOT-01": "Extended Offset Table",
    "PT-TIFF-01": "TIFF directory (dual-personality preamble)",
    "PT-NONE-01": "level read whole",  # no index at all, and the frames wanted reach the level's end
}
