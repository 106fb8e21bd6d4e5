"""Synthetic DICOM WSI series and IDC index tables for the demo, tests and benchmarks.

Nothing here reaches IDC: the demo and the tests serve these files from a local
S3 server in the IDC object layout (``<bucket>/<crdc_series_uuid>/<crdc_instance_uuid>.dcm``)
and describe them with ``index``, ``sm_index`` and ``sm_instance_index`` Parquet
tables that have exactly the column names and types of the real ones (taken
from the ``idc-index-data`` wheel). Everything is deterministic: the same
specification gives the same pixels, UIDs and table rows.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import idc_index_data
import imagecodecs
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyvips
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, generate_uid

from slidestock.levels import Level

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
BUILD_VERSION = 2
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


def _uid(*parts: object) -> str:
    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


def _uuid(*parts: object) -> str:
    return str(uuid.uuid5(_UUID_NAMESPACE, "/".join(str(p) for p in parts)))


def tissue_image(size_px: tuple[int, int], seed: int) -> pyvips.Image:
    """A tissue-like RGB image: stained blobs with texture on a bright background."""
    width, height = size_px
    rng = np.random.default_rng(seed)
    coarse_w, coarse_h = max(16, width // 64), max(16, height // 64)
    yy, xx = np.mgrid[0:coarse_h, 0:coarse_w].astype(np.float64)
    density = np.zeros((coarse_h, coarse_w))
    for _ in range(7):
        cx, cy = rng.uniform(0.15, 0.85) * coarse_w, rng.uniform(0.15, 0.85) * coarse_h
        radius = rng.uniform(0.08, 0.22) * min(coarse_w, coarse_h)
        density += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2))
    tissue = np.clip((density - 0.35) * 3.0, 0.0, 1.0)[..., None]
    hue = rng.uniform(0.0, 1.0, size=(coarse_h, coarse_w, 1))
    pink = np.array([225.0, 150.0, 190.0])
    purple = np.array([120.0, 70.0, 160.0])
    stain = pink * (1 - hue) + purple * hue
    rgb = np.asarray(BACKGROUND_RGB, dtype=np.float64) * (1 - tissue) + stain * tissue
    coarse = pyvips.Image.new_from_array(np.ascontiguousarray(rgb.astype(np.uint8)))
    coarse = coarse.copy(interpretation="srgb")
    image = coarse.resize(width / coarse_w, vscale=height / coarse_h, kernel="linear")
    image = _exact_size(image, width, height)
    mask = _exact_size(
        pyvips.Image.new_from_array(np.ascontiguousarray((tissue[..., 0] * 255).astype(np.uint8))).resize(
            width / coarse_w, vscale=height / coarse_h, kernel="linear"
        ),
        width,
        height,
    )
    noise = pyvips.Image.gaussnoise(width, height, mean=0.0, sigma=18.0, seed=seed)
    textured = image + noise * (mask / 255.0)
    result: pyvips.Image = textured.cast("uchar").copy(interpretation="srgb")
    return result


def _exact_size(image: pyvips.Image, width: int, height: int) -> pyvips.Image:
    image = image.crop(0, 0, min(width, image.width), min(height, image.height))
    if image.width == width and image.height == height:
        return image
    embedded: pyvips.Image = image.embed(0, 0, width, height, extend="copy")
    return embedded


def level_sizes(spec: SlideSpec) -> list[tuple[int, int]]:
    """(columns, rows) of each level, base first."""
    width, height = spec.base_size_px
    return [(width // 4**k, height // 4**k) for k in range(spec.n_levels)]


def encode_frame(tile: np.ndarray, transfer_syntax: str) -> bytes:
    """Encode one RGB tile as a DICOM frame of the given transfer syntax."""
    if transfer_syntax == JPEG_BASELINE:
        image = pyvips.Image.new_from_array(tile).copy(interpretation="srgb" if tile.ndim == 3 else "b-w")
        data: bytes = image.jpegsave_buffer(Q=85, keep="none")
        return data
    if transfer_syntax == JPEG_2000:
        return bytes(imagecodecs.jpeg2k_encode(tile, level=45, codecformat="J2K", reversible=False, mct=True))
    if transfer_syntax == JPEG_2000_LOSSLESS:
        return bytes(imagecodecs.jpeg2k_encode(tile, codecformat="J2K", reversible=True, mct=True))
    if transfer_syntax == EXPLICIT_VR_LE:
        return np.ascontiguousarray(tile, dtype=np.uint8).tobytes()
    raise ValueError(f"transfer syntax {transfer_syntax!r} is not one the fixtures can encode")


def tile_frames(
    level: np.ndarray, transfer_syntax: str, tile_px: int = TILE_PX, sparse: bool = False, short_edges: bool = False
) -> tuple[list[bytes], list[tuple[int, int]]]:
    """Cut a level into frames (row-major, edge tiles padded) and their 1-based (column, row) positions.

    With ``sparse``, tiles holding only background are left out (TILED_SPARSE);
    with ``short_edges``, edge tiles are encoded at the size of the pixels they hold.
    """
    rows, cols = level.shape[:2]
    frames, positions = [], []
    for y in range(0, rows, tile_px):
        for x in range(0, cols, tile_px):
            part = level[y : y + tile_px, x : x + tile_px]
            if sparse and np.abs(part.astype(int) - np.asarray(BACKGROUND_RGB)[: part.shape[-1]]).max() <= 2:
                continue
            tile = np.empty((tile_px, tile_px, *part.shape[2:]), dtype=np.uint8)
            tile[...] = BACKGROUND_RGB if part.ndim == 3 else BACKGROUND_RGB[0]
            tile[: part.shape[0], : part.shape[1]] = part
            frames.append(encode_frame(np.ascontiguousarray(part) if short_edges else tile, transfer_syntax))
            positions.append((x + 1, y + 1))
    return frames, positions


def srgb_profile() -> bytes:
    """libvips's built-in sRGB ICC profile."""
    image = pyvips.Image.black(1, 1, bands=3).copy(interpretation="srgb")
    profile: bytes = image.icc_transform("srgb", input_profile="srgb").get("icc-profile-data")
    return profile


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _illumination(spec: SlideSpec) -> Dataset:
    if spec.channels:
        return _code("111743", "DCM", "Epifluorescence illumination")
    return _code("111744", "DCM", "Brightfield illumination")


