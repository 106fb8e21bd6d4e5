"""Patches end to end: snakemake with patches on, against rclone behind the proxy (which logs every range)."""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import openslide
import pandas as pd
import pytest
import pyvips
import webdataset
import yaml
from PIL import Image

from slidestock.image.output import tissue_mask
from slidestock.image.reduce import openslide_region, resize_exact
from slidestock.read.local import read_header
from slidestock.train.layouts import read_coords_h5, write_coords_h5
from slidestock.train.reader import PatchReader
from slidestock_testkit import faultproxy, gdcserver, s3server
from slidestock_testkit.dicomseries import srgb_profile
from slidestock_testkit.s3server import S3Server
from slidestock_testkit.slides import PATCH_FRAMES_LOCATED_BY
from tests.e2e.runs import REPO, Run, demo_tables, run_in, snakemake, snakemake_argv, wait_for, write_config

pytestmark = pytest.mark.e2e
PATCHES = {"enabled": True, "n_per_slide": 8, "mpp": 0.5, "size_px": 256, "min_tissue": 0.5}


@pytest.fixture(scope="module")
def served(patch_proxy: tuple[S3Server, Path, Path]) -> tuple[S3Server, Path]:
    """The proxy (as an S3Server: its URL) in front of rclone serving the patch slides, and its log."""
    return patch_proxy[0], patch_proxy[1]


def tables(build: dict[str, Path]) -> dict[str, Path]:
    return {name: build[name] for name in ("index", "sm_index", "sm_instance_index")}


def patch_run(folder: Path, build: dict[str, Path], server: S3Server, batch_size: int = 2, **patches: Any) -> Run:
    """A run of the patch slides with these patch settings: two batches of two by default (a thread each, on 2
    cores); one batch of four has two threads, two slides cut side by side."""
    fetch = {"endpoint": server.url, "attempts": 1, "batch_size": batch_size}
    top = {"patches": {**PATCHES, **patches}, "fetch": fetch}
    return run_in(folder, tables(build), server, top, filter={"collection_id": ["patch_demo"]})


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory, patch_build: dict[str, Path], served) -> Run:
    # One batch, two threads: the byte counts below are checked with slides fetched side by side.
    return patch_run(tmp_path_factory.mktemp("patches"), patch_build, served[0], batch_size=4)


def records(run: Run) -> dict[str, dict[str, Any]]:
    found = (json.loads(p.read_text()) for p in (run.workdir / "results/patches").glob("*.json"))
    return {record["slide_id"].split("_")[0]: record for record in found}


def test_every_slide_gets_its_patches_exactly_as_recorded(first: Run) -> None:
    table = pd.read_parquet(first.workdir / "results/patches/patches.parquet")
    assert len(table) == 4 * 8
    assert table.groupby("slide_id").size().tolist() == [8, 8, 8, 8]
    for row in table.itertuples():
        path = first.workdir / "results/patches" / row.path
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row.sha256
        with Image.open(path) as image:
            assert image.size == (256, 256)
            assert image.mode == "RGB"
            assert image.info["dpi"][0] == pytest.approx(25400 / 0.5, rel=1e-3)  # 0.5 µm/px written in the file
        assert row.x_um == pytest.approx(row.x_level_px * row.level_spacing_um, abs=1e-3)
    with Image.open(next((first.workdir / "results/patches").glob("PT-BOT-01*/*.png"))) as image:
        assert image.info["icc_profile"] == srgb_profile()  # the slide's ICC profile, carried
    for name, record in records(first).items():
        assert record["status"] == "done"
        assert record["frames"]["located_by"] == PATCH_FRAMES_LOCATED_BY[name]
        assert record["level"]["size_px"][0] >= 3600  # the base level: the coarsest at least as fine as 0.5 µm/px
    assert "PT-TIFF-01" in set(table["slide_id"].str.split("_").str[0])
    tcga = table[table["slide_id"].str.startswith("PT-TIFF-01")]
    assert (tcga["level_spacing_um"] == 0.2527).all()  # the header's spacing, not idc-index's rounded 0.25


