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

from slidestock.dicom import read_concatenation, read_header
from slidestock.errors import DecodeError
from slidestock.reduce import plan_shrink, read_level, reduce_level
from slidestock_testkit import fixtures, indextables, slides


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
    level = read_level(path)
    width, height = int(row["TotalPixelMatrixColumns"]), int(row["TotalPixelMatrixRows"])
    assert level.header.size_px == (width, height) == (level.image.width, level.image.height)
    assert level.header.spacing_xy_um is not None
    assert level.header.spacing_xy_um[0] == pytest.approx(row["PixelSpacing_0"] * 1000, rel=0.05)
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
    assert level.header.size_px == (int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows))
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
        level = read_level(alone(path, tmp_path / str(i)))
        assert level.header.transfer_syntax == slides.EXPLICIT_VR_LE
        reference = openslide.OpenSlide(str(tmp_path / str(i) / "level.dcm"))
        expected = np.asarray(reference.read_region((0, 0), 0, level.header.size_px).convert("RGB"))
        assert np.array_equal(level.image.numpy(), expected)


def test_sparse_level_fills_missing_tiles_with_background(edge_build: dict[str, Path], tmp_path: Path) -> None:
    base = alone(edge_files(edge_build, "EDGE-SPARSE-01")[0], tmp_path / "base")
    ds = pydicom.dcmread(base, stop_before_pixels=True)
    assert ds.DimensionOrganizationType == "TILED_SPARSE"
    level = read_level(base)
    assert level.header.organization == "TILED_SPARSE"
    assert level.header.missing_tiles == 11 * 8 - int(ds.NumberOfFrames) > 0
    ours = level.image.numpy().astype(int)
    # OpenSlide leaves missing tiles transparent; where it has pixels, ours are the same.
    rgba = np.asarray(openslide.OpenSlide(str(base)).read_region((0, 0), 0, level.header.size_px)).astype(int)
    present = rgba[..., 3] == 255
    assert 0 < present.mean() < 1
    assert np.abs(ours[present] - rgba[..., :3][present]).mean() < 0.5
    assert (ours[~present] == 255).all()


def test_levels_without_spacing_have_none_in_header(edge_build: dict[str, Path], tmp_path: Path) -> None:
    files = edge_files(edge_build, "EDGE-NOSPACING-01")
    spacings = [read_level(alone(p, tmp_path / str(i))).header.spacing_xy_um for i, p in enumerate(files)]
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
    level = read_level(path)
    assert level.header.photometric == "YBR_RCT"
    reference = openslide.OpenSlide(str(path)).read_region((0, 0), 0, level.header.size_px).convert("RGB")
    assert np.array_equal(level.image.numpy(), np.asarray(reference))


@pytest.mark.parametrize(
    ("syntax", "scale", "tile", "levels", "expected"),
    [
        (slides.JPEG_BASELINE, None, 256, 0, (1, 1)),
        (slides.JPEG_BASELINE, 0.267, 256, 0, (1, 1)),
        (slides.JPEG_BASELINE, 0.25, 256, 0, (2, 1)),
        (slides.JPEG_BASELINE, 0.0667, 256, 0, (4, 1)),
        (slides.JPEG_BASELINE, 0.01, 256, 0, (8, 6)),
        (slides.JPEG_2000, 0.01, 256, 5, (32, 1)),
        (slides.JPEG_2000, 0.01, 256, 2, (4, 12)),
        (slides.JPEG_2000, 0.01, 250, 5, (2, 25)),
        (slides.JPEG_2000, 0.01, 256, 0, (1, 50)),
        (slides.EXPLICIT_VR_LE, 0.01, 256, 0, (1, 50)),
    ],
)
def test_plan_shrink_leaves_a_factor_two_for_the_resize(
    syntax: str, scale: float | None, tile: int, levels: int, expected: tuple[int, int]
) -> None:
    assert plan_shrink(syntax, scale, (tile, tile), levels) == expected


