"""Patches cut from the frames they cover, read by range from a real S3 server (rclone, behind the proxy)."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openslide
import pandas as pd
import pytest

from slidestock.errors import FetchError
from slidestock.image.patches import TiledLevel, choose_patches, crop_px, cut_patches, patch_tiles, span_px
from slidestock.image.reduce import openslide_region, resize_exact
from slidestock.read.codestreams import decode_frame_data
from slidestock.read.dicom import LevelHeader
from slidestock.read.frames import locate_tiles
from slidestock.read.local import read_header
from slidestock.read.objectstore import NEAR_BYTES, RangeClient
from slidestock.read.ranges import PREFIX_BYTES, merge
from slidestock.read.remote import RemoteObject, fetch_frames, open_instance
from slidestock.settings import PatchSettings
from slidestock_testkit import faultproxy, s3server
from slidestock_testkit.slides import PATCH_FRAMES_LOCATED_BY

SETTINGS = PatchSettings(mpp=0.5, size_px=256, n_per_slide=6, mode="random", min_tissue=0.5, seed=42)
METHODS = PATCH_FRAMES_LOCATED_BY


@pytest.fixture(scope="module")
def served(patch_proxy: tuple[s3server.S3Server, Path, Path]) -> tuple[str, Path]:
    """The proxy's URL (ranged answers as 206, each logged) in front of rclone serving the patch slides, its log."""
    return patch_proxy[0].url, patch_proxy[1]


@pytest.fixture(scope="module")
def base_levels(patch_build: dict[str, Path]) -> dict[str, tuple[str, Path, int]]:
    """Container id -> (s3 URL, local file, size) of each slide's base level."""
    instances = pd.read_parquet(patch_build["sm_instance_index"])
    series = pd.read_parquet(patch_build["sm_index"])[["SeriesInstanceUID", "ContainerIdentifier"]]
    index = pd.read_parquet(patch_build["index"])[["SeriesInstanceUID", "crdc_series_uuid", "series_aws_url"]]
    table = instances.merge(series, on="SeriesInstanceUID").merge(index, on="SeriesInstanceUID")
    out = {}
    for row in table.sort_values("TotalPixelMatrixColumns").groupby("SeriesInstanceUID").tail(1).itertuples():
        bucket = row.series_aws_url.removeprefix("s3://").split("/")[0]
        key = f"{row.crdc_series_uuid}/{row.crdc_instance_uuid}.dcm"
        out[row.ContainerIdentifier] = (
            f"s3://{bucket}/{key}",
            patch_build["s3_root"] / bucket / key,
            row.instance_size,
        )
    return out


def tiled(header: LevelHeader) -> TiledLevel:
    return TiledLevel(header.size_px, header.tile_px, header.icc_profile)


def _tissue_everywhere(shape: tuple[int, int] = (60, 80)) -> np.ndarray:
    return np.ones(shape, dtype=bool)


def _cut(url: str, size: int, endpoint: str, mask: np.ndarray, settings: PatchSettings = SETTINGS):
    obj = RemoteObject(RangeClient(endpoint), url, size)
    level = open_instance(obj, url)
    span = span_px(level.header.spacing_xy_um, settings)
    patches = choose_patches(mask, level.header.size_px, span, settings, url)
    tiles = sorted({t for p in patches for t in patch_tiles(p, crop_px(span), tiled(level.header))})
    located = locate_tiles(obj, level, tiles)
    images = list(
        cut_patches(
            patches, tiled(level.header), span, settings.size_px,
            lambda wanted: fetch_frames(obj, {t: located.frames[t] for t in wanted}, located.items, url),
            lambda tile, data: decode_frame_data(data, located.frames[tile], level.header, 1),
            located.frames.keys(),
        )
    )  # fmt: skip
    return obj, level, located, span, images