def test_patches_lie_on_the_slides_tissue_without_overlap(first: Run) -> None:
    table = pd.read_parquet(first.workdir / "results/patches/patches.parquet")
    for slide, rows in table.groupby("slide_id"):
        image = pyvips.Image.new_from_file(str(first.workdir / f"results/slides/{slide}.png"))
        mask = tissue_mask(image).numpy() > 0
        fy, fx = mask.shape[0] / rows["level_rows"].iloc[0], mask.shape[1] / rows["level_columns"].iloc[0]
        span = 256 * 0.5 / rows["level_spacing_um"].iloc[0]
        for row in rows.itertuples():
            footprint = mask[
                round(row.y_level_px * fy) : round((row.y_level_px + span) * fy),
                round(row.x_level_px * fx) : round((row.x_level_px + span) * fx),
            ]
            assert footprint.mean() >= 0.5
            assert footprint.mean() == pytest.approx(row.tissue_fraction, abs=1e-4)
            others = rows[rows["patch_id"] != row.patch_id]
            assert (
                (abs(others["x_level_px"] - row.x_level_px) >= span)
                | (abs(others["y_level_px"] - row.y_level_px) >= span)
            ).all()


def test_bytes_at_the_server_are_what_the_records_count(first: Run, served) -> None:
    plan = pd.read_csv(first.workdir / "results/cohort/patch_instances.tsv", sep="\t")
    log = served[1]
    for row in plan.itertuples():
        record = json.loads((first.workdir / f"results/patches/{row.slide_id}.json").read_text())
        key = row.url.removeprefix("s3://")
        # What the server sent for this object (the module's first run, the only one so far): the patch plan's
        # header read and the patch job's ranges, as the plan and the record count them.
        assert sum(n for _, _, n in faultproxy.sent(log, key)) == record["bytes_fetched"] + row.header_bytes
        covered = record["frames"]["covered_bytes"]
        if record["frames"]["located_by"] != "level read whole":
            # The covered frames, the header prefix and (for a TIFF) its directory: nothing else but, where a
            # TIFF directory located two neighbouring frames, the 8-byte item header between them (one request).
            between = 8 * record["frames"]["covered"] if record["frames"]["located_by"].startswith("TIFF") else 0
            assert covered <= record["bytes_fetched"] <= covered + record["locating_bytes"] + between
            assert record["locating_bytes"] <= (16 << 10) + (64 << 10)
            assert record["bytes_fetched"] < 0.7 * row.instance_size


def test_a_rerun_does_nothing_and_the_same_config_gives_the_same_patches(
    first: Run, tmp_path, patch_build, served
) -> None:
    again = snakemake(first.workdir, first.config)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "rule patches" not in again.stderr
    other = patch_run(tmp_path / "again", patch_build, served[0])
    mine = pd.read_parquet(first.workdir / "results/patches/patches.parquet")
    theirs = pd.read_parquet(other.workdir / "results/patches/patches.parquet")
    assert mine["sha256"].tolist() == theirs["sha256"].tolist()
    pd.testing.assert_frame_equal(mine, theirs)


def test_a_killed_run_resumes_without_redoing_finished_slides(first: Run, tmp_path: Path, patch_build, served) -> None:
    server, log = served
    rules = log.with_name("rules.json")
    slow = records_of_build(patch_build)["PT-TIFF-01"]  # the key of its base level's object
    # 2 kB/s a request (8 in flight): its 1.4 MB of frames take over a minute, so the kill lands while it is cut,
    # however slowly the other slides go on a busy machine.
    rules.write_text(json.dumps([{"match": slow, "mode": "slow", "bytes_per_s": 2_000}]))
    top = {"patches": PATCHES, "fetch": {"endpoint": server.url, "attempts": 1}}
    config = write_config(
        tmp_path / "config.yaml", tables(patch_build), server.url, top, filter={"collection_id": ["patch_demo"]}
    )
    folder = tmp_path / "run"
    argv, env = snakemake_argv(folder, config)
    try:
        proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        # Cohort order: BOT, EOT, NONE, then TIFF, whose frames trickle in: the kill lands while it is cut.
        done = [
            folder / f"results/patches/{r['slide_id']}.json"
            for name, r in records(first).items()
            if name != "PT-TIFF-01"
        ]
        wait_for(lambda: all(p.is_file() for p in done), 120, "the first slides' patches")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        rules.write_text("[]")
    stamps = {p: p.stat().st_mtime_ns for p in done}
    assert snakemake(folder, config, "--unlock").returncode == 0  # as Snakemake says to after a kill
    resumed = snakemake(folder, config)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "rule patches:" in resumed.stderr  # the killed job's batch is run again
    assert {p: p.stat().st_mtime_ns for p in done} == stamps  # finished slides were kept, not redone
    kept = (folder / "logs/patches/b00000.log").read_text().count("done before for this plan and settings; kept")
    assert kept == len(done)
    assert len(pd.read_parquet(folder / "results/patches/patches.parquet")) == 4 * 8
    assert [p for p in folder.rglob("*") if p.name.endswith(".partial")] == []