def _dataset(
    spec: SlideSpec,
    series: SeriesRecord,
    *,
    sop_instance_uid: str,
    instance_number: int,
    image_type: Sequence[str],
    size_px: tuple[int, int],
    tile_px: tuple[int, int],
    spacing_mm: float | None,
    transfer_syntax: str,
    frames: list[bytes],
    positions: list[tuple[int, int]] | None = None,
    channel: int = 0,
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = WSI_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = WSI_SOP_CLASS
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyInstanceUID = series.study_uid
    ds.SeriesInstanceUID = series.series_uid
    ds.FrameOfReferenceUID = _uid(spec.key, "frame-of-reference")
    ds.DimensionOrganizationType = "TILED_FULL" if positions is None else "TILED_SPARSE"
    ds.Modality = "SM"
    ds.PatientID = spec.patient_id
    ds.PatientName = spec.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = "20260101"
    ds.StudyTime = "000000"
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.AcquisitionDateTime = "20260101000000"
    ds.ContentDate = "20260101"
    ds.ContentTime = "000000"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.Manufacturer = "slidestock synthetic"
    ds.ManufacturerModelName = "fixture"
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = "0"
    ds.ContainerIdentifier = spec.container_id
    ds.IssuerOfTheContainerIdentifierSequence = DicomSequence([])
    ds.ContainerTypeCodeSequence = DicomSequence([_code("433466003", "SCT", "Microscope slide")])
    specimen = Dataset()
    specimen.SpecimenIdentifier = spec.container_id
    specimen.SpecimenUID = _uid(spec.key, "specimen")
    specimen.IssuerOfTheSpecimenIdentifierSequence = DicomSequence([])
    specimen.SpecimenPreparationSequence = DicomSequence([])
    ds.SpecimenDescriptionSequence = DicomSequence([specimen])
    ds.ImageType = list(image_type)
    ds.SamplesPerPixel = 1 if spec.channels else 3
    ds.PhotometricInterpretation = spec.photometric or PHOTOMETRIC[UID(transfer_syntax)]
    if not spec.channels:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = tile_px[1], tile_px[0]
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = len(frames)
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = size_px
    ds.TotalPixelMatrixFocalPlanes = 1
    ds.NumberOfOpticalPaths = 1
    ds.NumberOfFocalPlanes = 1
    ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem = 20.0
    origin.YOffsetInSlideCoordinateSystem = 40.0
    ds.TotalPixelMatrixOriginSequence = DicomSequence([origin])
    ds.SpecimenLabelInImage = "YES" if "LABEL" in image_type else "NO"
    ds.BurnedInAnnotation = "YES" if "LABEL" in image_type else "NO"
    ds.FocusMethod = "AUTO"
    ds.ExtendedDepthOfField = "NO"
    ds.VolumetricProperties = "VOLUME"
    if transfer_syntax in (EXPLICIT_VR_LE, JPEG_2000_LOSSLESS):
        ds.LossyImageCompression = "00"
    else:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1" if transfer_syntax == JPEG_BASELINE else "ISO_15444_1"
        ds.LossyImageCompressionRatio = 10
    optical_path = Dataset()
    optical_path.OpticalPathIdentifier = str(channel + 1)
    optical_path.IlluminationTypeCodeSequence = DicomSequence([_illumination(spec)])
    optical_path.IlluminationColorCodeSequence = DicomSequence([_code("11744", "DCM", "Full Spectrum")])
    if spec.icc_profile:
        optical_path.ICCProfile = srgb_profile()
    ds.OpticalPathSequence = DicomSequence([optical_path])

    shared = Dataset()
    frame_type = Dataset()
    frame_type.FrameType = list(image_type)
    shared.WholeSlideMicroscopyImageFrameTypeSequence = DicomSequence([frame_type])
    path_id = Dataset()
    path_id.OpticalPathIdentifier = str(channel + 1)
    shared.OpticalPathIdentificationSequence = DicomSequence([path_id])
    if spacing_mm is not None:
        measures = Dataset()
        measures.PixelSpacing = [spacing_mm, spacing_mm]
        measures.SliceThickness = 0.004
        shared.PixelMeasuresSequence = DicomSequence([measures])
        ds.ImagedVolumeWidth = size_px[0] * spacing_mm
        ds.ImagedVolumeHeight = size_px[1] * spacing_mm
        ds.ImagedVolumeDepth = 0.004
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    if positions is not None:
        ds.PerFrameFunctionalGroupsSequence = DicomSequence([_plane_position(c, r, spacing_mm) for c, r in positions])
    ds.PixelData = b"".join(frames) if transfer_syntax == EXPLICIT_VR_LE else encapsulate(frames, has_bot=True)
    ds["PixelData"].VR = "OB"
    return ds


def _plane_position(column: int, row: int, spacing_mm: float | None) -> Dataset:
    """A per-frame item placing one TILED_SPARSE frame (1-based pixel position of its top-left)."""
    position = Dataset()
    position.ColumnPositionInTotalImagePixelMatrix = column
    position.RowPositionInTotalImagePixelMatrix = row
    step = spacing_mm or 0.00025
    position.XOffsetInSlideCoordinateSystem = round(20.0 + (row - 1) * step, 6)
    position.YOffsetInSlideCoordinateSystem = round(40.0 + (column - 1) * step, 6)
    position.ZOffsetInSlideCoordinateSystem = 0.0
    item = Dataset()
    item.PlanePositionSlideSequence = DicomSequence([position])
    return item


def _write_instance(
    root: Path,
    spec: SlideSpec,
    series: SeriesRecord,
    *,
    name: str,
    number: int,
    image_type: tuple[str, ...],
    pixels: np.ndarray,
    spacing_mm: float | None,
    tiled: bool,
    transfer_syntax: str,
    channel: int = 0,
) -> list[Level]:
    """One instance, or the parts of a concatenation when the level is at least ``concatenate_from_px`` wide."""
    rows, cols = pixels.shape[:2]
    positions: list[tuple[int, int]] | None = None
    if tiled:
        frames, positions = tile_frames(pixels, transfer_syntax, sparse=spec.sparse, short_edges=spec.short_edge_frames)
        tile = (TILE_PX, TILE_PX)
        positions = positions if spec.sparse else None
    else:
        frames = [encode_frame(np.ascontiguousarray(pixels), transfer_syntax)]
        tile = (cols, rows)
    # A concatenation splits the frames in two parts, each its own instance (as some scanners write large levels).
    split = len(frames) // 2 if spec.concatenate_from_px and cols >= spec.concatenate_from_px and tiled else 0
    parts = [(0, frames[:split]), (split, frames[split:])] if split else [(0, frames)]
    written = []
    for k, (offset, part_frames) in enumerate(parts):
        part_name = f"{name}-part{k + 1}" if split else name
        sop_uid = _uid(spec.key, part_name)
        crdc_uuid = _uuid(spec.key, part_name)
        ds = _dataset(
            spec,
            series,
            sop_instance_uid=sop_uid,
            instance_number=number * 10 + k if split else number,
            image_type=image_type,
            size_px=(cols, rows),
            tile_px=tile,
            spacing_mm=spacing_mm,
            transfer_syntax=transfer_syntax,
            frames=part_frames,
            positions=None if positions is None else positions[offset : offset + len(part_frames)],
            channel=channel,
        )
        if split:
            ds.ConcatenationUID = _uid(spec.key, name, "concatenation")
            ds.SOPInstanceUIDOfConcatenationSource = _uid(spec.key, name)
            ds.InConcatenationNumber = k + 1
            ds.InConcatenationTotalNumber = len(parts)
            ds.ConcatenationFrameOffsetNumber = offset
        path = root / BUCKET / series.crdc_series_uuid / f"{crdc_uuid}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        written.append(
            Level(
                sop_instance_uid=sop_uid,
                crdc_instance_uuid=crdc_uuid,
                image_type=image_type,
                size_px=(cols, rows),
                spacing_um=None if spacing_mm is None else spacing_mm * 1000.0,
                transfer_syntax=transfer_syntax,
                size_bytes=path.stat().st_size,
            )
        )
    return written


