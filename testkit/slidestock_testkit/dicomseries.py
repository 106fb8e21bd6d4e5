"""DICOM WSI series as IDC serves them, written from a :class:`SlideSpec`.

Objects are laid out as in IDC's buckets (``<bucket>/<crdc_series_uuid>/<crdc_instance_uuid>.dcm``):
TILED_FULL or TILED_SPARSE levels in 4x steps, JPEG, JPEG 2000 or uncompressed frames,
optionally a label and overview, concatenations, fluorescence channels, and the shapes other
converters give (short edge frames, an RGB label over YCbCr frames).
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
import pyvips
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID

from slidestock.plan.levels import Level
from slidestock.read.local import read_header
from slidestock_testkit.slides import (
    BACKGROUND_RGB,
    BUCKET,
    EXPLICIT_VR_LE,
    JPEG_2000,
    JPEG_2000_LOSSLESS,
    JPEG_BASELINE,
    PHOTOMETRIC,
    TILE_PX,
    WSI_SOP_CLASS,
    SeriesRecord,
    SlideSpec,
    base_image,
    level_image,
    level_sizes,
    to_array,
    uid_for,
    uuid_for,
)
from slidestock_testkit.tissue import layout, texture_array


def encode_frame(tile: np.ndarray, transfer_syntax: str) -> bytes:
    """Encode one RGB tile as a DICOM frame of the given transfer syntax."""
    if transfer_syntax == JPEG_BASELINE:
        # As scanners and converters write them: quality 90, chroma halved across only (YBR_FULL_422).
        out = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(tile)).save(out, "JPEG", quality=90, subsampling=1)
        return out.getvalue()
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


def illumination(spec: SlideSpec) -> Dataset:
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
    """One instance of the series: its modules filled in turn, then its frames as pixel data."""
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
    ds.FrameOfReferenceUID = uid_for(spec.key, "frame-of-reference")
    ds.DimensionOrganizationType = "TILED_FULL" if positions is None else "TILED_SPARSE"
    ds.InstanceNumber = instance_number
    _patient_study_equipment(ds, spec)
    _image(ds, spec, image_type, size_px, tile_px, transfer_syntax, len(frames))
    ds.OpticalPathSequence = DicomSequence([_optical_path(spec, channel)])
    ds.SharedFunctionalGroupsSequence = DicomSequence([_shared_groups(ds, image_type, size_px, spacing_mm, channel)])
    if positions is not None:
        ds.PerFrameFunctionalGroupsSequence = DicomSequence([_plane_position(c, r, spacing_mm) for c, r in positions])
    if transfer_syntax == EXPLICIT_VR_LE:
        ds.PixelData = b"".join(frames)
    elif spec.frame_index == "eot" and len(frames) > 1:
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(frames)
    else:
        ds.PixelData = encapsulate(frames, has_bot=spec.frame_index == "bot" or len(frames) == 1)
    ds["PixelData"].VR = "OB"
    return ds


def add_tiff_directory(path: Path, transfer_syntax: str) -> None:
    """Make a written DICOM file dual-personality: a TIFF directory of its tiles, as IDC's converted slides have.

    The directory goes in a DataSetTrailingPadding element at the end of the
    file; the 128-byte preamble starts the TIFF header that points to it (a
    BigTIFF one when the file passes 4 GB). Each tile's offset and byte count
    are those of its fragment's data.
    """
    level = read_header(path)
    frames = [frame for frame in level.grid if frame is not None]
    offsets = [frame.parts[0][0] for frame in frames]
    counts = [frame.parts[0][1] for frame in frames]
    end = path.stat().st_size
    big = end + 16 * len(frames) + 4096 >= 1 << 32
    # Classic TIFF: 2-byte tag count, 12-byte entries, 4-byte values and offsets; BigTIFF: 8, 20, 8.
    count_fmt, offset_fmt, offset_type = ("Q", "Q", 16) if big else ("H", "I", 4)
    room = struct.calcsize(offset_fmt)
    ifd_at = end + 12  # after the padding element's tag, VR, reserved bytes and length
    n_tags = 11
    offsets_at = ifd_at + struct.calcsize(count_fmt) + n_tags * (4 + room + room) + room
    counts_at = offsets_at + room * len(frames)
    compression = 7 if transfer_syntax in (JPEG_BASELINE,) else 33003
    # (tag, type, values held in the entry) or (tag, type, count, offset of values written after the directory)
    inline: list[tuple[int, int, tuple[int, ...]]] = [
        (256, 4, (level.size_px[0],)),
        (257, 4, (level.size_px[1],)),
        (258, 3, (8, 8, 8)),
        (259, 3, (compression,)),
        (262, 3, (6 if compression == 7 else 2,)),
        (277, 3, (3,)),
        (284, 3, (1,)),
        (322, 4, (level.tile_px[0],)),
        (323, 4, (level.tile_px[1],)),
    ]
    arrays = [(324, offset_type, len(frames), offsets_at), (325, 4, len(frames), counts_at)]
    body = struct.pack("<" + count_fmt, n_tags)
    for tag, typ, values in inline:
        held = struct.pack(f"<{len(values)}{'H' if typ == 3 else 'I'}", *values)
        if len(held) > room:  # three SHORTs do not fit a classic entry: after the arrays
            held = struct.pack("<" + offset_fmt, counts_at + 4 * len(frames))
        body += struct.pack(f"<HH{count_fmt if big else 'I'}", tag, typ, len(values)) + held.ljust(room, b"\0")
    for tag, typ, count, at in arrays:
        body += struct.pack(f"<HH{count_fmt if big else 'I'}", tag, typ, count) + struct.pack("<" + offset_fmt, at)
    body += struct.pack("<" + offset_fmt, 0)
    body += struct.pack(f"<{len(frames)}{offset_fmt}", *offsets) + struct.pack(f"<{len(frames)}I", *counts)
    body += struct.pack("<3H", 8, 8, 8)
    body += b"\0" * (len(body) % 2)
    assert len(inline) + len(arrays) == n_tags
    head = b"II+\x00\x08\x00\x00\x00" + struct.pack("<Q", ifd_at) if big else b"II*\x00" + struct.pack("<I", ifd_at)
    with path.open("r+b") as out:
        out.seek(end)
        out.write(b"\xfc\xff\xfc\xffOB\x00\x00" + struct.pack("<I", len(body)) + body)
        out.seek(0)
        out.write(head)


def _patient_study_equipment(ds: Dataset, spec: SlideSpec) -> None:
    """Patient, study, series, equipment and specimen modules: fixed values but the slide's ids."""
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
    ds.Manufacturer = "slidestock synthetic"
    ds.ManufacturerModelName = "fixture"
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = "0"
    ds.ContainerIdentifier = spec.container_id
    ds.IssuerOfTheContainerIdentifierSequence = DicomSequence([])
    ds.ContainerTypeCodeSequence = DicomSequence([_code("433466003", "SCT", "Microscope slide")])
    specimen = Dataset()
    specimen.SpecimenIdentifier = spec.container_id
    specimen.SpecimenUID = uid_for(spec.key, "specimen")
    specimen.IssuerOfTheSpecimenIdentifierSequence = DicomSequence([])
    specimen.SpecimenPreparationSequence = DicomSequence([])
    ds.SpecimenDescriptionSequence = DicomSequence([specimen])


