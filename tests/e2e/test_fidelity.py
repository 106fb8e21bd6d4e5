"""What users bring: idc-index's rounded spacings, levels whose size is no multiple of the shrink."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from slidestock.image.reduce import resize_exact
from slidestock_testkit import slides
from slidestock_testkit.s3server import S3Server, free_port, serving
from tests.e2e.runs import REPO, demo_tables, run_in, snakemake, snakemake_argv, write_config

pytestmark = pytest.mark.e2e

TCGA, ONE_LEVEL = "TCGA-F1-A001-01Z-00-DX1", "FID-ONELEVEL-01"


@pytest.fixture(scope="module")
def fidelity_s3(fidelity_build: dict[str, Path]) -> Iterator[S3Server]:
    with serving(fidelity_build["s3_root"]) as server:
        yield server


@pytest.fixture(scope="module")
def at_4um(
    tmp_path_factory: pytest.TempPathFactory, fidelity_build: dict[str, Path], fidelity_s3: S3Server
) -> dict[str, dict[str, Any]]:
    """Every fidelity slide at 4 µm/px."""
    return fidelity_run(tmp_path_factory.mktemp("mpp4"), fidelity_build, fidelity_s3, 4.0)


def fidelity_run(folder: Path, build: dict[str, Path], server: S3Server, mpp: float) -> dict[str, dict[str, Any]]:
    """Run the workflow at ``mpp``; each slide's JSON record with its plan row and its image's size."""
    tables = {name: build[name] for name in ("index", "sm_index", "sm_instance_index")}
    top = {"target": {"mpp": mpp, "max_px": None, "format": "png"}}
    run = run_in(folder, tables, server, top, filter={"collection_id": ["fidelity"]})
    plan = pd.read_csv(run.workdir / "results/cohort/instances.tsv", sep="\t", dtype=str).set_index("slide_id")
    records = {}
    for path in (run.workdir / "results/slides").glob("*.json"):
        record = json.loads(path.read_text())
        record["plan"] = plan.loc[record["slide_id"]].to_dict()
        if record["output"]:
            with Image.open(run.workdir / record["output"]["path"]) as image:
                record["image_size"] = image.size
                record["pixels"] = np.asarray(image.convert("RGB")).astype(int)
        records[record["slide_id"].rsplit("_", 1)[0]] = record
    return records


def test_level_rule_holds_against_header_spacing(at_4um: dict[str, dict[str, Any]]) -> None:
    # Index: 0.001 / 0.004 / 0.016 mm. Headers: 1.0108 / 4.0471 / 16.188 µm. The target 4 µm/px
    # lies inside 0.004 mm's rounding interval and below the true 4.0471: the 1.0108 µm level.
    tcga = at_4um[TCGA]
    assert tcga["status"] == "done", tcga["error"]
    assert tcga["level"]["size_px"] == [2050, 1537]
    assert tcga["level"]["header_spacing_um"][0] == pytest.approx(0.2527 * 8200 / 2050, rel=1e-9)
    assert tcga["plan"]["spacing_source"] == "header"
    assert tcga["plan"]["index_spacing_um"] == "1"
    # Two headers read (the straddling 4.047 µm level, then the chosen one): 8 KB each, counted as fetched.
    assert tcga["plan"]["header_bytes"] == str(2 * 8192)
    assert tcga["bytes_fetched"] == int(tcga["plan"]["instance_size"]) + 2 * 8192  # the level, and the headers
    assert float(tcga["plan"]["level_spacing_um"]) == pytest.approx(1.0108, rel=1e-9)
    assert "from its header" in tcga["plan"]["reason"]
    # 2050 px * 1.0108 / 4 = 518.04 -> 518; 1537 px * 1.0108 / 4 = 388.4 -> 388
    assert tcga["output"]["size_px"] == [518, 388] == list(tcga["image_size"])
    assert [tcga["plan"]["output_columns"], tcga["plan"]["output_rows"]] == ["518", "388"]
    extents_um = (2050 * 1.0108, 1537 * 1.0108)
    for spacing, extent_um, size in zip(tcga["output"]["spacing_um"], extents_um, (518, 388), strict=True):
        assert spacing == pytest.approx(extent_um / size, rel=1e-9)
        assert abs(extent_um - 4.0 * size) < 4.0 / 2  # under half an output pixel over the image


def test_plan_output_size_is_what_the_batch_writes(at_4um: dict[str, dict[str, Any]]) -> None:
    # Index 0.5 µm, header 0.499 µm: 2220 * 0.499 / 4 = 276.9 -> 277 (the index would say 278).
    one = at_4um[ONE_LEVEL]
    assert one["status"] == "done", one["error"]
    assert one["plan"]["spacing_source"] == "header"
    assert [int(one["plan"]["output_columns"]), int(one["plan"]["output_rows"])] == [277, 370]
    assert one["output"]["size_px"] == [277, 370] == list(one["image_size"])
    # The whole level is covered: the effective spacing is the level's extent over the output size.
    assert one["output"]["spacing_um"] == pytest.approx([2220 * 0.499 / 277, 2967 * 0.499 / 370], rel=1e-9)


def test_target_just_below_a_rounded_level_takes_the_finer_level(
    tmp_path: Path, fidelity_build: dict[str, Path], fidelity_s3: S3Server
) -> None:
    # 16 µm/px: the index's 0.016 mm level is really 16.19 µm, coarser than the target.
    tcga = fidelity_run(tmp_path / "mpp16", fidelity_build, fidelity_s3, 16.0)[TCGA]
    assert tcga["level"]["size_px"] == [512, 384]
    spacing = 0.2527 * 8200 / 512
    assert tcga["level"]["header_spacing_um"][0] == pytest.approx(spacing, rel=1e-9)
    assert tcga["output"]["size_px"] == [round(512 * spacing / 16), round(384 * spacing / 16)] == [130, 97]
    assert tcga["plan"]["spacing_source"] == "header"


def test_a_missing_table_stops_the_dry_run(tmp_path: Path, fidelity_build: dict[str, Path]) -> None:
    tables = {name: fidelity_build[name] for name in ("index", "sm_index", "sm_instance_index")}
    tables["sm_instance_index"] = tmp_path / "nowhere" / "sm_instance_index.parquet"
    config = write_config(tmp_path / "config.yaml", tables, "http://127.0.0.1:9")
    proc = snakemake(tmp_path, config, "-n")
    assert proc.returncode != 0
    said = proc.stdout + proc.stderr
    assert "Missing input files for rule cohort" in said
    assert str(tables["sm_instance_index"]) in said
    assert not (tmp_path / "results").exists()


def level_pixels(container: str, level_px: tuple[int, int], output_px: tuple[int, int]) -> np.ndarray:
    """The fixture's own pixels of a level (made as the fixture writer makes it), resized as the workflow resizes."""
    spec = next(s for s in slides.FIDELITY_SLIDES if s.container_id == container)
    level = slides.level_image(slides.tissue_image(spec.base_size_px, spec.seed), level_px)
    expected: np.ndarray = resize_exact(level, output_px).numpy().astype(int)
    return expected