def records_of_build(build: dict[str, Path]) -> dict[str, str]:
    """Slide id prefix (container id) -> the key of its base level object, from the fixture's tables."""
    instances = pd.read_parquet(build["sm_instance_index"])
    series = pd.read_parquet(build["sm_index"])[["SeriesInstanceUID", "ContainerIdentifier"]]
    index = pd.read_parquet(build["index"])[["SeriesInstanceUID", "crdc_series_uuid"]]
    table = instances.merge(series, on="SeriesInstanceUID").merge(index, on="SeriesInstanceUID")
    base = table.sort_values("TotalPixelMatrixColumns").groupby("SeriesInstanceUID").tail(1)
    return {
        row.ContainerIdentifier: f"{row.crdc_series_uuid}/{row.crdc_instance_uuid}.dcm" for row in base.itertuples()
    }


def test_webdataset_shards_load_with_the_webdataset_package(first: Run, tmp_path, patch_build, served) -> None:
    run = patch_run(tmp_path / "wds", patch_build, served[0], format="webdataset")
    shards = sorted((run.workdir / "results/patches/shards").glob("b*.tar"))
    assert [s.name for s in shards] == ["b00000.tar", "b00001.tar"]
    samples = list(webdataset.WebDataset([str(s) for s in shards], shardshuffle=False).decode("rgb8"))
    reference = pd.read_parquet(first.workdir / "results/patches/patches.parquet")
    assert [s["__key__"] for s in samples] == reference["patch_id"].tolist()
    for sample, row in zip(samples, reference.itertuples(), strict=True):
        with Image.open(first.workdir / "results/patches" / row.path) as png:
            assert np.array_equal(sample["png"], np.asarray(png.convert("RGB")))
        assert sample["json"]["sha256"] == row.sha256
    assert not any((run.workdir / "results/patches").glob("PT-*/"))  # the shards instead of the PNG files
    # Observed: patches.parquet still named the deleted PNG files. Each row names its shard and member instead.
    table = pd.read_parquet(run.workdir / "results/patches/patches.parquet")
    assert table["path"].eq("").all()
    assert table["member"].tolist() == [f"{patch}.png" for patch in reference["patch_id"]]
    members = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            members[shard.name] = set(tar.getnames())
    assert all(row.member in members[Path(row.shard).name] for row in table.itertuples())
    again = snakemake(run.workdir, run.config)
    assert again.returncode == 0
    assert "rule patches" not in again.stderr
    # The same stock as PNG files again: the shards move out of the stock (never deleted), the PNGs come back.
    png = patch_run(tmp_path / "wds", patch_build, served[0])
    assert not (png.workdir / "results/patches/shards").exists()
    moved = sorted(p.name for p in (png.workdir / "results/stale").glob("*/patches/shards/*.tar"))
    assert moved == ["b00000.tar", "b00001.tar"]
    table = pd.read_parquet(png.workdir / "results/patches/patches.parquet")
    assert all((png.workdir / "results/patches" / path).is_file() for path in table["path"])
    assert table["sha256"].tolist() == reference["sha256"].tolist()