@pytest.mark.parametrize("container", sorted(METHODS))
def test_frames_are_located_where_the_file_has_them(container, served, base_levels) -> None:
    url, local, size = base_levels[container]
    obj = RemoteObject(RangeClient(served[0]), url, size)
    level = open_instance(obj, container)
    every = range(level.header.across * level.header.down)
    located = locate_tiles(obj, level, every)
    assert located.method == METHODS[container]
    whole = read_header(local)  # the level read from the file itself, fragment by fragment
    for tile in every:
        ((offset, length),) = located.frames[tile].parts
        expected = whole.grid[tile].parts[0]
        assert ((offset + 8, length - 8) if located.items else (offset, length)) == expected


@pytest.mark.parametrize("container", sorted(METHODS))
def test_patches_equal_openslide_regions_of_the_downloaded_level(container, served, base_levels, tmp_path) -> None:
    url, local, size = base_levels[container]
    _, level, _, span, images = _cut(url, size, served[0], _tissue_everywhere())
    assert len(images) == SETTINGS.n_per_slide
    alone = tmp_path / "level.dcm"  # the level downloaded whole, alone in its folder
    shutil.copy(local, alone)
    crop = crop_px(span)
    with openslide.OpenSlide(str(alone)) as slide:
        assert slide.level_dimensions == (level.header.size_px,)
        for patch, image in images:
            assert (image.width, image.height, image.bands) == (256, 256, 3)
            region = openslide_region(slide, 0, crop, origin=(patch.x, patch.y))
            reference = resize_exact(region, (256, 256), span).numpy().astype(float)
            error = np.mean((image.numpy().astype(float) - reference) ** 2)
            psnr = math.inf if error == 0 else 10 * math.log10(255**2 / error)
            assert psnr >= 50, (container, patch, psnr)


@pytest.mark.parametrize("container", ["PT-BOT-01", "PT-EOT-01", "PT-TIFF-01"])
def test_bytes_fetched_are_the_covered_frames_and_the_header_reads(container, served, base_levels) -> None:
    url, local, size = base_levels[container]
    endpoint, log = served
    key = url.removeprefix("s3://")
    already = len(faultproxy.sent(log, key))
    obj, level, located, span, images = _cut(url, size, endpoint, _tissue_everywhere())
    answers = faultproxy.sent(log, key)[already:]
    assert sum(n for _, _, n in answers) == obj.fetched  # the server sent what the client counted
    ranges = []
    for _, header, n in answers:
        first, last = (int(v) for v in header.removeprefix("bytes=").split("-"))
        assert last - first + 1 == n
        ranges.append((first, n))
    ends = [offset + n for offset, n in sorted(ranges)]
    assert all(start >= end for (start, _), end in zip(sorted(ranges)[1:], ends, strict=False))  # no byte twice
    whole = read_header(local)
    crop = crop_px(span)
    covered = {t for patch, _ in images for t in patch_tiles(patch, crop, tiled(level.header))}
    # Touching or 8 bytes apart (an item header between two frames located by a TIFF directory): one range.
    frames = merge(
        [(o - 8, n + 8) if located.items else (o, n) for t in covered for o, n in whole.grid[t].parts], NEAR_BYTES
    )
    header_reads = [r for r in ranges if not any(f[0] <= r[0] < f[0] + f[1] for f in frames)]
    # Whatever is not a covered frame is the header prefix or the TIFF directory: a few requests.
    assert ranges[0] == (0, PREFIX_BYTES[0])
    assert len(header_reads) <= 2, header_reads
    frame_bytes = sum(n for r in ranges if r not in header_reads for n in [r[1]])
    assert frame_bytes <= sum(n for _, n in frames)  # the covered frames' own bytes (some came with the header)
    assert sum(n for _, n in header_reads) <= PREFIX_BYTES[0] + (64 << 10)  # the header prefix, the TIFF directory
    for offset, length in frames:  # every covered frame arrived
        assert any(r <= offset and offset + length <= r + n for r, n in merge(ranges, NEAR_BYTES)), (offset, length)