@dataclass(frozen=True)
class LargeLevel:
    """A single-level slide written tile by tile: which palette tile stands at each place, and their colours."""

    path: Path
    size_px: tuple[int, int]
    tile_map: np.ndarray  # (tile rows, tile columns): index into colours
    colours: np.ndarray  # (n, 3) uint8: the mean colour of each palette tile


def write_large_level(
    path: Path, size_px: tuple[int, int], seed: int = 0, spacing_um: float = 0.25, noise: float = 40.0
) -> LargeLevel:
    """Write a single-level JPEG DICOM WSI of ``size_px`` without ever holding it in memory.

    Each tile is one of a small palette (a flat colour from a coarse tissue
    map, with Gaussian texture of ``noise`` sigma, so JPEG files come out the
    size real tissue gives), encoded once and written wherever the map puts
    it. That makes 40,000 x 40,000 px (about 1 GB) take seconds to write.
    """
    width, height = size_px
    across, down = math.ceil(width / TILE_PX), math.ceil(height / TILE_PX)
    coarse = tissue_image((across, down), seed).numpy()
    # Colours quantised to steps of 16 (the background kept exact): a palette of a few dozen tiles.
    quantised = np.where(coarse == np.asarray(BACKGROUND_RGB), coarse, coarse // 16 * 16 + 8).reshape(-1, 3)
    colours, tile_map = np.unique(quantised, axis=0, return_inverse=True)
    rng = np.random.default_rng(seed)
    frames = []
    for colour in colours:
        texture = 0.0 if (colour == BACKGROUND_RGB).all() else noise
        tile = np.clip(colour + rng.normal(0.0, texture, (TILE_PX, TILE_PX, 1)), 0, 255).astype(np.uint8)
        frames.append(encode_frame(tile, JPEG_BASELINE))
    spec = SlideSpec("large", "LARGE-01", "LARGE-01-01Z-00-DX1", size_px, spacing_um, n_levels=1, seed=seed)
    series = SeriesRecord(spec, _uid(spec.key, "study"), _uid(spec.key, "series"), _uuid(spec.key, "series"))
    ds = _dataset(
        spec,
        series,
        sop_instance_uid=_uid(spec.key, "level0"),
        instance_number=1,
        image_type=("ORIGINAL", "PRIMARY", "VOLUME", "NONE"),
        size_px=size_px,
        tile_px=(TILE_PX, TILE_PX),
        spacing_mm=spacing_um / 1000.0,
        transfer_syntax=JPEG_BASELINE,
        frames=[],
    )
    ds.NumberOfFrames = across * down
    del ds.PixelData
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    with path.open("ab") as out:
        # Encapsulated pixel data: undefined length, an empty basic offset table, an item per frame.
        out.write(b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\x00\x00\x00\x00")
        padded = [f + b"\x00" * (len(f) % 2) for f in frames]  # items have an even length
        items = [b"\xfe\xff\x00\xe0" + len(f).to_bytes(4, "little") + f for f in padded]
        for index in tile_map.ravel():
            out.write(items[index])
        out.write(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
    return LargeLevel(path, size_px, tile_map.reshape(down, across), colours.astype(np.uint8))


def _to_array(image: pyvips.Image) -> np.ndarray:
    array: np.ndarray = image.numpy()
    return np.ascontiguousarray(array)


def write_series(spec: SlideSpec, root: Path) -> SeriesRecord:
    """Write every instance of one slide under ``root/<bucket>/<crdc_series_uuid>/``."""
    series = SeriesRecord(
        spec=spec,
        study_uid=_uid(spec.key, "study"),
        series_uid=_uid(spec.key, "series"),
        crdc_series_uuid=_uuid(spec.key, "series"),
    )
    base_w, base_h = spec.base_size_px
    base = tissue_image(spec.base_size_px, spec.seed).copy_memory()
    instances = []
    for k, (width, height) in enumerate(level_sizes(spec)):
        level = base if k == 0 else base.resize(width / base_w, vscale=height / base_h)
        level = _exact_size(level, width, height)
        # The exact spacing of a level follows from the base spacing and the size ratio.
        spacing_mm = spec.base_spacing_um * base_w / width / 1000.0
        pixels = _to_array(level)
        # Fluorescence: one grey instance per channel (here the RGB image's bands stand for the channels).
        channels = [(c, f"level{k}-ch{c + 1}", np.ascontiguousarray(pixels[:, :, c])) for c in range(spec.channels)]
        for channel, name, plane in channels or [(0, f"level{k}", pixels)]:
            instances.extend(
                _write_instance(
                    root,
                    spec,
                    series,
                    name=name,
                    number=k + 1,
                    image_type=("ORIGINAL" if k == 0 else "DERIVED", "PRIMARY", "VOLUME", "NONE"),
                    pixels=plane,
                    spacing_mm=None if spec.no_spacing or (k and spec.spacing_on_base_only) else spacing_mm,
                    tiled=True,
                    transfer_syntax=spec.level_syntaxes[k] if spec.level_syntaxes else spec.transfer_syntax,
                    channel=channel,
                )
            )
        if spec.second_volume and k == 2:
            instances.extend(
                _write_instance(
                    root,
                    spec,
                    series,
                    name="resampled2",
                    number=50,
                    image_type=("DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"),
                    pixels=_to_array(level),
                    spacing_mm=spacing_mm,
                    tiled=True,
                    transfer_syntax=JPEG_BASELINE,
                )
            )
    if spec.label_and_overview:
        instances.extend(_label_and_overview(root, spec, series, base))
    return SeriesRecord(
        spec=spec,
        study_uid=series.study_uid,
        series_uid=series.series_uid,
        crdc_series_uuid=series.crdc_series_uuid,
        instances=tuple(instances),
    )


def _label_and_overview(root: Path, spec: SlideSpec, series: SeriesRecord, base: pyvips.Image) -> list[Level]:
    """A barcode-like LABEL without spacing, and an OVERVIEW at 15 µm/px.

    The overview's spacing equals the demo target, so a level rule that forgot
    to exclude non-VOLUME instances would pick it.
    """
    stripes = np.full((300, 600, 3), 255, dtype=np.uint8)
    widths = np.random.default_rng(spec.seed).integers(2, 9, size=60)
    x = 20
    for i, w in enumerate(widths):
        if i % 2 == 0 and x + w < 580:
            stripes[60:240, x : x + w] = 0
        x += int(w)
    overview_spacing_um = 15.0
    scale = spec.base_spacing_um / overview_spacing_um
    overview = _to_array(base.resize(scale))
    return [
        *_write_instance(
            root,
            spec,
            series,
            name="label",
            number=90,
            image_type=("ORIGINAL", "PRIMARY", "LABEL", "NONE"),
            pixels=stripes,
            spacing_mm=None,
            tiled=False,
            transfer_syntax=JPEG_BASELINE,
        ),
        *_write_instance(
            root,
            spec,
            series,
            name="overview",
            number=91,
            image_type=("ORIGINAL", "PRIMARY", "OVERVIEW", "NONE"),
            pixels=overview,
            spacing_mm=overview_spacing_um / 1000.0,
            tiled=False,
            transfer_syntax=JPEG_BASELINE,
        ),
    ]


# ---------------------------------------------------------------- index tables


def _bigquery_type(column: dict[str, Any]) -> pa.DataType:
    scalar = {"STRING": pa.string(), "FLOAT": pa.float64(), "INTEGER": pa.int64()}[str(column["type"])]
    return pa.list_(scalar) if column.get("mode") == "REPEATED" else scalar


def table_schema(index_name: str) -> pa.Schema:
    """The Arrow schema of an idc-index table, from the schema the wheel ships."""
    if index_name == "index":
        path = idc_index_data.IDC_INDEX_PARQUET_FILEPATH
        assert path is not None
        return pq.read_schema(path).remove_metadata()
    meta = idc_index_data.INDEX_METADATA[index_name]["schema"]
    assert isinstance(meta, dict)
    columns = meta["columns"]
    assert isinstance(columns, list)
    return pa.schema([(c["name"], _bigquery_type(c)) for c in columns])


def arrow_table(index_name: str, rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Rows as an Arrow table with exactly the idc-index schema (missing columns are null)."""
    schema = table_schema(index_name)
    rows = list(rows)
    unknown = {k for r in rows for k in r} - set(schema.names)
    if unknown:
        raise ValueError(f"fixture columns {sorted(unknown)} are not in the {index_name} schema")
    columns = {name: [r.get(name) for r in rows] for name in schema.names}
    return pa.table(columns, schema=schema)


def _round_sf(value: float, figures: int = 2) -> float:
    return round(value, figures - 1 - math.floor(math.log10(abs(value))))


def index_rows(records: Sequence[SeriesRecord], idc_version: int) -> list[dict[str, Any]]:
    rows = []
    for rec in records:
        syntaxes = sorted({i.transfer_syntax for i in rec.instances})
        rows.append(
            {
                "collection_id": rec.spec.collection_id,
                "PatientID": rec.spec.patient_id,
                "SeriesInstanceUID": rec.series_uid,
                "StudyInstanceUID": rec.study_uid,
                "source_DOI": f"10.5555/slidestock.{rec.spec.collection_id}",
                "Modality": "SM",
                "SOPClassUID": str(WSI_SOP_CLASS),
                "sop_class_name": "VL Whole Slide Microscopy Image Storage",
                "TransferSyntaxUID": ",".join(syntaxes),
                "transfer_syntax_name": ",".join(TRANSFER_SYNTAX_NAMES[UID(s)] for s in syntaxes),
                "PhotometricInterpretation": ",".join(
                    sorted({rec.spec.photometric or PHOTOMETRIC[UID(s)] for s in syntaxes})
                ),
                "PixelRepresentation": "0",
                "Manufacturer": "slidestock synthetic",
                "SeriesDescription": "synthetic whole slide image",
                "SeriesNumber": "1",
                "instanceCount": len(rec.instances),
                "license_short_name": "CC BY 4.0",
                "series_init_idc_version": idc_version,
                "series_revised_idc_version": idc_version,
                "aws_bucket": BUCKET,
                "crdc_series_uuid": rec.crdc_series_uuid,
                "series_aws_url": f"s3://{BUCKET}/{rec.crdc_series_uuid}/*",
                "series_size_MB": rec.size_bytes / 1_000_000.0,
            }
        )
    return rows


def sm_index_rows(records: Sequence[SeriesRecord]) -> list[dict[str, Any]]:
    rows = []
    for rec in records:
        base = rec.instances[0]
        rows.append(
            {
                "SeriesInstanceUID": rec.series_uid,
                "ContainerIdentifier": rec.spec.container_id,
                "embeddingMedium_CodeMeaning": ["Tissue freezing medium"],
                "tissueFixative_CodeMeaning": ["Neutral Buffered Formalin"],
                "staining_usingSubstance_CodeMeaning": ["hematoxylin stain", "water soluble eosin stain"],
                "min_PixelSpacing_2sf": None if base.spacing_um is None else _round_sf(base.spacing_um / 1000.0),
                "max_TotalPixelMatrixColumns": base.size_px[0],
                "max_TotalPixelMatrixRows": base.size_px[1],
                "ObjectiveLensPower": 40,
                "primaryAnatomicStructure_CodeMeaning": "Breast" if "brca" in rec.spec.collection_id else "Lung",
                "illuminationType_CodeMeaning": str(_illumination(rec.spec).CodeMeaning),
            }
        )
    return rows


def sm_instance_index_rows(records: Sequence[SeriesRecord]) -> list[dict[str, Any]]:
    rows = []
    for rec in records:
        for inst in rec.instances:
            rows.append(
                {
                    "SOPInstanceUID": inst.sop_instance_uid,
                    "SeriesInstanceUID": rec.series_uid,
                    "staining_usingSubstance_CodeMeaning": [
                        "hematoxylin stain",
                        "water soluble eosin stain",
                    ],
                    "PixelSpacing_0": None if inst.spacing_um is None else _round_sf(inst.spacing_um / 1000.0),
                    "ImageType": list(inst.image_type),
                    "TransferSyntaxUID": inst.transfer_syntax,
                    "instance_size": inst.size_bytes,
                    "TotalPixelMatrixColumns": inst.size_px[0],
                    "TotalPixelMatrixRows": inst.size_px[1],
                    "crdc_instance_uuid": inst.crdc_instance_uuid,
                }
            )
    return rows


def write_tables(records: Sequence[SeriesRecord], out_dir: Path, idc_version: int) -> dict[str, Path]:
    """Write the three index tables for ``records``; returns their paths by table name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {
        "index": arrow_table("index", index_rows(records, idc_version)),
        "sm_index": arrow_table("sm_index", sm_index_rows(records)),
        "sm_instance_index": arrow_table("sm_instance_index", sm_instance_index_rows(records)),
    }
    paths = {}
    for name, table in tables.items():
        path = out_dir / f"{name}.parquet"
        pq.write_table(table, path)
        paths[name] = path
    return paths


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
# 0.499 µm (indexed 0.5) whose size is no multiple of 8, with a GDC twin of the same pixels.
FIDELITY_SLIDES: tuple[SlideSpec, ...] = (
    SlideSpec("fidelity", "TCGA-F1-A001", "TCGA-F1-A001-01Z-00-DX1", (8200, 6150), base_spacing_um=0.2527, seed=41),
    SlideSpec("fidelity", "FID-02", "FID-ONELEVEL-01", (2220, 2967), base_spacing_um=0.499, n_levels=1, seed=42),
    SlideSpec("fidelity", "FID-03", "FID-SHORTEDGE-01", (1500, 1100), n_levels=2, short_edge_frames=True, seed=43),
    SlideSpec("fidelity", "FID-04", "FID-RGBLABEL-01", (1200, 900), n_levels=2, photometric="RGB", seed=44),
    # Both levels (1600 and 400 px wide) split into two instances sharing a ConcatenationUID.
    SlideSpec("fidelity", "FID-05", "FID-CONCAT-01", (1600, 1200), n_levels=2, concatenate_from_px=400, seed=45),
    SlideSpec(
        "fidelity", "FID-06", "FID-FLUO-01", (1200, 900), n_levels=2, channels=2, photometric="MONOCHROME2", seed=46
    ),
)


DICOM_ALL_PREFIX = "idc-open-metadata/bigquery_export/idc_v{version}/dicom_all"


def write_dicom_all(tables: Mapping[str, Path], folder: Path) -> Path:
    """An IDC Parquet export (``dicom_all``, one row per instance) of the fixture tables.

    Only the columns slidestock reads, under their real dicom_all names and
    nesting (PixelSpacing inside SharedFunctionalGroupsSequence), split in
    two files, plus one CT instance that a Modality filter must drop.
    """
    index = pq.read_table(tables["index"]).to_pandas().set_index("SeriesInstanceUID")
    sm = pq.read_table(tables["sm_index"]).to_pandas().set_index("SeriesInstanceUID")
    rows = []
    for inst in pq.read_table(tables["sm_instance_index"]).to_pylist():
        series = index.loc[inst["SeriesInstanceUID"]]
        spacing = inst["PixelSpacing_0"]
        rows.append(
            {
                "collection_id": series["collection_id"],
                "PatientID": series["PatientID"],
                "StudyInstanceUID": series["StudyInstanceUID"],
                "SeriesInstanceUID": inst["SeriesInstanceUID"],
                "SOPInstanceUID": inst["SOPInstanceUID"],
                "Modality": "SM",
                "ContainerIdentifier": sm.loc[inst["SeriesInstanceUID"], "ContainerIdentifier"],
                "source_DOI": series["source_DOI"],
                "license_short_name": series["license_short_name"],
                "aws_bucket": series["aws_bucket"],
                "crdc_series_uuid": series["crdc_series_uuid"],
                "crdc_instance_uuid": inst["crdc_instance_uuid"],
                "series_aws_url": f"s3://{series['aws_bucket']}/{series['crdc_series_uuid']}/",
                "instance_size": inst["instance_size"],
                "ImageType": inst["ImageType"],
                "TransferSyntaxUID": inst["TransferSyntaxUID"],
                "TotalPixelMatrixColumns": inst["TotalPixelMatrixColumns"],
                "TotalPixelMatrixRows": inst["TotalPixelMatrixRows"],
                "SharedFunctionalGroupsSequence": [
                    {"PixelMeasuresSequence": [{"PixelSpacing": None if spacing is None else [spacing, spacing]}]}
                ],
            }
        )
    rows.append(dict(rows[0], Modality="CT", SeriesInstanceUID=_uid("ct"), SOPInstanceUID=_uid("ct", 1)))
    folder.mkdir(parents=True, exist_ok=True)
    half = len(rows) // 2
    for number, part in enumerate((rows[:half], rows[half:])):
        pq.write_table(pa.Table.from_pylist(part), folder / f"{number:012d}.parquet")
    return folder


def build(
    out_dir: Path,
    specs: Sequence[SlideSpec] = DEMO_SLIDES,
    idc_version: int = 25,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Write objects under ``out_dir/s3`` and tables under ``out_dir/tables``.

    A ``manifest.json`` records what was built; a second call with the same
    specification reuses the files. ``progress`` is told of each slide written.
    """
    out_dir = out_dir.resolve()
    stamp = out_dir / "manifest.json"
    wanted = json.dumps([s.__dict__ for s in specs] + [idc_version, BUILD_VERSION], sort_keys=True, default=str)
    if stamp.exists() and json.loads(stamp.read_text())["spec"] == wanted:
        return {k: out_dir / v for k, v in json.loads(stamp.read_text())["paths"].items()}
    records = []
    start = time.monotonic()
    for number, spec in enumerate(specs, 1):
        records.append(write_series(spec, out_dir / "s3"))
        if progress is not None:
            size = sum(level.size_bytes for level in records[-1].instances)
            progress(f"slide {number} of {len(specs)} written: {spec.container_id}, {len(records[-1].instances)} "
                     f"instances, {size:,} bytes ({time.monotonic() - start:.0f} s)")  # fmt: skip
    paths = write_tables(records, out_dir / "tables", idc_version)
    paths["s3_root"] = out_dir / "s3"
    paths["dicom_all"] = write_dicom_all(paths, out_dir / "s3" / DICOM_ALL_PREFIX.format(version=idc_version))
    relative = {k: str(v.relative_to(out_dir)) for k, v in paths.items()}
    stamp.write_text(json.dumps({"spec": wanted, "paths": relative}, indent=1))
    return paths


# ---------------------------------------------------------------- GDC (Aperio SVS) fixtures


@dataclass(frozen=True)
class SvsSpec:
    """An Aperio-style SVS: tiled JPEG pyramid in 4x steps, thumbnail, label and macro pages."""

    barcode: str
    base_size_px: tuple[int, int]
    mpp: float = 0.25
    n_levels: int = 3
    seed: int = 0

    @property
    def file_id(self) -> str:
        return _uuid("gdc", self.barcode)

    @property
    def filename(self) -> str:
        return f"{self.barcode}.{_uuid('gdc-name', self.barcode).upper()}.svs"


GDC_SLIDES: tuple[SvsSpec, ...] = (
    SvsSpec("TCGA-G1-A001-01Z-00-DX1", (8000, 6000), seed=21),
    SvsSpec("TCGA-G1-A002-01Z-00-DX1", (6400, 9000), seed=22),
    SvsSpec("TCGA-G2-A003-01Z-00-DX1", (9600, 7200), n_levels=2, seed=23),
)
# The GDC twin of FIDELITY_SLIDES' one-level slide: the same pixels as an SVS.
FIDELITY_SVS = SvsSpec("FID-ONELEVEL-01", (2220, 2967), mpp=0.499, n_levels=1, seed=42)
_APERIO = "Aperio Image Library v12.0.15"


def write_svs(spec: SvsSpec, path: Path) -> None:
    """Write ``spec`` as an SVS in Aperio's page order: base, thumbnail, levels, label, macro."""
    import tifffile

    width, height = spec.base_size_px
    base = tissue_image(spec.base_size_px, spec.seed).copy_memory()
    head = f"{_APERIO} \r\n{width}x{height} [0,0 {width}x{height}] (256x256) JPEG/RGB Q=80"
    options: dict[str, Any] = {"photometric": "rgb", "metadata": None}
    tiled: dict[str, Any] = {"tile": (256, 256), "compression": "jpeg", "compressionargs": {"level": 80}}
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        tif.write(_to_array(base), description=f"{head}|AppMag = 40|MPP = {spec.mpp:.4f}", **tiled, **options)
        thumb = _to_array(base.thumbnail_image(768))
        tif.write(thumb, description=f"{_APERIO} \r\n{width}x{height} -> {thumb.shape[1]}x{thumb.shape[0]} - ",
                  compression="jpeg", **options)  # fmt: skip
        for k in range(1, spec.n_levels):
            w, h = width // 4**k, height // 4**k
            level = _to_array(_exact_size(base.resize(w / width, vscale=h / height), w, h))
            tif.write(level, description=f"{head} -> {w}x{h} JPEG/RGB Q=80", **tiled, **options)
        label = np.full((320, 480, 3), 255, dtype=np.uint8)
        label[40:280:8, 40:440] = 0
        tif.write(label, description=f"{_APERIO}\r\nlabel 480x320", compression="lzw", subfiletype=1, **options)
        macro = _to_array(base.thumbnail_image(1024))
        tif.write(macro, description=f"{_APERIO}\r\nmacro {macro.shape[1]}x{macro.shape[0]}",
                  compression="jpeg", subfiletype=9, **options)  # fmt: skip


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
