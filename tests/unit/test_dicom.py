"""The generated DICOM WSI fixtures, and reading a level back as pixels.

OpenSlide (openslide-bin 4 reads DICOM WSI) is the independent reference:
each fixture series must open with it, and our decode of a level must match
its pixels.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import openslide
import pandas as pd
import pyarrow.parquet as pq
import pydicom
import pytest

from slidestock.errors import DecodeError
from slidestock.image.reduce import JPEG, JPEG2000, RAW, block_mean, plan_decode, read_level, reduce_level, resize_exact
from slidestock.read.local import read_header
from slidestock_testkit import indextables, slides
from slidestock_testkit.tissue import texture_array as tissue_array


def series_folders(demo_build: dict[str, Path]) -> list[Path]:
    return sorted((demo_build["s3_root"] / slides.BUCKET).iterdir())


def instance_path(demo_build: dict[str, Path], instances: pd.DataFrame, row: pd.Series) -> Path:
    index = pd.read_parquet(demo_build["index"]).set_index("SeriesInstanceUID")
    series_uuid = index.loc[row["SeriesInstanceUID"], "crdc_series_uuid"]
    return demo_build["s3_root"] / slides.BUCKET / series_uuid / f"{row['crdc_instance_uuid']}.dcm"


def test_demo_has_the_promised_shape(demo_build: dict[str, Path], instance_table: pd.DataFrame) -> None:
    assert len(series_folders(demo_build)) == 6
    volumes = instance_table[instance_table["ImageType"].map(lambda t: t[2] == "VOLUME")]
    per_series = volumes.groupby("SeriesInstanceUID")
    assert sorted(per_series.size().unique()) == [3, 4]
    base = per_series.apply(lambda g: g.loc[g["TotalPixelMatrixColumns"].idxmax()], include_groups=False)
    assert (base[["TotalPixelMatrixColumns", "TotalPixelMatrixRows"]].max(axis=1) >= 8000).all()
    assert (base["PixelSpacing_0"] == 0.00025).all()
    syntaxes = instance_table.groupby("SeriesInstanceUID")["TransferSyntaxUID"].agg(set)
    assert sum(s == {slides.JPEG_2000} for s in syntaxes) == 1
    assert sum(s == {slides.JPEG_BASELINE} for s in syntaxes) == 5
    flavors = instance_table["ImageType"].map(lambda t: t[2]).value_counts().to_dict()
    assert flavors == {"VOLUME": 23, "LABEL": 1, "OVERVIEW": 1}


@pytest.mark.parametrize("name", ["index", "sm_index", "sm_instance_index"])
def test_tables_have_exactly_the_idc_index_schema(demo_build: dict[str, Path], name: str) -> None:
    written = pq.read_schema(demo_build[name]).remove_metadata()
    assert written.names == indextables.table_schema(name).names
    assert written.types == indextables.table_schema(name).types


def test_sizes_in_index_are_the_file_sizes(demo_build: dict[str, Path], instance_table: pd.DataFrame) -> None:
    for _, row in instance_table.iterrows():
        assert instance_path(demo_build, instance_table, row).stat().st_size == row["instance_size"]


def test_every_series_opens_with_openslide_and_pydicom(demo_build: dict[str, Path]) -> None:
    for folder in series_folders(demo_build):
        files = sorted(folder.glob("*.dcm"))
        slide = openslide.OpenSlide(str(files[0]))
        headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        volumes = sorted(
            (
                (int(h.TotalPixelMatrixColumns), int(h.TotalPixelMatrixRows))
                for h in headers
                if h.ImageType[2] == "VOLUME"
            ),
            reverse=True,
        )
        assert list(slide.level_dimensions) == volumes
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        has_label = any(h.ImageType[2] == "LABEL" for h in headers)
        assert sorted(slide.associated_images) == (["label", "macro"] if has_label else [])
        slide.close()


@pytest.mark.parametrize("syntax", [slides.JPEG_BASELINE, slides.JPEG_2000])
def test_read_level_matches_openslide(
    demo_build: dict[str, Path], instance_table: pd.DataFrame, syntax: str, tmp_path: Path
) -> None:
    rows = instance_table[
        (instance_table["TransferSyntaxUID"] == syntax) & instance_table["ImageType"].map(lambda t: t[2] == "VOLUME")
    ]
    row = rows.sort_values("TotalPixelMatrixColumns").iloc[1]  # the level before the smallest
    # Alone in its folder, as a download is: OpenSlide would otherwise find the series' other levels.
    path = tmp_path / "level.dcm"
    shutil.copyfile(instance_path(demo_build, instance_table, row), path)
    header = read_header(path)
    level = reduce_level(header)
    width, height = int(row["TotalPixelMatrixColumns"]), int(row["TotalPixelMatrixRows"])
    assert header.size_px == (width, height) == (level.image.width, level.image.height)
    assert header.spacing_xy_um is not None
    assert header.spacing_xy_um[0] == pytest.approx(row["PixelSpacing_0"] * 1000, rel=0.05)
    ours = level.image.numpy()
    slide = openslide.OpenSlide(str(path))
    assert slide.level_count == 1
    reference = np.asarray(slide.read_region((0, 0), 0, (width, height)).convert("RGB"))
    difference = np.abs(ours.astype(int) - reference.astype(int))
    assert ours.shape == reference.shape == (height, width, 3)
    assert difference.mean() < 0.5
    assert np.percentile(difference, 99.9) <= 2


def test_non_dicom_file_is_a_decode_error(tmp_path: Path) -> None:
    path = tmp_path / "not.dcm"
    path.write_bytes(b"<html>Access Denied</html>")
    with pytest.raises(DecodeError, match=r"slide-x: not a readable DICOM file"):
        read_level(path, item="slide-x")


def test_missing_frames_are_a_decode_error(
    demo_build: dict[str, Path], instance_table: pd.DataFrame, tmp_path: Path
) -> None:
    row = instance_table.sort_values("instance_size").iloc[0]
    ds = pydicom.dcmread(instance_path(demo_build, instance_table, row))
    ds.TotalPixelMatrixColumns = int(ds.TotalPixelMatrixColumns) * 4
    broken = tmp_path / "broken.dcm"
    ds.save_as(broken)
    with pytest.raises(DecodeError, match=r"frames; expected \d+ x \d+ = \d+ tiles"):
        read_level(broken)


def test_truncated_pixel_data_is_a_decode_error_before_any_decoding(
    demo_build: dict[str, Path], instance_table: pd.DataFrame, tmp_path: Path
) -> None:
    path = level_file(demo_build, instance_table, slides.JPEG_BASELINE, 2050, tmp_path / "cut")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DecodeError, match=r"slide-x: pixel data item at byte \d+ is not a complete item of \d+ bytes"):
        read_level(path, item="slide-x")


@pytest.mark.parametrize("has_bot", [True, False])
def test_frames_in_several_fragments_are_joined_by_the_offset_table(
    demo_build: dict[str, Path], instance_table: pd.DataFrame, tmp_path: Path, has_bot: bool
) -> None:
    from pydicom.encaps import encapsulate, generate_frames

    path = level_file(demo_build, instance_table, slides.JPEG_BASELINE, 2050, tmp_path / "one")
    ds = pydicom.dcmread(path)
    n_frames = int(ds.NumberOfFrames)
    ds.PixelData = encapsulate(
        list(generate_frames(ds.PixelData, number_of_frames=n_frames)), fragments_per_frame=3, has_bot=has_bot
    )
    split = tmp_path / "split.dcm"
    ds.save_as(split)
    if not has_bot:
        with pytest.raises(DecodeError, match=rf"{3 * n_frames} fragments of pixel data for {n_frames} frames"):
            read_level(split, item="slide-x")
        return
    assert np.array_equal(read_level(split).image.numpy(), read_level(path).image.numpy())


def test_a_one_frame_label_in_several_fragments_is_one_frame(
    demo_build: dict[str, Path], instance_table: pd.DataFrame, tmp_path: Path
) -> None:
    from pydicom.encaps import encapsulate, generate_frames

    row = instance_table[instance_table["ImageType"].map(lambda t: t[2] == "LABEL")].iloc[0]
    path = alone(instance_path(demo_build, instance_table, row), tmp_path / "label")
    ds = pydicom.dcmread(path)
    assert int(ds.get("NumberOfFrames", 1)) == 1
    ds.PixelData = encapsulate(list(generate_frames(ds.PixelData, number_of_frames=1)), fragments_per_frame=4)
    split = tmp_path / "split.dcm"
    ds.save_as(split)
    level = read_level(split)
    assert read_header(split).size_px == (int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows))
    assert np.array_equal(level.image.numpy(), read_level(path).image.numpy())


def edge_files(edge_build: dict[str, Path], container: str) -> list[Path]:
    index = pd.read_parquet(edge_build["index"]).set_index("SeriesInstanceUID")
    sm = pd.read_parquet(edge_build["sm_index"]).set_index("ContainerIdentifier")
    uuid = index.loc[sm.loc[container, "SeriesInstanceUID"], "crdc_series_uuid"]
    return sorted((edge_build["s3_root"] / slides.BUCKET / uuid).glob("*.dcm"), key=lambda p: -p.stat().st_size)


def alone(path: Path, folder: Path) -> Path:
    folder.mkdir()
    copy = folder / "level.dcm"
    shutil.copyfile(path, copy)
    return copy


def test_uncompressed_frames_match_openslide(edge_build: dict[str, Path], tmp_path: Path) -> None:
    for i, path in enumerate(edge_files(edge_build, "EDGE-RAW-01")):
        header = read_header(alone(path, tmp_path / str(i)))
        level = reduce_level(header)
        assert header.transfer_syntax == slides.EXPLICIT_VR_LE
        reference = openslide.OpenSlide(str(tmp_path / str(i) / "level.dcm"))
        expected = np.asarray(reference.read_region((0, 0), 0, header.size_px).convert("RGB"))
        assert np.array_equal(level.image.numpy(), expected)


def test_sparse_level_fills_missing_tiles_with_background(edge_build: dict[str, Path], tmp_path: Path) -> None:
    base = alone(edge_files(edge_build, "EDGE-SPARSE-01")[0], tmp_path / "base")
    ds = pydicom.dcmread(base, stop_before_pixels=True)
    assert ds.DimensionOrganizationType == "TILED_SPARSE"
    header = read_header(base)
    assert header.organization == "TILED_SPARSE"
    assert header.missing_tiles == 11 * 8 - int(ds.NumberOfFrames) > 0
    ours = reduce_level(header).image.numpy().astype(int)
    # OpenSlide leaves missing tiles transparent; where it has pixels, ours are the same.
    rgba = np.asarray(openslide.OpenSlide(str(base)).read_region((0, 0), 0, header.size_px)).astype(int)
    present = rgba[..., 3] == 255
    assert 0 < present.mean() < 1
    assert np.abs(ours[present] - rgba[..., :3][present]).mean() < 0.5
    assert (ours[~present] == 255).all()


def test_levels_without_spacing_have_none_in_header(edge_build: dict[str, Path], tmp_path: Path) -> None:
    files = edge_files(edge_build, "EDGE-NOSPACING-01")
    spacings = [read_header(alone(p, tmp_path / str(i))).spacing_xy_um for i, p in enumerate(files)]
    assert spacings == [(0.25, 0.25), None, None]


def test_lossless_jpeg2000_rct_level_is_exact(edge_build: dict[str, Path], tmp_path: Path) -> None:
    files = edge_files(edge_build, "EDGE-MIXED-01")
    syntaxes = sorted(str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in files)
    assert syntaxes == sorted([slides.JPEG_BASELINE, slides.JPEG_2000_LOSSLESS, slides.JPEG_2000, slides.JPEG_BASELINE])
    lossless = next(
        p
        for p in files
        if pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID == slides.JPEG_2000_LOSSLESS
    )
    path = alone(lossless, tmp_path / "rct")
    header = read_header(path)
    assert header.photometric == "YBR_RCT"
    reference = openslide.OpenSlide(str(path)).read_region((0, 0), 0, header.size_px).convert("RGB")
    assert np.array_equal(reduce_level(header).image.numpy(), np.asarray(reference))


@pytest.mark.parametrize(
    ("codec", "scale", "size", "levels", "expected"),
    [
        (JPEG, None, 2221, 0, 1),
        (JPEG, 0.267, 2221, 0, 1),  # a factor 3.75: all of it to Lanczos
        (JPEG, 1 / 6, 2221, 0, 2),  # 6 = 2 in the DCT, 3 to Lanczos
        (JPEG, 1 / 11.9, 2221, 0, 2),  # 4 in the DCT would leave Lanczos less than 3
        (JPEG, 1 / 12, 2221, 0, 4),
        (JPEG, 1 / 30, 2221, 0, 8),
        (JPEG, 1 / 300, 2221, 0, 8),
        (JPEG2000, 1 / 30, 2048, 5, 8),  # resolution levels, on a level every one divides
        (JPEG2000, 1 / 30, 2048, 2, 4),  # as many as the codestream has
        (JPEG2000, 1 / 30, 2221, 5, 1),  # ragged: decoded whole (see plan_decode)
        (RAW, 1 / 30, 2048, 0, 1),
    ],
)
def test_the_decoder_reduces_only_where_lanczos_keeps_a_factor_three(
    codec: str, scale: float | None, size: int, levels: int, expected: int
) -> None:
    assert plan_decode(codec, scale, (256, 256), (size, 1536), levels) == expected


def level_file(demo_build: dict[str, Path], instances: pd.DataFrame, syntax: str, columns: int, folder: Path) -> Path:
    rows = instances[(instances["TransferSyntaxUID"] == syntax) & (instances["TotalPixelMatrixColumns"] == columns)]
    return alone(instance_path(demo_build, instances, rows.iloc[0]), folder)


def test_block_mean_averages_the_pixels_a_cut_block_has() -> None:
    pixels = tissue_array((13, 11), 7)
    out = block_mean(pixels, 4)
    assert out.shape == (3, 4, 3)
    wide = pixels.astype(float)
    for row in range(3):
        for col in range(4):
            block = wide[row * 4 : row * 4 + 4, col * 4 : col * 4 + 4]
            assert np.array_equal(out[row, col], np.floor(block.mean(axis=(0, 1)) + 0.5)), (row, col)
    assert block_mean(pixels, 1) is pixels


def test_a_ragged_level_decoded_in_the_dct_keeps_its_last_partial_block(
    demo_build: dict[str, Path], instance_table: pd.DataFrame, tmp_path: Path
) -> None:
    # The 2050 px level (no multiple of 4) to 1/13: 4 in the DCT, its last column of blocks 2 pixels wide.
    path = level_file(demo_build, instance_table, slides.JPEG_BASELINE, 2050, tmp_path / "one")
    header = read_header(path)
    width, height = header.size_px
    size = (round(width / 13), round(height / 13))
    reduced = reduce_level(header, size, threads=2)
    assert (reduced.decode_shrink, reduced.lanczos_factor) == (4, pytest.approx(13 / 4, abs=0.02))
    full = resize_exact(reduce_level(header).image, size)  # the level decoded whole, then Lanczos
    assert (reduced.image.width, reduced.image.height) == size
    # The last column comes from the level's last two pixels: the same as decoding everything whole.
    last = np.abs(reduced.image.numpy()[:, -1].astype(int) - full.numpy()[:, -1].astype(int))
    assert last.mean() < 1.0


def test_a_level_reduced_on_one_thread_or_several_is_the_same(
    demo_build: dict[str, Path], instance_table: pd.DataFrame, tmp_path: Path
) -> None:
    """One thread decodes in the caller (no pool per slide: it cost a small slide a fifth of its time); more
    decode the next row ahead. The same pixels either way, ragged edge and DCT reduction included."""
    path = level_file(demo_build, instance_table, slides.JPEG_BASELINE, 2050, tmp_path / "one")
    header = read_header(path)
    size = (round(header.size_px[0] / 13), round(header.size_px[1] / 13))
    one, several = reduce_level(header, size, threads=1), reduce_level(header, size, threads=3)
    assert one.decode_shrink == several.decode_shrink == 4
    assert one.image.numpy().std() > 10  # tissue, not a blank
    assert np.array_equal(one.image.numpy(), several.image.numpy())