def assert_reader_gives_the_pngs(run: Run, endpoint: str, gdc_api: str = "") -> PatchReader:
    """Every patch of the run read again from its row alone (:class:`PatchReader`): the PNG's pixels exactly, and
    only the covered frames' bytes fetched (with at most the 8-byte item headers between touching frames; GDC
    tiles less than 16 KB apart are fetched in one request, gap and all)."""
    table = pd.read_parquet(run.workdir / "results/patches/patches.parquet")
    reader = PatchReader(endpoint, gdc_api=gdc_api or "http://127.0.0.1:9", attempts=1)
    differing = 0
    for row in table.to_dict("records"):
        with Image.open(run.workdir / "results/patches" / row["path"]) as png:
            expected = np.asarray(png.convert("RGB"))
        got = reader.read(row)
        assert got.shape == (256, 256, 3)
        assert got.dtype == np.uint8
        differing += not np.array_equal(got, expected)
    assert differing == 0
    frames = {(row["url"], f[1], f[2], f[3]) for row in table.to_dict("records") for f in json.loads(row["frames"])}
    covered = sum(length for *_, length in frames)
    assert covered <= reader.bytes_fetched <= (1.1 * covered if gdc_api else covered + 8 * len(frames))
    return reader


def test_the_reader_gives_every_patch_as_the_workflow_wrote_it(first: Run, served) -> None:
    reader = assert_reader_gives_the_pngs(first, served[0].url)
    table = pd.read_parquet(first.workdir / "results/patches/patches.parquet").to_dict("records")
    # Read again by the same reader: every frame is in its cache, nothing is fetched.
    before = reader.bytes_fetched
    assert all(np.array_equal(reader.read(row), reader.read(row)) for row in table[:4])
    assert reader.bytes_fetched == before
    # Threads sharing one reader, and a DataLoader's ways of starting workers: forked (after this process has
    # used obstore and libvips) and spawned (the reader pickled).
    expected = [hashlib.sha256(reader.read(row).tobytes()).hexdigest() for row in table]
    fresh = PatchReader(served[0].url, attempts=1, cache_bytes=1 << 20)  # a small cache: frames are dropped, read again
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda row: hashlib.sha256(fresh.read(row).tobytes()).hexdigest(), table)) == expected
    for method in ("fork", "spawn"):
        with multiprocessing.get_context(method).Pool(2) as pool:
            assert pool.map(_digest_of_read, [(fresh, row) for row in table[:6]]) == expected[:6], method


def _digest_of_read(job: tuple[PatchReader, dict[str, Any]]) -> str:
    reader, row = job
    return hashlib.sha256(reader.read(row).tobytes()).hexdigest()