def test_a_walk_reads_only_up_to_the_last_frame_needed(served, base_levels) -> None:
    url, _, size = base_levels["PT-NONE-01"]
    obj = RemoteObject(RangeClient(served[0]), url, size)
    level = open_instance(obj, url)
    located = locate_tiles(obj, level, [0, 1, level.header.across])
    assert located.method == "fragment walk"
    assert "walked 16 of" in located.note
    fetched = obj.fetched
    data = fetch_frames(obj, located.frames, located.items, url)
    assert sorted(data) == [0, 1, level.header.across]
    assert obj.fetched == fetched  # the walk kept the frames it passed that are wanted: nothing fetched again
    assert obj.fetched < size / 4  # the header and the first rows, not the level
    spans = sum(frame.parts[0][1] for frame in located.frames.values())
    assert sum(len(chunk) for chunk in obj.chunks.values()) <= (16 << 10) + spans  # the rest was dropped


def test_a_level_read_whole_keeps_only_the_covered_frames(served, base_levels) -> None:
    url, local, size = base_levels["PT-NONE-01"]
    obj = RemoteObject(RangeClient(served[0]), url, size)
    level = open_instance(obj, url)
    last = level.header.across * level.header.down - 1
    located = locate_tiles(obj, level, [0, last])
    assert located.method == "level read whole"
    assert obj.fetched <= size  # every byte once: to the end of the last frame, and no further than the object
    whole = read_header(local)
    assert (
        fetch_frames(obj, located.frames, True, url)[last]
        == local.read_bytes()[
            whole.grid[last].parts[0][0] : whole.grid[last].parts[0][0] + whole.grid[last].parts[0][1]
        ]
    )
    spans = sum(frame.parts[0][1] for frame in located.frames.values())
    assert sum(len(chunk) for chunk in obj.chunks.values()) <= (16 << 10) + spans


def test_patches_lie_on_tissue_without_overlap_and_repeat() -> None:
    rng = np.random.default_rng(5)
    mask = np.zeros((100, 120), dtype=bool)
    mask[20:70, 30:100] = True
    mask[rng.random(mask.shape) < 0.05] = True  # specks that no patch should be placed for
    settings = PatchSettings(mpp=0.5, size_px=256, n_per_slide=25, mode="random", min_tissue=0.6, seed=7)
    level = (12000, 10000)  # the mask's pixels are 100 level pixels; a patch spans 512
    patches = choose_patches(mask, level, (512.0, 512.0), settings, "slide-a")
    assert len(patches) == 25
    assert patches == choose_patches(mask, level, (512.0, 512.0), settings, "slide-a")
    assert patches != choose_patches(mask, level, (512.0, 512.0), settings, "slide-b")
    for p in patches:
        footprint = mask[round(p.y / 100) : round((p.y + 512) / 100), round(p.x / 100) : round((p.x + 512) / 100)]
        assert footprint.mean() == pytest.approx(p.tissue, abs=1e-4)
        assert p.tissue >= 0.6
        for q in patches:
            assert p is q or abs(p.x - q.x) >= 512 or abs(p.y - q.y) >= 512
    assert [(p.y, p.x) for p in patches] == sorted((p.y, p.x) for p in patches)
    assert [p.number for p in patches] == list(range(25))


def test_grid_mode_takes_every_tissue_cell_and_too_little_tissue_gives_fewer() -> None:
    mask = np.zeros((40, 40), dtype=bool)
    mask[0:10, 0:20] = True  # 2 x 1 cells of 10 x 10 mask pixels (1000 level px at 100 px each)
    grid = PatchSettings(mpp=1.0, size_px=250, n_per_slide=1, mode="grid", min_tissue=0.5, seed=1)
    patches = choose_patches(mask, (4000, 4000), (1000.0, 1000.0), grid, "s")
    assert [(p.x, p.y, p.tissue) for p in patches] == [(0, 0, 1.0), (1000, 0, 1.0)]
    random = PatchSettings(mpp=1.0, size_px=250, n_per_slide=50, mode="random", min_tissue=0.5, seed=1)
    few = choose_patches(mask, (4000, 4000), (1000.0, 1000.0), random, "s")
    assert 1 <= len(few) <= 2  # a 2000 x 1000 px strip holds at most two 1000 px patches without overlap