def test_edge_frames_stored_short_are_placed_and_said(at_4um: dict[str, dict[str, Any]]) -> None:
    # Level 1 of FID-SHORTEDGE-01 is 375 x 275 px in 256 px tiles, its edge frames stored 119 and 19 px short.
    short = at_4um["FID-SHORTEDGE-01"]
    assert short["status"] == "done", short["error"]
    assert short["level"]["size_px"] == [375, 275]
    (warning,) = short["warnings"]
    assert warning.startswith("3 frames stored smaller than the 256 x 256 px tile (first: frame 2, about 119 x 256 px)")
    # Against the fixture's own pixels for that level: edges in place, not stretched.
    got, expected = short["pixels"], level_pixels("FID-SHORTEDGE-01", (375, 275), tuple(short["output"]["size_px"]))
    assert np.abs(got - expected).mean() < 5.0  # JPEG's loss on real tissue (Q90), not a misplaced tile
    assert np.abs(got[-1] - expected[-1]).mean() < 6.0
    assert np.abs(got[:, -1] - expected[:, -1]).mean() < 6.0


def test_rgb_label_over_ycbcr_frames_is_decoded_as_the_data_say_and_said(at_4um: dict[str, dict[str, Any]]) -> None:
    labelled = at_4um["FID-RGBLABEL-01"]
    assert labelled["status"] == "done", labelled["error"]
    assert labelled["level"]["photometric"] == "RGB"
    assert labelled["warnings"] == [
        "PhotometricInterpretation is RGB, but the JPEG frames hold YCbCr (their own markers say so): decoded as YCbCr"
    ]
    expected = level_pixels("FID-RGBLABEL-01", (300, 225), tuple(labelled["output"]["size_px"]))
    assert np.abs(labelled["pixels"] - expected).mean() < 3.0
    # The other slides' labels agree with their frames: no warning.
    assert at_4um[TCGA]["warnings"] == at_4um[ONE_LEVEL]["warnings"] == []