def test_coordinates_place_the_same_patches_and_fetch_no_pixels(first: Run, tmp_path, patch_build, served) -> None:
    run = patch_run(tmp_path / "coords", patch_build, served[0], batch_size=4, format="coordinates")
    assert re.search(r"^slidestock: patches this run: 32 placed on 4 slides, .* to locate their frames \(coordinates "
                     r"only, no pixels\)$", run.proc.stderr, re.M)  # fmt: skip
    folder = run.workdir / "results/patches"
    assert not list(folder.rglob("*.png"))
    table = pd.read_parquet(folder / "patches.parquet")
    reference = pd.read_parquet(first.workdir / "results/patches/patches.parquet")
    assert (table["path"] == "").all()
    assert (table["sha256"] == "").all()
    same = ["patch_id", "x_px", "y_px", "x_level_px", "y_level_px", "bytes_fetched", "url", "level_index", "frames"]
    pd.testing.assert_frame_equal(table[[*same, "decoding"]], reference[[*same, "decoding"]])
    for slide_id, rows in table.groupby("slide_id", sort=False):
        record = json.loads((folder / f"{slide_id}.json").read_text())
        assert record["bytes_fetched"] == record["locating_bytes"]  # headers and directories; not one frame
        coords, attrs = read_coords_h5(folder / f"{slide_id}.h5")
        assert coords.dtype == np.int64
        assert coords.tolist() == rows[["x_px", "y_px"]].to_numpy().tolist()
        level = (int(rows["level_columns"].iloc[0]), int(rows["level_rows"].iloc[0]))
        assert attrs["patch_level"] == rows["level_index"].iloc[0] == 0  # the base level of each patch slide
        assert attrs["level_dim"].tolist() == list(level)
        assert attrs["patch_size"] == math.ceil(256 * 0.5 / rows["level_spacing_um"].iloc[0] - 1e-9)
        assert attrs["level_downsample"].tolist() == [1.0, 1.0]
        assert attrs["name"] == slide_id
        # TRIDENT's own file: the patch's side at the target magnification, and in level-0 pixels.
        corners, trident = read_coords_h5(folder / f"{slide_id}_patches.h5")
        assert corners.tolist() == coords.tolist()
        spacing = rows["level_spacing_um"].iloc[0]
        assert (trident["patch_size"], trident["target_magnification"]) == (256, 20.0)
        assert trident["level0_magnification"] == pytest.approx(10 / spacing, rel=1e-5)
        assert trident["patch_size_level0"] == round(256 * 0.5 / spacing)
        assert (trident["level0_width"], trident["level0_height"]) == level
    # The coordinates read back as the PNG run's patches, row by row.
    reader = PatchReader(served[0].url, attempts=1)
    for row, png_row in zip(table.to_dict("records"), reference.to_dict("records"), strict=True):
        with Image.open(first.workdir / "results/patches" / png_row["path"]) as png:
            assert np.array_equal(reader.read(row), np.asarray(png.convert("RGB"))), row["patch_id"]
    verified = snakemake(run.workdir, run.config, "verify")
    assert verified.returncode == 0, verified.stderr[-2000:]
    said = (
        "verify: 4 images match their records, 0 do not; 32 patches match their records, 0 do not; 8 h5 files match "
        "their records, 0 do not; 0 files in the stock's folders are not of it"
    )
    assert said in verified.stderr.splitlines()
    # An h5 file whose corner is not its record's is named.
    first_slide = table["slide_id"].iloc[0]
    h5 = folder / f"{first_slide}.h5"
    kept = h5.read_bytes()
    coords, attrs = read_coords_h5(h5)
    coords[0, 0] += 1
    write_coords_h5(h5, [{"x_px": int(x), "y_px": int(y)} for x, y in coords], attrs)  # type: ignore[misc]
    tampered = snakemake(run.workdir, run.config, "verify")
    assert tampered.returncode != 0
    assert f"{first_slide}.h5: coords row 0 is ({coords[0, 0]}, {coords[0, 1]}); its record says" in tampered.stderr
    h5.write_bytes(kept)
    # A row of patches.parquet (under coordinates, what a reader reads the patch with) unlike its record is named.
    parquet = folder / "patches.parquet"
    kept = parquet.read_bytes()
    changed = table.copy()
    changed.loc[1, "frames"] = "[]"
    changed.to_parquet(parquet, index=False)
    tampered = snakemake(run.workdir, run.config, "verify")
    assert tampered.returncode != 0
    assert f"patches.parquet: {table['patch_id'].iloc[1]}'s frames not as its record says" in tampered.stderr
    parquet.write_bytes(kept)
    # Back to PNG files: each slide's patches are cut again; the h5 files stay, the records gain their paths.
    config = yaml.safe_load(run.config.read_text())
    config["patches"]["format"] = "png"
    run.config.write_text(yaml.safe_dump(config))
    again = snakemake(run.workdir, run.config)
    assert again.returncode == 0, again.stderr[-2000:]
    table = pd.read_parquet(folder / "patches.parquet")
    assert table["sha256"].tolist() == reference["sha256"].tolist()
    assert len(list(folder.glob("*.h5"))) == 8  # CLAM's and TRIDENT's, for each of the 4 slides
    # And to coordinates again: the PNG files move to results/stale/, each slide's folder with a copy of the
    # record that gives their hashes (its own record is written again without them).
    config["patches"]["format"] = "coordinates"
    run.config.write_text(yaml.safe_dump(config))
    back = snakemake(run.workdir, run.config)
    assert back.returncode == 0, back.stderr[-2000:]
    assert not list(folder.rglob("*.png"))
    [stale] = (run.workdir / "results/stale").iterdir()
    for slide_id, rows in table.groupby("slide_id"):
        kept = json.loads((stale / "patches" / f"{slide_id}.json").read_text())
        for row in kept["patches"]:
            png = stale / "patches" / row["path"]
            assert hashlib.sha256(png.read_bytes()).hexdigest() == row["sha256"]
        assert [row["sha256"] for row in kept["patches"]] == rows["sha256"].tolist()