def level_file(demo_build: dict[str, Path], instances: pd.DataFrame, syntax: str, columns: int, folder: Path) -> Path:
    rows = instances[(instances["TransferSyntaxUID"] == syntax) & (instances["TotalPixelMatrixColumns"] == columns)]
    return alone(instance_path(demo_build, instances, rows.iloc[0]), folder)


@pytest.mark.parametrize(("syntax", "columns"), [(slides.JPEG_BASELINE, 2050), (slides.JPEG_2000, 2250)])
def test_shrink_on_decode_gives_the_same_picture(
    demo_build: dict[str, Path], instance_table: pd.DataFrame, tmp_path: Path, syntax: str, columns: int
) -> None:
    from slidestock.reduce import resize_exact

    # A 1 µm/px level to 15 µm/px: JPEG in the DCT, JPEG 2000 by dropping two wavelet levels.
    path = level_file(demo_build, instance_table, syntax, columns, tmp_path / "one")
    full, shrunk = read_level(path), read_level(path, scale=1 / 15, threads=2)
    width, height = full.header.size_px
    assert (shrunk.decode_shrink, shrunk.box) == (4, 1)
    # The whole level: 2050 / 4 = 512.5 -> 513 columns, the last standing for half a pixel.
    assert (shrunk.image.width, shrunk.image.height) == (-(-width // 4), -(-height // 4))
    assert shrunk.header.size_px == (full.image.width, full.image.height)
    size = (round(width / 15), round(height / 15))
    a = resize_exact(full.image, size).numpy().astype(int)
    b = resize_exact(shrunk.image, size, (width / 4, height / 4)).numpy().astype(int)
    assert np.abs(a - b).mean() < 2.0


def test_box_average_is_the_rounded_block_mean(edge_build: dict[str, Path], tmp_path: Path) -> None:
    path = alone(edge_files(edge_build, "EDGE-RAW-01")[0], tmp_path / "raw")
    full = read_level(path).image.numpy().astype(np.uint32)
    reduced = read_level(path, scale=0.1, threads=3)
    assert (reduced.decode_shrink, reduced.box) == (1, 5)
    height, width = full.shape[0] // 5, full.shape[1] // 5
    blocks = full[: height * 5, : width * 5].reshape(height, 5, width, 5, 3).sum(axis=(1, 3))
    image = reduced.image.numpy()
    assert np.array_equal(image[:height, :width], ((blocks + 12) // 25).astype(np.uint8))
    # A level of 2600 x 2000 px: the last column of blocks is 2600 - 5 * 520 = 0 wide, the rows end exactly.
    assert image.shape[:2] == (-(-full.shape[0] // 5), -(-full.shape[1] // 5))


def test_box_reduce_averages_the_pixels_a_cut_block_has() -> None:
    from slidestock.reduce import box_reduce

    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, size=(11, 13, 3), dtype=np.uint8)
    out = box_reduce([pixels[:6], pixels[6:]], (13, 11), 4, "test")
    assert out.shape == (3, 4, 3)
    wide = pixels.astype(float)
    for row, col in [(0, 0), (1, 2), (2, 1), (0, 3), (2, 3)]:
        block = wide[row * 4 : row * 4 + 4, col * 4 : col * 4 + 4]
        assert np.array_equal(out[row, col], np.floor(block.mean(axis=(0, 1)) + 0.5)), (row, col)
    # The last column and row standing for a quarter and a half of a pixel: weighted means.
    weighted = box_reduce([pixels], (13, 11), 4, "test", edge_share=(0.25, 0.5))
    weights = np.outer([1, 1, 0.5], [1.0, 0.25])[:, :, None]
    corner = (wide[8:11, 12:13] * weights[:, 1:]).sum(axis=(0, 1)) / weights[:, 1:].sum()
    assert np.array_equal(weighted[2, 3], np.floor(corner + 0.5))
    assert np.array_equal(weighted[:2, :3], out[:2, :3])


def fidelity_files(build: dict[str, Path], container: str) -> list[Path]:
    index = pd.read_parquet(build["index"]).set_index("SeriesInstanceUID")
    sm = pd.read_parquet(build["sm_index"]).set_index("ContainerIdentifier")
    uuid = index.loc[sm.loc[container, "SeriesInstanceUID"], "crdc_series_uuid"]
    return sorted((build["s3_root"] / slides.BUCKET / uuid).glob("*.dcm"))


def test_a_fluorescence_channel_is_refused_with_the_reason(fidelity_build: dict[str, Path]) -> None:
    for path in fidelity_files(fidelity_build, "FID-FLUO-01"):
        with pytest.raises(DecodeError, match=r"MONOCHROME2 with 1 sample\(s\) per pixel: one channel of a fluor"):
            read_header(path)


def test_concatenation_parts_read_together_make_the_level(fidelity_build: dict[str, Path]) -> None:

    files = fidelity_files(fidelity_build, "FID-CONCAT-01")
    parts = [p for p in files if pydicom.dcmread(p, stop_before_pixels=True).TotalPixelMatrixColumns == 1600]
    assert len(parts) == 2
    for part in parts:
        with pytest.raises(DecodeError, match=r"part [12] of a concatenation of 2 instances holds 1[78] of the"):
            read_header(part)
    # Either order on input: the parts are laid out by ConcatenationFrameOffsetNumber.
    header = read_concatenation(list(reversed(parts)), "concat")
    assert len(header.grid) == 7 * 5
    assert [f.file for f in header.grid if f is not None] == [0] * 17 + [1] * 18

    image = reduce_level(header).image.numpy().astype(int)
    level = slides.tissue_image((1600, 1200), 45).numpy().astype(int)
    assert image.shape == level.shape
    assert np.abs(image - level).mean() < 3.0  # JPEG's loss only: every tile of both parts in its place


def test_a_frame_larger_than_the_tile_fails_as_malformed(fidelity_build: dict[str, Path], tmp_path: Path) -> None:
    # FID-SHORTEDGE-01's 375 x 275 px level in 2 x 2 frames of 256 px, relabelled as 200 px tiles
    # (still 2 x 2): its first frame then decodes larger than the tile the header promises.
    (level,) = [p for p in fidelity_files(fidelity_build, "FID-SHORTEDGE-01")
                if pydicom.dcmread(p, stop_before_pixels=True).TotalPixelMatrixColumns == 375]  # fmt: skip
    ds = pydicom.dcmread(level)
    ds.Rows = ds.Columns = 200
    relabelled = tmp_path / "relabelled.dcm"
    ds.save_as(relabelled)
    with pytest.raises(DecodeError, match=r"frame 1 decodes to 256 x 256 px .*expected 200 x 200 px .*malformed"):
        read_level(relabelled)


def test_fixture_build_tells_its_progress(tmp_path: Path) -> None:
    said: list[str] = []
    specs = (
        slides.SlideSpec("p", "P-01", "P-01-01Z-00-DX1", (600, 400), n_levels=2, seed=1),
        slides.SlideSpec("p", "P-02", "P-02-01Z-00-DX1", (500, 300), n_levels=1, seed=2),
    )
    built = fixtures.build(tmp_path / "build", specs, progress=said.append)
    assert [line.split(":")[0] for line in said] == ["slide 1 of 2 written", "slide 2 of 2 written"]
    sizes = pd.read_parquet(built["sm_instance_index"]).groupby("SeriesInstanceUID")["instance_size"].sum()
    assert sorted(f"{size:,} bytes" in " ".join(said) for size in sizes) == [True, True]
    assert "P-01-01Z-00-DX1, 2 instances" in said[0]
    said.clear()
    fixtures.build(tmp_path / "build", specs, progress=said.append)
    assert said == []  # reused: nothing written, nothing said