def _image(
    ds: Dataset,
    spec: SlideSpec,
    image_type: Sequence[str],
    size_px: tuple[int, int],
    tile_px: tuple[int, int],
    transfer_syntax: str,
    n_frames: int,
) -> None:
    """Image pixel, multi-frame and whole-slide image modules: the level's geometry and its compression."""
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
    ds.NumberOfFrames = n_frames
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


def _optical_path(spec: SlideSpec, channel: int) -> Dataset:
    optical_path = Dataset()
    optical_path.OpticalPathIdentifier = str(channel + 1)
    optical_path.IlluminationTypeCodeSequence = DicomSequence([illumination(spec)])
    optical_path.IlluminationColorCodeSequence = DicomSequence([_code("11744", "DCM", "Full Spectrum")])
    if spec.icc_profile:
        optical_path.ICCProfile = srgb_profile()
    return optical_path


def _shared_groups(
    ds: Dataset, image_type: Sequence[str], size_px: tuple[int, int], spacing_mm: float | None, channel: int
) -> Dataset:
    """The shared functional groups (frame type, optical path, pixel spacing); the imaged volume on ``ds``."""
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
    return shared


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
        sop_uid = uid_for(spec.key, part_name)
        crdc_uuid = uuid_for(spec.key, part_name)
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
            concatenation = (uid_for(spec.key, name, "concatenation"), uid_for(spec.key, name))
            _concatenation_part(ds, concatenation, k + 1, len(parts), offset)
        path = root / BUCKET / series.crdc_series_uuid / f"{crdc_uuid}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        if spec.frame_index == "tiff" and tiled and len(part_frames) > 1:
            add_tiff_directory(path, transfer_syntax)
        spacing_um = None if spacing_mm is None else spacing_mm * 1000.0
        size = path.stat().st_size
        written.append(Level(sop_uid, crdc_uuid, image_type, (cols, rows), spacing_um, transfer_syntax, size))
    return written


def _concatenation_part(ds: Dataset, uids: tuple[str, str], number: int, total: int, frame_offset: int) -> None:
    """Mark ``ds`` as part ``number`` of ``total`` of a concatenation (its UID, and its source instance's)."""
    ds.ConcatenationUID, ds.SOPInstanceUIDOfConcatenationSource = uids
    ds.InConcatenationNumber = number
    ds.InConcatenationTotalNumber = total
    ds.ConcatenationFrameOffsetNumber = frame_offset