def test_gdc_patches_match_openslide_on_the_svs(tmp_path, demo_build, s3, gdc_build) -> None:
    names = json.loads(gdc_build["names"].read_text())
    with gdcserver.serving(gdc_build["files"], names=names, log_path=tmp_path / "gdc.log") as api:
        top = {"gdc": {"api": api}, "patches": {**PATCHES, "n_per_slide": 4}}
        run = run_in(tmp_path / "gdc", demo_tables(demo_build), s3, top, source="gdc_manifest",
                     manifest=str(gdc_build["manifest"]), filter={})  # fmt: skip
        # The SVS tiles by range at training time: the PNG's pixels, the covered tiles' bytes alone.
        assert_reader_gives_the_pngs(run, s3.url, gdc_api=api)
    table = pd.read_parquet(run.workdir / "results/patches/patches.parquet")
    assert table.groupby("slide_id").size().tolist() == [4, 4, 4]
    files = {
        r["slide_id"]: r for r in (json.loads(p.read_text()) for p in (run.workdir / "results/patches").glob("*.json"))
    }
    for row in table.itertuples():
        record = files[row.slide_id]
        assert record["frames"]["located_by"] == "SVS tile directory"
        assert record["bytes_fetched"] < 0.5 * record["level"]["instance_bytes"]
        file_id = record["source"]["url"].removeprefix("gdc:")
        span = 256 * 0.5 / row.level_spacing_um
        with openslide.OpenSlide(str(gdc_build["files"] / file_id)) as slide:
            level = slide.level_dimensions.index((row.level_columns, row.level_rows))
            scale = slide.level_downsamples[level]
            origin = (round(row.x_level_px * scale), round(row.y_level_px * scale))
            region = openslide_region(slide, level, (math.ceil(span), math.ceil(span)), origin=origin)
        reference = resize_exact(region, (256, 256), (span, span)).numpy().astype(float)
        with Image.open(run.workdir / "results/patches" / row.path) as png:
            error = np.mean((np.asarray(png.convert("RGB")).astype(float) - reference) ** 2)
        assert error == 0 or 10 * math.log10(255**2 / error) >= 50


def test_a_slide_whose_frames_do_not_decode_fails_alone(tmp_path: Path, patch_build, first: Run) -> None:
    root = tmp_path / "s3"
    shutil.copytree(patch_build["s3_root"], root, copy_function=os.link)
    key = records_of_build(patch_build)["PT-EOT-01"]
    broken = next(root.glob(f"*/{key}"))
    data = bytearray(broken.read_bytes())
    for frame in read_header(broken).grid:  # every frame's JPEG start marker overwritten: none decodes
        offset = frame.parts[0][0]
        data[offset : offset + 4] = b"\x00\x01\x02\x03"
    broken.unlink()  # a new file, not the hard link's shared one
    broken.write_bytes(bytes(data))
    with s3server.serving(root) as s3, faultproxy.serving(s3.url, tmp_path / "proxy.log") as url:
        run = patch_run(tmp_path / "run", patch_build, S3Server(url, s3.pid))
    table = pd.read_csv(run.workdir / "results/patches/batches/b00000.tsv", sep="\t", index_col="slide_id")
    eot = next(i for i in table.index if i.startswith("PT-EOT-01"))
    assert table.loc[eot, "status"] == "failed"
    assert "cannot be decoded" in table.loc[eot, "error"]
    assert not (run.workdir / "results/patches" / eot).exists()  # nothing of it left
    others = pd.read_csv(run.workdir / "results/patches/batches/b00001.tsv", sep="\t")
    assert (others["status"] == "done").all()
    assert len(pd.read_parquet(run.workdir / "results/patches/patches.parquet")) == 3 * 8
    assert "slidestock: patches in the stock: 24 from 3 of 4 slides, 1 failed;" in run.proc.stderr
    # Shown as said, numbers and all.
    assert re.search(r"^ +1 x PT-EOT-01\S*: .*frame \d+ cannot be decoded", run.proc.stderr, re.M)
    status = subprocess.run(
        [sys.executable, str(REPO / "workflow/scripts/status.py"), "results"],
        cwd=run.workdir,
        capture_output=True,
        text=True,
    )
    assert "  patches   24 from 3 slides; 1 failed, 0 to do;" in status.stdout
    html = (run.workdir / "results/report/index.html").read_text()
    assert f'<tr class="failed"><td>{eot}</td><td>failed</td>' in html  # the Patches section's table