def test_a_concatenated_level_is_fetched_whole_and_read_as_one(
    at_4um: dict[str, dict[str, Any]], fidelity_build: dict[str, Path]
) -> None:
    concat = at_4um["FID-CONCAT-01"]
    assert concat["status"] == "done", concat["error"]
    assert concat["level"]["concatenation_parts"] == 2
    assert "a DICOM concatenation of 2 instances" in concat["plan"]["reason"]
    # Both parts fetched, and nothing else: their sizes in the index add up to the bytes fetched.
    instances = pd.read_parquet(fidelity_build["sm_instance_index"])
    part_sizes = [int(s) for s in concat["plan"]["part_sizes"].split()]
    assert len(part_sizes) == 2
    assert sorted(part_sizes) == sorted(instances[instances["TotalPixelMatrixColumns"] == 400]["instance_size"])
    assert sum(part_sizes) == int(concat["plan"]["instance_size"])
    # The plan read both parts' headers (their first 8 KB, or less of a smaller part) to know them for one level.
    headers = sum(min(8192, size) for size in part_sizes)
    assert concat["plan"]["header_bytes"] == str(headers) == str(concat["level"]["header_bytes_fetched"])
    assert concat["bytes_fetched"] == sum(part_sizes) + headers
    # The second part's tiles are there (not background): the image matches the fixture's pixels everywhere.
    expected = level_pixels("FID-CONCAT-01", (400, 300), tuple(concat["output"]["size_px"]))
    assert np.abs(concat["pixels"] - expected).mean() < 3.0
    assert np.abs(concat["pixels"][-20:] - expected[-20:]).mean() < 3.0


def test_a_fluorescence_series_is_skipped_with_the_reason(at_4um: dict[str, dict[str, Any]]) -> None:
    fluo = at_4um["FID-FLUO-01"]
    assert fluo["status"] == "failed"
    assert fluo["output"] is None
    assert fluo["bytes_fetched"] == 2 * 8192  # the two channels' headers, read by the plan; no pixels
    assert fluo["error"].startswith("FID-FLUO-01_")
    assert (
        "a fluorescence or multi-channel series (2 optical path(s), PhotometricInterpretation MONOCHROME2)"
        in (fluo["error"])
    )
    assert "illuminationType_CodeMeaning: [Brightfield illumination]" in fluo["error"]


def test_provenance_names_every_library_that_touches_pixels(at_4um: dict[str, dict[str, Any]]) -> None:
    from PIL import features

    software = at_4um[TCGA]["software"]
    assert software["pillow"] == Image.__version__
    assert software["pillow-libjpeg-turbo"] == features.version("libjpeg_turbo")
    assert software["pillow-openjpeg"] == features.version("jpg_2000")
    for name in ("imagecodecs-libjpeg-turbo", "imagecodecs-openjpeg", "libvips", "pyvips", "openslide"):
        assert software[name] not in ("", "not installed"), name
    assert "openjpeg" not in software  # the old key named imagecodecs' library, which DICOM frames never go through


