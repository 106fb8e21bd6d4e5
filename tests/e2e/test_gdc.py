"""The GDC path end to end: a GDC manifest, the local GDC-like server, snakemake.

None of the fixture SVS files matches an IDC series, so every slide takes the
GDC path. Range mode must move only a few percent of each file and give the
same images as downloading whole files.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from PIL import Image

from slidestock_testkit import gdcserver, slides, svsfiles
from slidestock_testkit.s3server import S3Server
from tests.e2e.runs import Run, demo_tables, run_in

pytestmark = pytest.mark.e2e
SPECS = {spec.barcode: spec for spec in svsfiles.GDC_SLIDES}


@pytest.fixture(scope="module")
def gdc_url(gdc_build: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    names = json.loads(gdc_build["names"].read_text())
    log = tmp_path_factory.mktemp("gdc") / "server.log"
    with gdcserver.serving(gdc_build["files"], names=names, log_path=log) as url:
        yield url


def gdc_run(folder: Path, demo_build: dict[str, Path], s3: S3Server, api: str, manifest: Path, mode: str) -> Run:
    top: dict[str, Any] = {"gdc": {"api": api, "mode": mode, "parallel": 3}}
    return run_in(folder, demo_tables(demo_build), s3, top, source="gdc_manifest", manifest=str(manifest), filter={})


def records(run: Run) -> dict[str, dict[str, Any]]:
    return {
        json.loads(p.read_text())["slide_id"]: json.loads(p.read_text())
        for p in (run.workdir / "results/slides").glob("*.json")
    }


@pytest.fixture(scope="module")
def ranged(
    tmp_path_factory: pytest.TempPathFactory,
    demo_build: dict[str, Path],
    s3: S3Server,
    gdc_url: str,
    gdc_build: dict[str, Path],
) -> Run:
    return gdc_run(tmp_path_factory.mktemp("range"), demo_build, s3, gdc_url, gdc_build["manifest"], "range")


def test_range_mode_reads_only_the_needed_page(ranged: Run, gdc_build: dict[str, Path]) -> None:
    recs = records(ranged)
    assert len(recs) == 3
    for rec in recs.values():
        assert rec["status"] == "done", rec["error"]
        spec = SPECS[rec["slide_id"].rsplit("_", 1)[0]]
        size = (gdc_build["files"] / spec.file_id).stat().st_size
        assert rec["series_size_bytes"] == size
        # The chosen page's tiles, and the directory read in a few 16 KB blocks: nothing of the other pages.
        assert rec["level"]["page_tile_bytes"] <= rec["bytes_fetched"] <= rec["level"]["page_tile_bytes"] + 6 * 16384
        assert rec["bytes_fetched"] < 0.1 * size
        assert rec["level"]["skipped_pages"][-2:] == [
            f"{4 if spec.n_levels == 3 else 3}:label",
            f"{5 if spec.n_levels == 3 else 4}:macro",
        ]
        # A page's spacing is the base MPP times the size ratio, so the output
        # width is the base width scaled from MPP to 15 µm/px.
        expected_width = math.floor(spec.base_size_px[0] * spec.mpp / 15.0 + 0.5)
        with Image.open(ranged.workdir / rec["output"]["path"]) as png:
            assert png.size[0] == expected_width
            assert 25400 / png.info["dpi"][0] == pytest.approx(15.0, rel=0.01)
        assert "X-Auth-Token" not in json.dumps(rec)
    report = pd.read_csv(ranged.workdir / "results/report/slides.csv")
    assert report["fetch_from"].tolist() == ["gdc"] * 3
    assert list((ranged.workdir / "scratch").iterdir()) == []


def test_whole_mode_gives_the_same_images(
    ranged: Run, tmp_path: Path, demo_build: dict[str, Path], s3: S3Server, gdc_url: str, gdc_build: dict[str, Path]
) -> None:
    whole = gdc_run(tmp_path, demo_build, s3, gdc_url, gdc_build["manifest"], "whole")
    for slide, rec in records(whole).items():
        assert rec["status"] == "done"
        assert rec["gdc"]["md5_verified"] is True
        # The whole file exactly: its size and md5 are checked against the manifest, the API is not asked.
        assert rec["bytes_fetched"] == rec["series_size_bytes"]
        assert rec["gdc"]["api_bytes"] == 0
        assert rec["output"]["sha256"] == records(ranged)[slide]["output"]["sha256"]
    assert list((whole.workdir / "scratch").iterdir()) == []


def test_server_ignoring_range_falls_back_to_whole_file(
    tmp_path: Path, demo_build: dict[str, Path], s3: S3Server, gdc_build: dict[str, Path], ranged: Run
) -> None:
    names = json.loads(gdc_build["names"].read_text())
    victim = svsfiles.GDC_SLIDES[1]
    with gdcserver.serving(gdc_build["files"], faults={victim.file_id: {"ignore_range": True}}, names=names) as url:
        run = gdc_run(tmp_path, demo_build, s3, url, gdc_build["manifest"], "range")
    recs = records(run)
    fell_back = next(r for r in recs.values() if r["slide_id"].startswith(victim.barcode))
    assert fell_back["status"] == "done"
    assert fell_back["gdc"]["mode"] == "whole (server ignored Range)"
    assert fell_back["output"]["sha256"] == records(ranged)[fell_back["slide_id"]]["output"]["sha256"]


def test_wrong_md5_fails_that_slide_with_the_reason(
    tmp_path: Path, demo_build: dict[str, Path], s3: S3Server, gdc_url: str, gdc_build: dict[str, Path]
) -> None:
    lines = gdc_build["manifest"].read_text().splitlines()
    victim = svsfiles.GDC_SLIDES[2]
    broken = [line if victim.file_id not in line else line.replace(line.split("\t")[2], "f" * 32) for line in lines]
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text("\n".join(broken) + "\n")
    run = gdc_run(tmp_path / "run", demo_build, s3, gdc_url, manifest, "whole")
    report = pd.read_csv(run.workdir / "results/report/slides.csv").set_index("slide_id")
    failed = report[report["status"] == "failed"]
    assert len(failed) == 1
    assert failed.index[0].startswith(victim.barcode)
    assert f"expected {'f' * 32} (manifest md5)" in failed["error"].iloc[0]
    assert not (run.workdir / f"results/slides/{failed.index[0]}.png").exists()
    assert (report["status"] == "done").sum() == 2


HOSTILE = [
    "../../escape",
    "/etc/passwd",
    "$(touch PWNED); rm -rf ~",
    "a;b|c&d`e`",
    "bl\u00e5b\u00e6r \u2603.svs",
    "<b>x</b>",
]


def test_hostile_file_names_stay_inside_results(
    tmp_path: Path, demo_build: dict[str, Path], s3: S3Server, gdc_url: str, gdc_build: dict[str, Path]
) -> None:
    lines = gdc_build["manifest"].read_text().splitlines()
    rows = [line.split("\t") for line in lines[1:]]
    hostile = [lines[0]] + ["\t".join([r[0], name, *r[2:]]) for r, name in zip(rows, HOSTILE, strict=False)]
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text("\n".join(hostile) + "\n")
    workdir = tmp_path / "work"
    before = set(tmp_path.rglob("*"))
    run = gdc_run(workdir, demo_build, s3, gdc_url, manifest, "range")
    created = set(tmp_path.rglob("*")) - before
    outside = [p for p in created if workdir not in p.parents and p != workdir]
    assert outside == []
    top = {p.relative_to(workdir).parts[0] for p in created if p != workdir}
    assert top <= {"results", "logs", ".snakemake", "scratch", "config.yaml"}
    assert not list(tmp_path.rglob("PWNED"))
    ids = sorted(records(run))
    assert all(all(c.isalnum() or c in "._-" for c in slide) for slide in ids)
    assert all(r["status"] == "done" for r in records(run).values())
    page = (run.workdir / "results/report/index.html").read_text()
    assert "<b>x</b>" not in page
    assert hashlib.sha256(page.encode()).hexdigest()


def single_tiff(
    tmp_path: Path, name: str, seed: int, size_px: tuple[int, int] = (3000, 2000), **options: Any
) -> tuple[Path, Path]:
    """A folder holding one tiled TIFF (``options`` for tifffile), and a GDC manifest listing it."""
    import tifffile

    folder = tmp_path / "files"
    folder.mkdir()
    file_id = str(uuid.uuid5(uuid.NAMESPACE_URL, name))
    path = folder / file_id
    pixels = slides.tissue_image(size_px, seed).numpy()
    tifffile.imwrite(path, pixels, tile=(256, 256), photometric="rgb", metadata=None, **options)
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text(f"id\tfilename\tmd5\tsize\tstate\n{file_id}\t{name}\t{md5}\t{path.stat().st_size}\treleased\n")
    return folder, manifest


def test_a_file_our_reader_cannot_decode_falls_back_to_whole_and_openslide(
    tmp_path: Path, demo_build: dict[str, Path], s3: S3Server
) -> None:
    # Tiled, but LZW-compressed: the directory reads, the tiles do not decode here.
    folder, manifest = single_tiff(tmp_path, "TCGA-L1-Z001-01Z-00-DX1.LZW.svs", 5, compression="lzw",
                                   resolution=(40000, 40000), resolutionunit="CENTIMETER")  # fmt: skip
    with gdcserver.serving(folder) as url:
        run = gdc_run(tmp_path / "run", demo_build, s3, url, manifest, "range")
    (rec,) = records(run).values()
    assert rec["status"] == "done", rec["error"]
    assert rec["gdc"]["mode"].startswith("whole (range read failed:")
    assert "TIFF compression 5" in rec["gdc"]["mode"]
    assert rec["level"]["transfer_syntax"] == "openslide"
    assert rec["output"]["size_px"] == [50, 33]  # 3000 x 2000 px at 0.25 µm/px -> 15 µm/px
    assert list((run.workdir / "scratch").iterdir()) == []


def test_wrong_size_in_the_manifest_fails_that_slide(
    tmp_path: Path, demo_build: dict[str, Path], s3: S3Server, gdc_url: str, gdc_build: dict[str, Path]
) -> None:
    header, first, *_ = gdc_build["manifest"].read_text().splitlines()
    fields = first.split("\t")
    fields[3] = str(int(fields[3]) + 7)
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text(f"{header}\n" + "\t".join(fields) + "\n")
    run = gdc_run(tmp_path / "run", demo_build, s3, gdc_url, manifest, "range")
    (rec,) = records(run).values()
    assert rec["status"] == "failed"
    assert rec["error"] == (f"{fields[0]}: the GDC API says {int(fields[3]) - 7} bytes; the manifest says {fields[3]}")


def test_report_shows_page_spacing_and_bytes_against_file_size(ranged: Run, gdc_build: dict[str, Path]) -> None:
    report = pd.read_csv(ranged.workdir / "results/report/slides.csv").set_index("slide_id")
    for slide, row in report.iterrows():
        spec = SPECS[str(slide).rsplit("_", 1)[0]]
        assert row["series_size_bytes"] == (gdc_build["files"] / spec.file_id).stat().st_size
        assert row["fraction_fetched"] == pytest.approx(row["bytes_fetched"] / row["series_size_bytes"], abs=1e-6)
        assert row["level_spacing_um"] == pytest.approx(spec.mpp * spec.base_size_px[0] / row["level_columns"])


def test_an_svs_without_any_spacing_is_sized_by_the_fallback_or_skipped(
    tmp_path: Path, demo_build: dict[str, Path], s3: S3Server
) -> None:
    # A tiled JPEG TIFF with neither an Aperio MPP nor resolution tags.
    folder, manifest = single_tiff(tmp_path, "TCGA-L1-Z002-01Z-00-DX1.NOMPP.svs", 6, compression="jpeg")
    with gdcserver.serving(folder) as url:
        outcomes = {}
        for fallback in (None, 600):
            top: dict[str, Any] = {
                "gdc": {"api": url, "mode": "range", "parallel": 2},
                "target": {"mpp": 15.0, "max_px": None, "format": "png", "fallback_max_px": fallback},
            }
            run = run_in(tmp_path / f"run-{fallback}", demo_tables(demo_build), s3, top,
                         source="gdc_manifest", manifest=str(manifest), filter={})  # fmt: skip
            (outcomes[fallback],) = records(run).values()
    skipped, sized = outcomes[None], outcomes[600]
    assert skipped["status"] == "failed"
    assert "no pixel spacing on any of its levels; expected one to reach 15 µm/px" in skipped["error"]
    assert sized["status"] == "done", sized["error"]
    assert sized["level"]["spacing_um"] is None
    assert sized["level"]["reason"].startswith("none of its 1 VOLUME levels has a pixel spacing: sized by target.")
    assert sized["output"]["size_px"] == [600, 400]
    assert sized["output"]["spacing_um"] is None
    with Image.open(tmp_path / "run-600" / sized["output"]["path"]) as png:
        assert png.size == (600, 400)
        assert png.info["dpi"] == (0, 0)


def test_a_file_smaller_than_its_directory_reads_is_fetched_whole(
    tmp_path: Path, demo_build: dict[str, Path], s3: S3Server
) -> None:
    # A 240 x 160 px single-page TIFF: a few KB, less than the 16 KB blocks its directory is read in.
    folder, manifest = single_tiff(tmp_path, "TCGA-L1-Z003-01Z-00-DX1.TINY.svs", 7, (240, 160), compression="jpeg",
                                   resolution=(40000, 40000), resolutionunit="CENTIMETER")  # fmt: skip
    size = int(manifest.read_text().splitlines()[1].split("\t")[3])
    with gdcserver.serving(folder) as url:
        run = gdc_run(tmp_path / "run", demo_build, s3, url, manifest, "range")
    (rec,) = records(run).values()
    assert rec["status"] == "done", rec["error"]
    assert rec["gdc"]["mode"] == f"whole (a file of {size} bytes: no larger than its directory reads)"
    assert rec["gdc"]["md5_verified"] is True
    # Observed: a 2.6 KB SVS read with 2,803 bytes (105.7 % of the file). Now the file once, exactly, and no more.
    assert rec["bytes_fetched"] == size
    assert rec["gdc"]["api_bytes"] == 0
    assert rec["output"]["size_px"] == [4, 3]  # 240 x 160 px at 0.25 µm/px -> 15 µm/px


def test_a_libvips_pyramid_is_read_from_the_page_the_level_rule_picks(
    tmp_path: Path, demo_build: dict[str, Path], s3: S3Server
) -> None:
    """Observed on a held-out 40,000 px SVS written by libvips (every page repeating the base's MPP, reduced pages
    marked NewSubfileType 1): read at 15 µm/px from its base page, 70 % of the file by range, 3.9 GB of memory."""
    folder = tmp_path / "files"
    folder.mkdir()
    spec = svsfiles.SvsSpec("TCGA-L1-Z004-01Z-00-DX1", (12000, 9000), mpp=0.2527, seed=9)
    svsfiles.write_vips_pyramid(spec, folder / spec.file_id)
    size = (folder / spec.file_id).stat().st_size
    md5 = hashlib.md5((folder / spec.file_id).read_bytes()).hexdigest()
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text(f"id\tfilename\tmd5\tsize\tstate\n{spec.file_id}\t{spec.filename}\t{md5}\t{size}\treleased\n")
    with gdcserver.serving(folder) as url:
        run = gdc_run(tmp_path / "run", demo_build, s3, url, manifest, "range")
    (rec,) = records(run).values()
    assert rec["status"] == "done", rec["error"]
    # 0.2527 µm x 32 = 8.09 µm: page 5, the coarsest at least as fine as 15 µm/px (page 6 is 16.2 µm/px).
    assert (rec["level"]["page"], rec["level"]["size_px"]) == (5, [375, 281])
    assert rec["level"]["spacing_um"] == pytest.approx(0.2527 * 12000 / 375, rel=1e-9)
    spacing = 0.2527 * 12000 / 375
    assert rec["output"]["size_px"] == [math.floor(375 * spacing / 15 + 0.5), math.floor(281 * spacing / 15 + 0.5)]
    assert rec["warnings"][0].startswith("page 1 says 0.2527 µm/px; the base page's 0.2527 µm/px and the size ratio")
    # The directory (16 KB blocks: libvips writes each page's directory, description and JPEG tables apart)
    # and that page's tiles, not the base's: a small share of the file, every byte once.
    assert rec["bytes_fetched"] < 0.03 * size
    assert rec["bytes_fetched"] <= rec["level"]["page_tile_bytes"] + 3 * rec["level"]["n_levels"] * 16384


def test_a_real_aperio_file_through_the_gdc_path_agrees_with_openslide(
    tmp_path: Path, demo_build: dict[str, Path], s3: S3Server
) -> None:
    """The real CMU-1 region (Aperio's own JPEG tiles, stored RGB) read by range at 8 µm/px: against OpenSlide's
    read of it resized with Lanczos-3, by Pillow (45 dB) and by libvips (40 dB, as other tools resize)."""
    import numpy as np
    import openslide
    import pyvips
    from PIL import Image as PILImage

    from slidestock_testkit import tissue

    folder = tmp_path / "files"
    folder.mkdir()
    file_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "CMU-1-small-region"))
    (folder / file_id).write_bytes(tissue.REGION.read_bytes())
    size, md5 = tissue.REGION.stat().st_size, hashlib.md5(tissue.REGION.read_bytes()).hexdigest()
    manifest = tmp_path / "manifest.tsv"
    name = "TCGA-L1-Z005-01Z-00-DX1.CMU1.svs"
    manifest.write_text(f"id\tfilename\tmd5\tsize\tstate\n{file_id}\t{name}\t{md5}\t{size}\treleased\n")
    with gdcserver.serving(folder) as url:
        top = {"gdc": {"api": url, "mode": "range", "parallel": 3}, "target": {"mpp": 8.0}}
        run = run_in(tmp_path / "run", demo_tables(demo_build), s3, top, source="gdc_manifest",
                     manifest=str(manifest), filter={})  # fmt: skip
    (rec,) = records(run).values()
    assert rec["status"] == "done", rec["error"]
    assert (rec["level"]["page"], rec["level"]["spacing_um"]) == (0, 0.499)
    assert rec["level"]["decode_shrink"] == 4  # 16x: 4 in the DCT, 4 left to Lanczos
    with PILImage.open(run.workdir / rec["output"]["path"]) as png:
        ours = np.asarray(png.convert("RGB")).astype(float)
    with openslide.OpenSlide(str(tissue.REGION)) as slide:
        level = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
    width, height = rec["output"]["size_px"]
    pillow = np.asarray(PILImage.fromarray(level).resize((width, height), PILImage.Resampling.LANCZOS))
    vips = pyvips.Image.new_from_array(level).resize(width / 2220, vscale=height / 2967, kernel="lanczos3")
    for reference, floor in ((pillow, 45.0), (vips.numpy()[:height, :width], 40.0)):
        mse = ((ours - reference.astype(float)) ** 2).mean()
        assert 10 * math.log10(255**2 / mse) >= floor
