"""The GDC path's parts: SVS directories through byte ranges, tile decoding, the HTTP client.

The HTTP tests run against the project's GDC-like server in its own process
on loopback, with faults injected on demand.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openslide
import pytest

from slidestock.errors import FetchError, RangeNotSupportedError
from slidestock.plan.levels import Target
from slidestock.read.gdcapi import BlockCache, GdcClient, fetch_ranges
from slidestock.read.svs import PageTiles, choose_page, page_levels, reduce_page
from slidestock.read.tiff import read_pages, tile_locations
from slidestock_testkit import gdcserver, svsfiles

SPEC = svsfiles.GDC_SLIDES[0]


def file_reader(path: Path) -> Any:
    data = path.read_bytes()
    return lambda offset, length: data[offset : offset + length]


def test_svs_pages_are_classified_and_spaced(gdc_build: dict[str, Path]) -> None:
    pages = read_pages(file_reader(gdc_build["files"] / SPEC.file_id))
    assert [p.kind for p in pages] == ["level", "thumbnail", "level", "level", "label", "macro"]
    assert pages[0].spacing_um == 0.25
    assert [p.size_px for p in pages if p.kind == "level"] == [(8000, 6000), (2000, 1500), (500, 375)]
    # Only the base page says its spacing; the others' follow from the size ratio (as OpenSlide derives them).
    assert [lv.spacing_um for lv in page_levels(pages).levels] == [0.25, 1.0, 4.0]
    assert page_levels(pages).notes == ()


def test_decoded_page_matches_openslide(gdc_build: dict[str, Path]) -> None:
    path = gdc_build["files"] / SPEC.file_id
    read = file_reader(path)
    page = read_pages(read)[3]
    tiles = PageTiles(page, read, lambda ranges: [read(o, n) for o, n in ranges], "svs")
    ours = reduce_page(tiles, None).image.numpy().astype(int)
    slide = openslide.OpenSlide(str(path))
    reference = np.asarray(slide.read_region((0, 0), 2, page.size_px).convert("RGB")).astype(int)
    assert ours.shape == reference.shape == (375, 500, 3)
    assert np.abs(ours - reference).mean() < 0.5


@pytest.fixture
def server(gdc_build: dict[str, Path], request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    options = getattr(request, "param", {})
    with gdcserver.serving(gdc_build["files"], log_path=tmp_path / "server.log", **options) as url:
        yield url


def test_range_reads_move_only_the_bytes_asked_for(server: str, gdc_build: dict[str, Path]) -> None:
    path = gdc_build["files"] / SPEC.file_id
    client = GdcClient(server, backoff_s=0.01)
    assert client.metadata(SPEC.file_id)["file_size"] == path.stat().st_size
    cache = BlockCache(client, SPEC.file_id, path.stat().st_size)
    page = read_pages(cache.read)[3]
    ranges = tile_locations(cache.read, page)
    tiles = fetch_ranges(client, SPEC.file_id, ranges, parallel=3).bodies
    data = path.read_bytes()
    assert [tiles[r] for r in ranges] == [data[o : o + n] for o, n in ranges]
    assert client.bytes_fetched < 0.05 * len(data)


@pytest.mark.parametrize("server", [{"faults": {SPEC.file_id: {"statuses": [503, 500]}}}], indirect=True)
def test_transient_errors_are_retried(server: str) -> None:
    client = GdcClient(server, backoff_s=0.01)
    assert client.read_range(SPEC.file_id, 0, 4) in (b"II*\x00", b"MM\x00*")
    assert client.requests == 1


@pytest.mark.parametrize("server", [{"faults": {SPEC.file_id: {"statuses": [503] * 5}}}], indirect=True)
def test_persistent_503_fails_after_the_attempts(server: str) -> None:
    with pytest.raises(FetchError, match=r"3 attempts failed; last: HTTP 503"):
        GdcClient(server, attempts=3, backoff_s=0.01).read_range(SPEC.file_id, 0, 4)


@pytest.mark.parametrize("server", [{"faults": {SPEC.file_id: {"ignore_range": True}}}], indirect=True)
def test_a_server_ignoring_range_is_detected(server: str) -> None:
    with pytest.raises(RangeNotSupportedError, match="answered a Range request with 200"):
        GdcClient(server, backoff_s=0.01).read_range(SPEC.file_id, 0, 4)


@pytest.mark.parametrize("server", [{"faults": {SPEC.file_id: {"drop_after": 3_000_000}}}], indirect=True)
def test_dropped_download_resumes_from_the_partial_length(
    server: str, gdc_build: dict[str, Path], tmp_path: Path
) -> None:
    path = gdc_build["files"] / SPEC.file_id
    data = path.read_bytes()
    client = GdcClient(server, backoff_s=0.01)
    dest = tmp_path / "whole.svs"
    assert client.download(SPEC.file_id, dest, len(data), hashlib.md5(data).hexdigest()) == len(data)
    assert dest.read_bytes() == data
    assert client.requests > 1
    # Resumed, not restarted: the bytes moved are the file's once, give or take the cut.
    assert client.bytes_fetched == len(data)


def test_wrong_md5_fails_and_leaves_no_file(server: str, gdc_build: dict[str, Path], tmp_path: Path) -> None:
    size = (gdc_build["files"] / SPEC.file_id).stat().st_size
    dest = tmp_path / "whole.svs"
    with pytest.raises(FetchError, match=rf"md5 [0-9a-f]{{32}}; expected {'0' * 32} \(manifest md5\)"):
        GdcClient(server, backoff_s=0.01).download(SPEC.file_id, dest, size, "0" * 32)
    assert not dest.exists()


@pytest.mark.parametrize("server", [{"token": "s3cret-token-value"}], indirect=True)
def test_token_is_sent_and_never_shown(server: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(FetchError, match="HTTP 403") as info:
        GdcClient(server, backoff_s=0.01).metadata(SPEC.file_id)
    assert "s3cret" not in str(info.value)
    client = GdcClient(server, token="s3cret-token-value", backoff_s=0.01)
    assert client.metadata(SPEC.file_id)["file_id"] == SPEC.file_id
    assert "s3cret" not in repr(client)
    assert all("s3cret" not in r.getMessage() for r in caplog.records)
    assert json.dumps(client.metadata(SPEC.file_id)).count("s3cret") == 0


def test_svs_page_spacings_are_exact_not_rounded() -> None:
    from slidestock.plan.levels import Target, choose_level
    from slidestock.read.svs import page_levels
    from slidestock.read.tiff import TiffPage

    # Aperio MPP 0.25 on the base, pages of 4 and 16 µm: a 4 µm target takes the 4 µm page, unscaled.
    pages = [
        TiffPage(index=i, size_px=(8000 // 4**i, 6000 // 4**i), tile_px=(256, 256), compression=7, photometric=6,
                 description="Aperio", subfiletype=0, jpegtables=None, spacing_um=0.25 if i == 0 else None,
                 locations=None, byteorder="<", bigtiff=False)
        for i in range(3)
    ]  # fmt: skip
    choice = choose_level(page_levels(pages).levels, Target(mpp=4.0))
    assert (choice.level.size_px, choice.scale) == ((500, 375), 1.0)


def test_a_libvips_pyramid_is_read_from_the_page_the_rule_picks(tmp_path: Path) -> None:
    """Observed on a held-out 40,000 px SVS written by libvips: every page says the base's MPP, its reduced pages
    are marked NewSubfileType 1 (taken for labels), and the slide was read at 15 µm/px from its base page."""
    path = tmp_path / "vips.svs"
    svsfiles.write_vips_pyramid(svsfiles.SvsSpec("VIPS-01", (6000, 4500), mpp=0.2527, seed=3), path)
    read = file_reader(path)
    pages = read_pages(read)
    assert [p.subfiletype for p in pages] == [0] + [1] * (len(pages) - 1)
    assert {p.spacing_um for p in pages} == {0.2527}  # each page repeats the base's description
    with openslide.OpenSlide(str(path)) as slide:
        assert [p.size_px for p in pages] == list(slide.level_dimensions)
    found = page_levels(pages)
    assert [p.kind for p in pages] == ["level"] * len(pages)
    assert [round(lv.spacing_um or 0, 4) for lv in found.levels] == [
        round(0.2527 * 6000 / p.size_px[0], 4) for p in pages
    ]
    assert (
        found.notes[0]
        == "page 1 says 0.2527 µm/px; the base page's 0.2527 µm/px and the size ratio give 0.5054, which is used"
    )
    chosen = choose_page(read, Target(mpp=15.0), "vips")
    # 0.2527 µm x 32 = 8.09 µm: the coarsest page at least as fine as 15 µm/px (the next is 16.2).
    assert (chosen.page.index, chosen.page.size_px) == (5, (187, 140))
    tiles = PageTiles(chosen.page, read, lambda ranges: [read(o, n) for o, n in ranges], "vips")
    assert tiles.tile_bytes < path.stat().st_size / 100  # the page's own tiles, not the base's