def assert_like_openslide(run: Run, record: dict[str, Any], s3_root: Path, folder: Path) -> None:
    """Each of the slide's patches against the same region of its level downloaded whole (alone in ``folder``),
    read by OpenSlide and resized the same way: pixel-identical or at least 50 dB."""
    plan = pd.read_csv(run.workdir / "results/cohort/patch_instances.tsv", sep="\t", keep_default_na=False)
    row = plan.set_index("slide_id").loc[record["slide_id"]]
    folder.mkdir()
    for url in str(row["part_urls"]).split() or [row["url"]]:
        key = url.removeprefix("s3://")
        shutil.copy(s3_root / key, folder / Path(key).name)
    with openslide.OpenSlide(str(next(folder.iterdir()))) as slide:
        assert slide.level_dimensions == (tuple(record["level"]["size_px"]),)
        for patch in record["patches"]:
            span = 256 * 0.5 / patch["level_spacing_um"]
            origin = (patch["x_level_px"], patch["y_level_px"])
            region = openslide_region(slide, 0, (math.ceil(span),) * 2, origin=origin)
            reference = resize_exact(region, (256, 256), (span, span)).numpy().astype(float)
            with Image.open(run.workdir / "results/patches" / patch["path"]) as png:
                error = np.mean((np.asarray(png.convert("RGB")).astype(float) - reference) ** 2)
            assert error == 0 or 10 * math.log10(255**2 / error) >= 50, (record["slide_id"], patch["patch_id"])


def test_patches_of_a_concatenated_level_equal_openslide_regions(tmp_path: Path, fidelity_build) -> None:
    with s3server.serving(fidelity_build["s3_root"]) as s3, faultproxy.serving(s3.url, tmp_path / "p.log") as url:
        top = {"patches": {**PATCHES, "n_per_slide": 4, "min_tissue": 0.3}}
        run = run_in(
            tmp_path / "run", tables(fidelity_build), S3Server(url, s3.pid), top, filter={"collection_id": ["fidelity"]}
        )
        assert_reader_gives_the_pngs(run, url)  # a concatenation's parts among them
    found = records(run)
    record = found["FID-CONCAT-01"]
    assert record["status"] == "done"
    assert record["level"]["parts"] == 2  # the base level is two instances sharing a ConcatenationUID
    assert len(record["patches"]) >= 2
    assert_like_openslide(run, record, fidelity_build["s3_root"], tmp_path / "concatenation")
    tcga = next(r for name, r in found.items() if name.startswith("TCGA-F1"))
    assert tcga["level"]["spacing_um"] == [0.2527, 0.2527]  # the header's, where the index says 0.25
    assert all(row["x_px"] == row["x_level_px"] for row in tcga["patches"])  # the base level is level 0


def test_patches_of_sparse_and_uncompressed_levels_equal_openslide_regions(tmp_path: Path, edge_build) -> None:
    with s3server.serving(edge_build["s3_root"]) as s3, faultproxy.serving(s3.url, tmp_path / "p.log") as url:
        top = {"patches": {**PATCHES, "n_per_slide": 4}}
        run = run_in(
            tmp_path / "run", tables(edge_build), S3Server(url, s3.pid), top, filter={"collection_id": ["edge_cases"]}
        )
        assert_reader_gives_the_pngs(run, url)  # sparse tiles as background, uncompressed frames, mixed syntaxes
    found = records(run)
    assert found["EDGE-SPARSE-01"]["frames"]["located_by"] == "Basic Offset Table"
    assert found["EDGE-RAW-01"]["frames"]["located_by"] == "uncompressed: fixed-size frames"
    for name in ("EDGE-SPARSE-01", "EDGE-RAW-01", "EDGE-MIXED-01"):
        assert len(found[name]["patches"]) == 4
        assert_like_openslide(run, found[name], edge_build["s3_root"], tmp_path / name)
    unscaled = found["EDGE-UNSCALED-01"]
    assert unscaled["status"] == "failed"
    assert unscaled["error"].endswith(
        "no level for patches: no pixel spacing on any of its levels; expected one to reach 0.5 µm/px"
    )