def test_unreachable_table_download_is_one_plain_line(tmp_path: Path) -> None:
    # The real config (idc-index's tables) on a node that cannot reach them: every request goes to a
    # closed loopback port as its proxy, so nothing leaves this machine.
    config = tmp_path / "config.yaml"
    config.write_text((REPO / "config" / "config.yaml").read_text())
    argv, env = snakemake_argv(tmp_path, config)
    closed = f"http://127.0.0.1:{free_port()}"
    env = {**env, "HTTPS_PROXY": closed, "HTTP_PROXY": closed, "https_proxy": closed, "http_proxy": closed}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode != 0
    said = proc.stdout + proc.stderr
    line = "cohort: cannot download idc-index's sm_index table from https://github.com/ImagingDataCommons/"
    assert line in said
    assert "set cohort.tables" in said
    assert "Traceback" not in said
    log = (tmp_path / "logs/cohort/cohort.log").read_text()
    assert "cannot download idc-index's sm_index table" in log
    assert "Traceback" not in log


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"idc_version": 99}, "cohort.idc_version: got 99; the installed idc-index-data holds IDC v25"),
        ({"source": "gdc_manifest", "manifest": "nowhere/manifest.tsv"}, "config key cohort.manifest: 'nowhere/"),
    ],
)
def test_the_dry_run_stops_on_a_config_it_cannot_run(
    tmp_path: Path, fidelity_build: dict[str, Path], change: dict[str, Any], said: str
) -> None:
    tables = {name: fidelity_build[name] for name in ("index", "sm_index", "sm_instance_index")}
    config = write_config(tmp_path / "config.yaml", tables, "http://127.0.0.1:9", **change)
    proc = snakemake(tmp_path, config, "-n")
    assert proc.returncode != 0
    assert said in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_a_cohort_of_no_slides_is_one_line_once(tmp_path: Path, fidelity_build: dict[str, Path]) -> None:
    tables = {name: fidelity_build[name] for name in ("index", "sm_index", "sm_instance_index")}
    config = write_config(tmp_path / "config.yaml", tables, "http://127.0.0.1:9", filter={"collection_id": ["fidelty"]})
    proc = snakemake(tmp_path, config)
    assert proc.returncode != 0
    said = proc.stdout + proc.stderr
    line = (
        "cohort: cohort.filter: collection_id='fidelty' matches no series of IDC v25 (did you mean fidelity?); "
        "every value of a filter must match some series"
    )
    assert said.count(line) == 1
    assert "Traceback" not in said
    assert "SELECT" not in said  # the query is in the log, not the terminal


def test_an_unreachable_bucket_stops_the_batch_at_once(tmp_path: Path, demo_build: dict[str, Path]) -> None:
    # max_px: the plan needs no header, so the batch is the first to meet the closed port.
    closed = f"http://127.0.0.1:{free_port()}"
    top = {"target": {"mpp": None, "max_px": 512, "format": "png"}}
    config = write_config(tmp_path / "config.yaml", demo_tables(demo_build), closed, top)
    proc = snakemake(tmp_path, config)
    assert proc.returncode != 0
    said = proc.stdout + proc.stderr
    assert re.search(
        rf"batch b00000: cannot reach the slide bucket: object {closed}/idc-open-data/\S+\.dcm: 1 attempt failed; "
        "last: URLError",
        said,
    )
    log = (tmp_path / "logs/batch/b00000.log").read_text()
    assert "cannot reach the slide bucket" in log
    assert "fetched" not in log  # s5cmd never ran
    assert not (tmp_path / "results/batches/b00000.tsv").exists()  # so the next run redoes the batch
    assert list((tmp_path / "scratch").iterdir()) == []