@dataclass(frozen=True)
class LargeLevel:
    """A single-level slide written tile by tile from a palette: which palette tile stands at each place."""

    path: Path
    size_px: tuple[int, int]
    tile_map: np.ndarray  # (tile rows, tile columns): index into palette
    palette: np.ndarray  # (n, 256, 256, 3) uint8: the tiles as encoded (before JPEG)
    background: int  # the palette index of the plain background tile


def palette_tiles(seed: int, n: int = 64) -> np.ndarray:
    """``n`` tiles of real tissue texture (the first plain background), each as it will be encoded."""
    plane = texture_array((TILE_PX * 8, TILE_PX * 8), seed)
    tiles = [np.full((TILE_PX, TILE_PX, 3), BACKGROUND_RGB, dtype=np.uint8)]
    tiles += [plane[y : y + TILE_PX, x : x + TILE_PX] for y in range(0, 8 * TILE_PX, TILE_PX)
              for x in range(0, 8 * TILE_PX, TILE_PX)][: n - 1]  # fmt: skip
    return np.ascontiguousarray(np.stack(tiles))


def write_large_level(
    path: Path,
    size_px: tuple[int, int],
    seed: int = 0,
    spacing_um: float = 0.25,
    tiff_directory: bool = False,
) -> LargeLevel:
    """Write a single-level JPEG DICOM WSI of ``size_px`` without ever holding it in memory.

    Where the tissue lies is a coarse map of the slide (:func:`tissue.layout` at one pixel per
    tile); each tissue tile is one of a palette of real H&E tiles, encoded once and written
    wherever the map puts it, so the JPEG frames are the size and detail real tissue gives. That
    makes 40,000 x 40,000 px (about 1 GB) take seconds to write.
    """
    width, height = size_px
    across, down = math.ceil(width / TILE_PX), math.ceil(height / TILE_PX)
    is_tissue = layout((across, down), seed).numpy().ravel() > 127
    palette = palette_tiles(seed)
    rng = np.random.default_rng(seed + 1)
    tile_map = np.where(is_tissue, rng.integers(1, len(palette), size=is_tissue.size), 0)
    frames = [encode_frame(tile, JPEG_BASELINE) for tile in palette]
    spec = SlideSpec("large", "LARGE-01", "LARGE-01-01Z-00-DX1", size_px, spacing_um, n_levels=1, seed=seed)
    series = SeriesRecord(spec, uid_for(spec.key, "study"), uid_for(spec.key, "series"), uuid_for(spec.key, "series"))
    ds = _dataset(
        spec,
        series,
        sop_instance_uid=uid_for(spec.key, "level0"),
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
        for index in tile_map:
            out.write(items[index])
        out.write(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
    if tiff_directory:  # no offset table, but a dual-personality preamble: as IDC's converted TCGA slides
        add_tiff_directory(path, JPEG_BASELINE)
    return LargeLevel(path, size_px, tile_map.reshape(down, across), palette, 0)


def write_single_level(
    root: Path, pixels: np.ndarray, transfer_syntax: str, spacing_um: float = 0.5, name: str = "level"
) -> Path:
    """One single-level DICOM WSI of ``pixels`` (256 px tiles) alone in a folder of ``root``; its path.

    Alone, because OpenSlide reads every instance of a series it finds beside the one it opens.
    """
    rows, cols = pixels.shape[:2]
    spec = SlideSpec("single", name, f"{name}-{cols}x{rows}-{transfer_syntax}", (cols, rows), spacing_um, n_levels=1)
    series = SeriesRecord(spec, uid_for(spec.key, "study"), uid_for(spec.key, "series"), uuid_for(spec.key, "series"))
    folder = root / spec.container_id
    [level] = _write_instance(
        folder,
        spec,
        series,
        name="level0",
        number=1,
        image_type=("ORIGINAL", "PRIMARY", "VOLUME", "NONE"),
        pixels=np.ascontiguousarray(pixels),
        spacing_mm=spacing_um / 1000.0,
        tiled=True,
        transfer_syntax=transfer_syntax,
    )
    return folder / BUCKET / series.crdc_series_uuid / f"{level.crdc_instance_uuid}.dcm"


def write_series(spec: SlideSpec, root: Path) -> SeriesRecord:
    """Write every instance of one slide under ``root/<bucket>/<crdc_series_uuid>/``."""
    series = SeriesRecord(
        spec=spec,
        study_uid=uid_for(spec.key, "study"),
        series_uid=uid_for(spec.key, "series"),
        crdc_series_uuid=uuid_for(spec.key, "series"),
    )
    base_w = spec.base_size_px[0]
    base = base_image(spec.base_size_px, spec.seed, spec.real_region).copy_memory()
    instances = []
    for k, (width, height) in enumerate(level_sizes(spec)):
        level = base if k == 0 else level_image(base, (width, height))
        # The exact spacing of a level follows from the base spacing and the size ratio.
        spacing_mm = spec.base_spacing_um * base_w / width / 1000.0
        pixels = to_array(level)
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
                    pixels=to_array(level),
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
    overview = to_array(base.resize(scale))
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