def test_grid_mode_takes_every_tissue_cell_of_a_grid(tmp_path: Path, patch_build, served) -> None:
    run = patch_run(tmp_path / "grid", patch_build, served[0], mode="grid", n_per_slide=1)
    table = pd.read_parquet(run.workdir / "results/patches/patches.parquet")
    for slide, rows in table.groupby("slide_id"):
        crop = math.ceil(256 * 0.5 / rows["level_spacing_um"].iloc[0] - 1e-9)
        assert len(rows) > 1  # n_per_slide does not limit a grid
        assert ((rows["x_level_px"] % crop == 0) & (rows["y_level_px"] % crop == 0)).all()
        assert (rows["tissue_fraction"] >= 0.5).all()
        mask = tissue_mask(pyvips.Image.new_from_file(str(run.workdir / f"results/slides/{slide}.png"))).numpy() > 0
        fy, fx = mask.shape[0] / rows["level_rows"].iloc[0], mask.shape[1] / rows["level_columns"].iloc[0]
        span = 256 * 0.5 / rows["level_spacing_um"].iloc[0]
        cells = [
            (x, y)
            for y in range(0, int(rows["level_rows"].iloc[0]) - crop + 1, crop)
            for x in range(0, int(rows["level_columns"].iloc[0]) - crop + 1, crop)
            if mask[round(y * fy) : max(round(y * fy) + 1, round((y + span) * fy)),
                    round(x * fx) : max(round(x * fx) + 1, round((x + span) * fx))].mean() >= 0.5
        ]  # fmt: skip
        assert sorted(zip(rows["x_level_px"], rows["y_level_px"], strict=True)) == sorted(cells)
    # Observed (a newcomer's trial): "16 patches" over 8 thumbnails, the cut not said.
    html = (run.workdir / "results/report/index.html").read_text()
    sampled = [slide for slide, rows in table.groupby("slide_id") if f"{slide}: {len(rows)} patches" in html]
    assert sampled
    for slide in sampled:
        n = len(table[table["slide_id"] == slide])
        shown = ", the first 8 shown" if n > 8 else ""
        assert f"<figcaption>{slide}: {n} patches{shown}, each outlined on the slide</figcaption>" in html


def test_changing_a_patch_setting_redoes_patches_but_not_the_plan_or_the_stock(tmp_path, patch_build, served) -> None:
    run = patch_run(tmp_path / "run", patch_build, served[0])
    images = {p: p.stat().st_mtime_ns for p in (run.workdir / "results/slides").glob("*.png")}
    config = yaml.safe_load(run.config.read_text())
    config["patches"]["n_per_slide"] = 5
    config["patches"]["parallel"] = 2  # how fast bytes come: re-runs nothing by itself
    run.config.write_text(yaml.safe_dump(config))
    again = snakemake(run.workdir, run.config)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "rule patches:" in again.stderr
    assert "checkpoint plan:" not in again.stderr
    assert "rule batch:" not in again.stderr
    assert {p: p.stat().st_mtime_ns for p in images} == images
    assert len(pd.read_parquet(run.workdir / "results/patches/patches.parquet")) == 4 * 5
    assert (
        "slidestock: the patches of 4 slides differ (patches.n_per_slide 8 → 5): a run redoes them; "
        "the files no longer of the stock move to results/stale/"
    ) in again.stderr.splitlines()
    # 4 slides' 8 PNG files, record and two h5 files (CLAM's, TRIDENT's)
    assert re.search(r"^slidestock: moved 44 files that are not this stock's to results/stale/\S+/: "
                     r"44 made for other settings or an earlier plan$", again.stderr, re.M)  # fmt: skip
    assert "slidestock: patches this run: 20 cut from 4 slides, 0 failed, 0 slides kept from before;" in again.stderr
    config["patches"]["parallel"] = 4
    run.config.write_text(yaml.safe_dump(config))
    quiet = snakemake(run.workdir, run.config)
    assert quiet.returncode == 0
    assert "rule patches:" not in quiet.stderr
    # A run that reuses every patch says it fetched nothing (observed: the stock's 15,329,238 bytes, as its own).
    reused = snakemake(run.workdir, run.config, "--forcerun", "patches")
    assert reused.returncode == 0, reused.stderr[-2000:]
    assert (
        "slidestock: patches this run: 0 cut from 0 slides, 0 failed, 4 slides kept from before; fetched 0 bytes"
        in (reused.stderr)
    )
    assert "slidestock: patches in the stock: 20 from 4 of 4 slides, 0 failed;" in reused.stderr