@pytest.fixture
def rules_proxy(patch_proxy: tuple[s3server.S3Server, Path, Path]) -> Iterator[tuple[str, Path, Path]]:
    """The module's proxy, whose rules a test sets (reset after it): (URL, rules file, log)."""
    server, log, rules = patch_proxy
    yield server.url, rules, log
    rules.write_text("[]")


def test_a_503_is_retried_within_fetch_attempts(rules_proxy, base_levels) -> None:
    url, rules, log = rules_proxy
    object_url, local, _ = base_levels["PT-BOT-01"]
    key = object_url.removeprefix("s3://")
    rules.write_text(json.dumps([{"match": key, "mode": "503", "times": 1}]))
    seen = len(log.read_text().splitlines())
    assert RangeClient(url, attempts=2).read(object_url, 1000, 500) == local.read_bytes()[1000:1500]
    arrived = [line for line in log.read_text().splitlines()[seen:] if key in line and line.startswith("GET")]
    assert [line.split()[-1] for line in arrived] == ["503", "forward"]
    rules.write_text(json.dumps([{"match": key, "mode": "503"}]))
    with pytest.raises(FetchError, match=r"bytes 0-9: Server returned non-2xx status code: 503 .*\(2 attempts\)$"):
        RangeClient(url, attempts=2).read(object_url, 0, 10)


def test_a_stalled_server_times_out(rules_proxy, base_levels) -> None:
    url, rules, _ = rules_proxy
    object_url, _, _ = base_levels["PT-BOT-01"]
    rules.write_text(json.dumps([{"match": object_url.removeprefix("s3://"), "mode": "stall"}]))
    with pytest.raises(FetchError, match=r"bytes 0-9"):
        RangeClient(url, attempts=1, timeout_s=1.0).read(object_url, 0, 10)


def test_reads_inside_kept_chunks_fetch_nothing_again(served, base_levels) -> None:
    object_url, local, size = base_levels["PT-TIFF-01"]
    obj = RemoteObject(RangeClient(served[0]), object_url, size)
    data = local.read_bytes()
    assert obj.read(100, 50) == data[100:150]
    assert obj.read(120, 100) == data[120:220]  # starts inside the kept chunk: only bytes 150-219 fetched
    assert obj.read(0, 10, ahead=1000) == data[0:10]
    assert (obj.fetched, obj.requests) == (50 + 70 + 1000, 3)
    assert obj.read(5, 200) == data[5:205]  # all kept by now
    assert obj.requests == 3


def test_a_server_that_answers_ranges_with_200_is_read_and_one_that_ignores_them_is_named(
    patch_build, base_levels, rules_proxy
) -> None:
    object_url, local, _ = base_levels["PT-BOT-01"]
    data = local.read_bytes()
    # rclone itself, without the proxy: a 200 with the range's Content-Range, which obstore refuses; read over HTTP.
    with s3server.serving(patch_build["s3_root"]) as s3:
        client = RangeClient(s3.url, attempts=1)
        assert client.read(object_url, 5000, 100) == data[5000:5100]
        assert client.read_many(object_url, [(0, 10), (20, 5)]).bodies == {(0, 10): data[:10], (20, 5): data[20:25]}
        assert (client.bytes_fetched, client.requests) == (100 + 25, 2)
    # A server that ignores Range (the whole object, no Content-Range): named as such, nothing guessed.
    url, rules, _ = rules_proxy
    rules.write_text(json.dumps([{"match": object_url.removeprefix("s3://"), "mode": "whole"}]))
    expected = "answers a ranged GET as if it were for the whole object"
    with pytest.raises(FetchError, match=expected):
        RangeClient(url, attempts=1).read(object_url, 5000, 100)
