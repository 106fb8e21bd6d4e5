"""The workflow end to end: snakemake as a subprocess against the local S3 server.

Each run works in its own folder with its own TMPDIR, on the generated demo
slides, and the outputs are checked against values computed here from the
fixture specification, not from the code under test.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from slidestock_testkit import slides
from slidestock_testkit.s3server import S3Server
from tests.e2e.runs import REPO, Run, demo_tables, run_in, snakemake, snakemake_argv, write_config

SPECS = {spec.container_id: spec for spec in slides.DEMO_SLIDES}
TARGET_UM = 15.0

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory, demo_build: dict[str, Path], s3: S3Server) -> Run:
    return run_in(tmp_path_factory.mktemp("first"), demo_tables(demo_build), s3)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def expected_output_px(spec: slides.SlideSpec) -> tuple[int, int]:
    """From the specification: the 4x-step level just finer than 15 µm/px, then rounding half up."""
    width, height = spec.base_size_px
    level = max(k for k in range(spec.n_levels) if spec.base_spacing_um * width / (width // 4**k) <= TARGET_UM)
    level_w, level_h = width // 4**level, height // 4**level
    spacing = spec.base_spacing_um * width / level_w
    return (math.floor(level_w * spacing / TARGET_UM + 0.5), math.floor(level_h * spacing / TARGET_UM + 0.5))


def records(run: Run) -> dict[str, dict[str, object]]:
    lock = pd.read_csv(run.workdir / "results/cohort/cohort.tsv", sep="\t", comment="#", dtype=str)
    return {
        row.ContainerIdentifier: json.loads((run.workdir / f"results/slides/{row.slide_id}.json").read_text())
        for row in lock.itertuples()
    }


def test_every_demo_slide_is_done_at_the_target_spacing(first: Run) -> None:
    recs = records(first)
    assert sorted(recs) == sorted(SPECS)
    for container, rec in recs.items():
        assert rec["status"] == "done", rec["error"]
        image = first.workdir / f"results/slides/{rec['slide_id']}.png"
        with Image.open(image) as png:
            assert png.size == expected_output_px(SPECS[container])
            dpi_x, dpi_y = png.info["dpi"]
        # The resolution in the file is the real one, within 1 % of the target.
        assert 25400 / dpi_x == pytest.approx(TARGET_UM, rel=0.01)
        assert 25400 / dpi_y == pytest.approx(TARGET_UM, rel=0.01)
        output = rec["output"]
        assert isinstance(output, dict)
        assert output["sha256"] == sha256(image)


def test_bytes_fetched_are_the_chosen_instance_only(first: Run, instance_table: pd.DataFrame) -> None:
    by_uid = instance_table.set_index("SOPInstanceUID")
    for rec in records(first).values():
        source = rec["source"]
        assert isinstance(source, dict)
        chosen = by_uid.loc[source["SOPInstanceUID"]]
        assert chosen["ImageType"][2] == "VOLUME"
        series = instance_table[instance_table["SeriesInstanceUID"] == source["SeriesInstanceUID"]]
        # The level, and the plan's one ranged read of its header (its first 8 KB: output size from the header).
        level = rec["level"]
        assert isinstance(level, dict)
        assert level["header_bytes_fetched"] == min(8192, chosen["instance_size"])
        assert rec["bytes_fetched"] == chosen["instance_size"] + level["header_bytes_fetched"]
        assert rec["series_size_bytes"] == series["instance_size"].sum()
        assert chosen["instance_size"] / series["instance_size"].sum() < 0.05


def test_overview_at_the_target_spacing_is_not_chosen(first: Run, instance_table: pd.DataFrame) -> None:
    rec = records(first)["TCGA-D1-A003-01Z-00-DX1"]
    overview = instance_table[instance_table["ImageType"].map(lambda t: t[2] == "OVERVIEW")]
    assert overview["PixelSpacing_0"].tolist() == [0.015]
    source = rec["source"]
    assert isinstance(source, dict)
    assert source["SOPInstanceUID"] not in set(overview["SOPInstanceUID"])


def test_report_lists_every_slide_with_its_numbers(first: Run) -> None:
    report = pd.read_csv(first.workdir / "results/report/slides.csv")
    assert report["status"].tolist() == ["done"] * 6
    recs = {rec["slide_id"]: rec for rec in records(first).values()}
    for row in report.itertuples():
        assert row.bytes_fetched == recs[row.slide_id]["bytes_fetched"]
        assert row.output_spacing_um == pytest.approx(TARGET_UM, rel=0.01)
    page = (first.workdir / "results/report/index.html").read_text()
    assert page.count('<img loading="lazy" alt="TCGA-D') == 6
    assert "6 of 6 slides done, 0 failed" in page


def test_no_download_is_left_behind(first: Run) -> None:
    leftovers = [p for p in first.workdir.rglob("*") if p.suffix in {".dcm", ".partial"}]
    assert leftovers == []
    assert list(first.scratch.iterdir()) == []


def test_second_dry_run_has_nothing_to_do(first: Run) -> None:
    proc = snakemake(first.workdir, first.config, "-n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_fresh_run_gives_identical_lock_and_images(
    first: Run, tmp_path: Path, demo_build: dict[str, Path], s3: S3Server
) -> None:
    second = run_in(tmp_path / "second", demo_tables(demo_build), s3)
    tables = (
        "results/cohort/cohort.tsv",
        "results/cohort/instances.tsv",
        "results/report/slides.csv",
        "results/report/slides.parquet",
        "results/report/contact_sheet.png",
        "results/report/plots/bytes.svg",
        "results/report/plots/spacing.svg",
    )
    for name in tables:
        assert (second.workdir / name).read_bytes() == (first.workdir / name).read_bytes(), name
    images = sorted(p.name for p in (first.workdir / "results/slides").glob("*.png"))
    assert len(images) == 6
    for name in images:
        assert sha256(second.workdir / "results/slides" / name) == sha256(first.workdir / "results/slides" / name)


def test_bad_config_stops_before_anything_runs(tmp_path: Path, demo_build: dict[str, Path], s3: S3Server) -> None:
    config = write_config(tmp_path / "config.yaml", demo_tables(demo_build), s3.url, n=0, seed=1.5)
    proc = snakemake(tmp_path, config)
    assert proc.returncode != 0
    assert "config key cohort.n: got 0; expected an integer >= 1" in proc.stderr
    assert "config key cohort.seed: got 1.5; expected an integer" in proc.stderr
    assert 'File "' not in proc.stderr  # observed: Snakemake's `File ".../common.smk", line 20` after the message
    assert not (tmp_path / "results").exists()


def test_one_bad_slide_is_reported_and_the_others_finish(
    tmp_path: Path, demo_build: dict[str, Path], s3: S3Server, instance_table: pd.DataFrame, first: Run
) -> None:
    # The index claims one byte more for one slide's chosen level than the object holds.
    victim = records(first)["TCGA-D1-A004-01Z-00-DX1"]
    source = victim["source"]
    assert isinstance(source, dict)
    broken = instance_table.copy()
    wrong = broken["SOPInstanceUID"] == source["SOPInstanceUID"]
    broken.loc[wrong, "instance_size"] += 1
    tables = demo_tables(demo_build)
    tables["sm_instance_index"] = tmp_path / "sm_instance_index.parquet"
    broken.to_parquet(tables["sm_instance_index"], index=False)
    run = run_in(tmp_path / "run", tables, s3)
    report = pd.read_csv(run.workdir / "results/report/slides.csv").set_index("slide_id")
    assert (report["status"] == "done").sum() == 5
    failed = report.loc[victim["slide_id"]]
    assert failed["status"] == "failed"
    size = int(instance_table.loc[wrong, "instance_size"].iloc[0])
    assert f"downloaded {size} bytes; expected {size + 1} bytes" in failed["error"]
    assert not (run.workdir / f"results/slides/{victim['slide_id']}.png").exists()


def test_sample_of_two_follows_the_seed(tmp_path: Path, demo_build: dict[str, Path], s3: S3Server) -> None:
    run = run_in(tmp_path, demo_tables(demo_build), s3, n=2, seed=7)
    lock = pd.read_csv(run.workdir / "results/cohort/cohort.tsv", sep="\t", comment="#", dtype=str)
    index = pd.read_parquet(demo_build["index"])
    keys = {uid: hashlib.md5(f"7:{uid}".encode()).hexdigest() for uid in index["SeriesInstanceUID"]}
    assert set(lock["SeriesInstanceUID"]) == set(sorted(keys, key=lambda u: (keys[u], u))[:2])
    assert "# candidates: 6" in (run.workdir / "results/cohort/cohort.tsv").read_text()
    assert len(list((run.workdir / "results/slides").glob("*.png"))) == 2


def test_growing_n_runs_only_the_new_slides(tmp_path: Path, demo_build: dict[str, Path], s3: S3Server) -> None:
    small = run_in(tmp_path, demo_tables(demo_build), s3, n=3, seed=11)
    before = {p.name: p.stat().st_mtime_ns for p in (small.workdir / "results/slides").glob("*.json")}
    assert len(before) == 3
    grown = run_in(tmp_path, demo_tables(demo_build), s3, n=4, seed=11)
    after = {p.name: p.stat().st_mtime_ns for p in (grown.workdir / "results/slides").glob("*.json")}
    assert len(after) == 4
    assert {name: after[name] for name in before} == before
    assert grown.proc.stderr.count("rule batch:") == 1
    assert "b00000: 4 slides, 3 finished before, 1 to do" in (tmp_path / "logs/batch/b00000.log").read_text()


def test_target_change_reruns_plan_and_slides_but_not_the_cohort(first: Run, demo_build: dict[str, Path]) -> None:
    config = yaml.safe_load(first.config.read_text())
    config["target"]["mpp"] = 20.0
    changed = first.workdir / "target20.yaml"
    changed.write_text(yaml.safe_dump(config))
    dry = snakemake(first.workdir, changed, "-n")
    out = dry.stdout + dry.stderr
    assert dry.returncode == 0, out[-2000:]
    assert "checkpoint plan:" in out
    assert "rule cohort:" not in out
    n_made = len(list((first.workdir / "results/slides").glob("*.json")))
    notice = (
        f"slidestock: {n_made} of the {n_made} slides in the cohort made before differ from this config "
        "(target.mpp 15.0 → 20.0): a run redoes them; the files no longer of the stock move to results/stale/"
    )
    # Observed (a newcomer's trial of 915643e): the notice twice, the run's lifecycle having it written twice.
    assert dry.stderr.splitlines().count(notice) == 1
    config["target"]["mpp"] = 15.0
    config["fetch"]["endpoint"] = "http://127.0.0.1:1"
    moved = first.workdir / "endpoint.yaml"
    moved.write_text(yaml.safe_dump(config))
    unchanged = snakemake(first.workdir, moved, "-n")
    assert "Nothing to be done" in unchanged.stdout + unchanged.stderr
    assert "differ from this config" not in unchanged.stdout + unchanged.stderr


def test_an_upgraded_index_reselects_a_current_cohort(first: Run, tmp_path: Path) -> None:
    """`idc_version: current` after idc-index-data moves to IDC v26: the cohort is selected again.

    The upgrade is idc-index-data's own metadata, found first on the path as pip would leave it.
    """
    newer = tmp_path / "site" / "idc_index_data-26.0.0.dist-info"
    newer.mkdir(parents=True)
    (newer / "METADATA").write_text("Metadata-Version: 2.1\nName: idc-index-data\nVersion: 26.0.0\n")
    argv, env = snakemake_argv(first.workdir, first.config, "-n")
    upgraded = subprocess.run(
        argv, capture_output=True, text=True, check=False, env={**env, "PYTHONPATH": str(newer.parent)}
    )
    assert upgraded.returncode == 0, upgraded.stderr[-2000:]
    assert "rule cohort:" in upgraded.stdout + upgraded.stderr
    same = snakemake(first.workdir, first.config, "-n")
    assert "Nothing to be done" in same.stdout + same.stderr


def test_tables_gone_since_the_cohort_stop_the_plan_in_one_line(
    tmp_path: Path, demo_build: dict[str, Path], s3: S3Server
) -> None:
    """Observed: the lock stood, a new target re-ran the plan, and the tables were gone: a traceback."""
    tables = {name: tmp_path / "tables" / path.name for name, path in demo_tables(demo_build).items()}
    tables["index"].parent.mkdir()
    for name, path in tables.items():
        shutil.copy(demo_build[name], path)
    run = run_in(tmp_path / "run", tables, s3, n=1, seed=3)
    shutil.rmtree(tables["index"].parent)
    config = yaml.safe_load(run.config.read_text())
    config["target"]["mpp"] = 30.0
    run.config.write_text(yaml.safe_dump(config))
    proc = snakemake(run.workdir, run.config)
    assert proc.returncode != 0
    said = proc.stderr.splitlines()
    assert f"plan: cohort.tables.index: file {str(tables['index'])!r} not found; expected a Parquet file" in said
    assert not [line for line in said if line.startswith("Traceback")]
    assert (run.workdir / "results/cohort/cohort.tsv").is_file()


def test_new_target_is_applied_to_every_slide(tmp_path: Path, demo_build: dict[str, Path], s3: S3Server) -> None:
    run = run_in(tmp_path, demo_tables(demo_build), s3, n=2, seed=5)
    config = yaml.safe_load(run.config.read_text())
    config["target"]["mpp"] = 30.0
    run.config.write_text(yaml.safe_dump(config))
    proc = snakemake(run.workdir, run.config)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rule cohort:" not in proc.stdout + proc.stderr
    for record in (run.workdir / "results/slides").glob("*.json"):
        output = json.loads(record.read_text())["output"]
        assert output["spacing_um"][0] == pytest.approx(30.0, rel=0.01)
        with Image.open(run.workdir / output["path"]) as png:
            assert 25400 / png.info["dpi"][0] == pytest.approx(30.0, rel=0.01)
    assert (run.workdir / "results/report/slides.csv").read_text().count(",done,") == 2


def test_a_deleted_record_redoes_that_slide_alone(tmp_path: Path, demo_build: dict[str, Path], s3: S3Server) -> None:
    run = run_in(tmp_path, demo_tables(demo_build), s3, n=3, seed=2)
    slides = run.workdir / "results/slides"
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in slides.iterdir()}
    victim = sorted(slides.glob("*.json"))[1]
    victim.unlink()
    proc = snakemake(run.workdir, run.config, "--forcerun", "batch")
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in slides.iterdir()}
    assert sorted(after) == sorted(before)
    redone = sorted(name for name in after if after[name][0] != before[name][0])
    assert redone == sorted([victim.name, victim.name.replace(".json", ".png")])
    png = victim.name.replace(".json", ".png")
    assert after[png][1] == before[png][1]  # the same pixels, bit for bit
    assert "b00000: 3 slides, 2 finished before, 1 to do" in (tmp_path / "logs/batch/b00000.log").read_text()


VOLATILE = ("started_at", "timings_s")


def stable(record: dict[str, object]) -> dict[str, object]:
    """A provenance record without the keys that tell when and how long."""
    return {key: value for key, value in record.items() if key not in VOLATILE}


def test_batch_size_changes_no_output(first: Run, tmp_path: Path, demo_build: dict[str, Path], s3: S3Server) -> None:
    top = {"fetch": {"endpoint": s3.url, "attempts": 1, "batch_size": 4, "workers": 2}}
    other = run_in(tmp_path, demo_tables(demo_build), s3, top)
    assert sorted(p.name for p in (other.workdir / "results/batches").iterdir()) == ["b00000.tsv", "b00001.tsv"]
    assert other.proc.stderr.count("rule batch:") == 2
    # Two batches on two cores run at once, one thread each; the single batch of the first run had both.
    for batch, n in (("b00000", 4), ("b00001", 2)):
        assert f"{n} to do, on 1 thread\n" in (other.workdir / f"logs/batch/{batch}.log").read_text()
    assert "6 to do, on 2 threads\n" in (first.workdir / "logs/batch/b00000.log").read_text()
    for name in ("results/cohort/cohort.tsv", "results/report/slides.csv", "results/report/slides.parquet",
                 "results/report/contact_sheet.png"):  # fmt: skip
        assert (other.workdir / name).read_bytes() == (first.workdir / name).read_bytes(), name
    ours = sorted((first.workdir / "results/slides").iterdir())
    assert [p.name for p in ours] == sorted(p.name for p in (other.workdir / "results/slides").iterdir())
    for path in ours:
        theirs = other.workdir / "results/slides" / path.name
        if path.suffix == ".json":
            assert stable(json.loads(theirs.read_text())) == stable(json.loads(path.read_text())), path.name
        else:
            assert theirs.read_bytes() == path.read_bytes(), path.name
    # A new batch size re-runs the batch jobs, which find every slide done.
    top["fetch"]["batch_size"] = 100
    config = write_config(other.config, demo_tables(demo_build), s3.url, top)
    stamps = {p.name: p.stat().st_mtime_ns for p in (other.workdir / "results/slides").iterdir()}
    proc = snakemake(other.workdir, config)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (other.workdir / "results/slides").iterdir()}
    assert "b00000: 6 slides, 6 finished before, 0 to do" in (other.workdir / "logs/batch/b00000.log").read_text()


def test_tissue_mask_and_fraction(tmp_path: Path, demo_build: dict[str, Path], s3: S3Server) -> None:
    target = {"target": {"mpp": 15.0, "max_px": None, "format": "png", "tissue_mask": True}}
    run = run_in(tmp_path, demo_tables(demo_build), s3, target, n=2, seed=3)
    report = pd.read_csv(run.workdir / "results/report/slides.csv")
    for row in report.itertuples():
        record = json.loads((run.workdir / f"results/slides/{row.slide_id}.json").read_text())
        mask_path = run.workdir / record["output"]["mask_path"]
        with Image.open(mask_path) as mask, Image.open(run.workdir / record["output"]["path"]) as image:
            assert mask.size == image.size
            values = np.asarray(mask)
        assert set(np.unique(values)) <= {0, 255}
        assert values[0, 0] == 0  # the fixtures' corners are glass
        assert values[values.shape[0] // 2, values.shape[1] // 2] == 255  # and their middles tissue
        assert row.tissue_fraction == pytest.approx((values == 255).mean(), abs=1e-4)
        assert 0.2 < row.tissue_fraction < 0.95


def test_openslide_backend_gives_the_same_sizes_and_close_pixels(
    first: Run, tmp_path: Path, demo_build: dict[str, Path], s3: S3Server
) -> None:
    target = {"target": {"mpp": 15.0, "max_px": None, "format": "png", "backend": "openslide"}}
    other = run_in(tmp_path, demo_tables(demo_build), s3, target)
    ours, theirs = records(first), records(other)
    assert sorted(ours) == sorted(theirs)
    for container, rec in theirs.items():
        assert rec["status"] == "done", rec["error"]
        assert rec["level"]["backend"] == "openslide"
        assert rec["output"]["size_px"] == ours[container]["output"]["size_px"]
        with (
            Image.open(first.workdir / ours[container]["output"]["path"]) as a,
            Image.open(other.workdir / rec["output"]["path"]) as b,
        ):
            difference = np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int))
        assert difference.mean() < 1.0, container
        assert np.percentile(difference, 99) <= 4, container


def test_label_and_overview_are_exported_on_request(
    tmp_path: Path, demo_build: dict[str, Path], s3: S3Server, instance_table: pd.DataFrame
) -> None:
    target = {"target": {"mpp": 15.0, "max_px": None, "format": "png", "associated": ["label", "overview"]}}
    run = run_in(tmp_path, demo_tables(demo_build), s3, target)
    recs = records(run)
    with_them = recs.pop("TCGA-D1-A003-01Z-00-DX1")
    flavor = instance_table["ImageType"].map(lambda t: t[2])
    sizes = {
        kind: int(instance_table.loc[flavor == kind.upper(), "instance_size"].iloc[0]) for kind in ("label", "overview")
    }
    chosen = int(instance_table.set_index("SOPInstanceUID").loc[with_them["source"]["SOPInstanceUID"], "instance_size"])
    header = with_them["level"]["header_bytes_fetched"]
    assert with_them["bytes_fetched"] == header + chosen + sizes["label"] + sizes["overview"]
    label, overview = with_them["associated"]["label"], with_them["associated"]["overview"]
    with Image.open(run.workdir / label["path"]) as png:
        assert png.size == (600, 300)
    assert label["spacing_um"] is None
    with Image.open(run.workdir / overview["path"]) as png:
        assert png.size == tuple(overview["size_px"])
        assert 25400 / png.info["dpi"][0] == pytest.approx(15.0, rel=1e-3)
    assert all(rec["associated"] == {"label": None, "overview": None} for rec in recs.values())
    assert sorted(p.name for p in (run.workdir / "results/slides").glob("*.label.png")) == [
        f"{with_them['slide_id']}.label.png"
    ]


def test_contact_sheet_max_reruns_the_report_alone(tmp_path: Path, demo_build: dict[str, Path], s3: S3Server) -> None:
    run = run_in(tmp_path, demo_tables(demo_build), s3, n=2, seed=5)
    sheet = run.workdir / "results/report/contact_sheet.png"
    with Image.open(sheet) as png:
        assert png.size == (2 * 136, 136)
    config = yaml.safe_load(run.config.read_text())
    config["report"] = {"contact_sheet_max": 1}
    run.config.write_text(yaml.safe_dump(config))
    proc = snakemake(run.workdir, run.config)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-2000:]
    assert "rule report:" in out
    assert "rule batch:" not in out
    with Image.open(sheet) as png:
        assert png.size == (136, 136)
    page = (run.workdir / "results/report/index.html").read_text()
    assert page.count("<figure>") == 1
    assert "The first 1 of 2 finished slides" in page


def test_each_batch_reports_its_progress_in_its_log_and_the_terminal(first: Run) -> None:
    # The last line of a batch: every slide counted, none left; a rate, not a sentence to match.
    pattern = re.compile(r"b00000: (\d+) of (\d+) slides: (\d+) done, (\d+) failed, (\d+) to do; ([\d.]+) slides/s")
    log = (first.workdir / "logs/batch/b00000.log").read_text()
    last = pattern.findall(log)[-1]
    assert [int(v) for v in last[:5]] == [6, 6, 6, 0, 0]
    assert float(last[5]) > 0
    assert pattern.findall(first.proc.stdout + first.proc.stderr)[-1] == last


def test_status_reads_a_run_as_it_goes(first: Run, tmp_path: Path) -> None:
    from slidestock.tell.status import read_status

    results = tmp_path / "results"
    shutil.copytree(first.workdir / "results", results)
    recs = {rec["slide_id"]: rec for rec in records(first).values()}
    finished = read_status(results)
    assert (finished.planned, finished.done, finished.failed, finished.to_do) == (6, 6, 0, 0)
    assert finished.bytes_fetched == sum(int(rec["bytes_fetched"]) for rec in recs.values())
    # Mid-run: two slides not written yet, one failed; the plan 100 s ago, the four records since.
    ids = sorted(recs)
    for slide in ids[:2]:
        (results / "slides" / f"{slide}.json").unlink()
    broken = results / "slides" / f"{ids[2]}.json"
    record = json.loads(broken.read_text())
    record.update(status="failed", error=f"{ids[2]}: frame 3 cannot be decoded (1.2.840.10008.1.2.4.50): broken")
    broken.write_text(json.dumps(record))
    plan_time = 1_000_000.0
    os.utime(results / "cohort" / "instances.tsv", (plan_time, plan_time))
    for slide in ids[2:]:
        os.utime(results / "slides" / f"{slide}.json", (plan_time + 50, plan_time + 50))
    mid = read_status(results, now=plan_time + 100)
    assert (mid.planned, mid.done, mid.failed, mid.to_do) == (6, 3, 1, 2)
    [group] = mid.failures
    assert (group.count, group.first) == (1, record["error"])  # as it was said, numbers and all
    assert mid.slides_per_s == pytest.approx(4 / 100)
    assert mid.eta_s == pytest.approx(2 / (4 / 100))
    shown = subprocess.run([sys.executable, str(REPO / "workflow/scripts/status.py"), str(results)],
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "  done      3\n  failed    1\n" in shown
    assert "  to do     2\n" in shown
    assert f"  fetched   {mid.bytes_fetched:,} bytes" in shown


def test_report_names_the_target_and_the_config_it_was_run_with(first: Run) -> None:
    page = (first.workdir / "results/report/index.html").read_text()
    assert "<dt>target</dt><dd>15 µm/px, png, backend pyvips</dd>" in page
    assert f"<dt>config</dt><dd>{first.config}</dd>" in page
    assert re.search(r"<dt>run date</dt><dd>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00</dd>", page)


def stock_files(folder: Path) -> list[str]:
    """The names in results/slides, the slide ids replaced by their container ids' last part (A001 ...)."""
    return sorted(
        re.sub(r"TCGA-D\d-(A\d+)-[\w-]+?_[0-9a-f]{8}", r"\1", p.name) for p in (folder / "results/slides").iterdir()
    )


def ours(lines: list[str]) -> list[str]:
    """The lines slidestock says (Snakemake's own come after them)."""
    return [line for line in lines if line.startswith("slidestock: ")]


def status_of(folder: Path) -> str:
    argv = [sys.executable, str(REPO / "workflow/scripts/status.py"), str(folder / "results")]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def test_a_replan_makes_status_count_the_old_slides_as_to_do(first: Run, tmp_path: Path) -> None:
    """Observed: status said `done 6 ... to do 0 ... finished` while the records were made for the previous
    target.mpp (the run had been interrupted after re-planning)."""
    folder = tmp_path / "copy"
    shutil.copytree(first.workdir, folder, symlinks=True)
    assert "  done      6\n" in status_of(folder)
    config = yaml.safe_load(first.config.read_text())
    config["target"]["mpp"] = 20.0
    changed = tmp_path / "target20.yaml"
    changed.write_text(yaml.safe_dump(config))
    proc = snakemake(folder, changed, "--until", "plan")
    assert proc.returncode == 0, proc.stderr[-2000:]
    shown = status_of(folder)
    assert "  done      0\n" in shown
    assert "  to do     6 (6 made for other settings or an earlier plan)\n" in shown
    assert "  fetched   0 bytes for the 0 slides done or failed\n" in shown
    assert "finished" not in shown


def test_format_mask_and_cohort_changes_leave_exactly_the_stock(
    tmp_path: Path, demo_build: dict[str, Path], s3: S3Server
) -> None:
    """Observed: after png → webp → png and tissue_mask on → off, results/slides held 6 .webp and 4 .mask.png files
    of earlier runs, and slides dropped from the cohort (n 6 → 3) kept their images and records."""
    png = run_in(tmp_path, demo_tables(demo_build), s3, top={"target": {"mpp": 15.0, "tissue_mask": True}})
    names = ("A001", "A002", "A003", "A004", "A005", "A006")
    assert stock_files(png.workdir) == sorted(f"{n}{s}" for n in names for s in (".json", ".mask.png", ".png"))
    made_png = {p.name: p.read_bytes() for p in (png.workdir / "results/slides").glob("*.png")}

    webp = run_in(tmp_path, demo_tables(demo_build), s3, top={"target": {"mpp": 15.0, "format": "webp"}})
    said = webp.proc.stderr.splitlines()
    assert stock_files(webp.workdir) == sorted(f"{n}{s}" for n in names for s in (".json", ".webp"))
    [moved] = [line for line in said if line.startswith("slidestock: moved ")]
    assert re.fullmatch(
        r"slidestock: moved 18 files that are not this stock's to results/stale/\d{4}-\d\d-\d\dT\d{6}Z/: "
        r"18 made for other settings or an earlier plan",
        moved,
    )
    stale = Path(moved.split(" to ")[1].split("/: ")[0])
    kept = {p.name: p.read_bytes() for p in (webp.workdir / stale / "slides").glob("*.png")}
    assert kept == made_png  # the old images, moved whole: never deleted
    assert ours(said)[-1].startswith("slidestock: the stock: 6 of 6 slides done, 0 failed; ")

    # Three slides of the same draw, at another target: three redone, three moved out of the stock.
    small = run_in(tmp_path, demo_tables(demo_build), s3, top={"target": {"mpp": 20.0, "format": "webp"}}, n=3)
    said = small.proc.stderr.splitlines()
    assert ours(said)[0] == (
        "slidestock: the cohort is drawn again (cohort.n null → 3); 6 of the 6 slides made before differ from "
        "this config (target.mpp 15.0 → 20.0): a run redoes those still in it; the files no longer of the stock "
        "move to results/stale/"
    )
    assert len(stock_files(small.workdir)) == 6
    [moved] = [line for line in said if line.startswith("slidestock: moved ")]
    assert moved.endswith(": 6 made for other settings or an earlier plan, 6 of slides no longer in the cohort")
    assert "slidestock: this run: 3 slides made, 0 failed, 0 kept from before; fetched " in small.proc.stderr
    proc = snakemake(small.workdir, small.config, "verify")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "verify: 3 images match their records, 0 do not; 0 files in the stock's folders are not of it" in (
        proc.stderr.splitlines()
    )


def test_one_unknown_value_of_a_filter_stops_the_run(tmp_path: Path, demo_build: dict[str, Path], s3: S3Server) -> None:
    """Observed: `collection_id: [demo_brca, demo-luad]` drew a 4-slide cohort from demo_brca alone."""
    config = write_config(tmp_path / "config.yaml", demo_tables(demo_build), s3.url,
                          filter={"collection_id": ["demo_brca", "demo-luad"], "Modality": ["SM"]})  # fmt: skip
    proc = snakemake(tmp_path, config)
    assert proc.returncode != 0
    assert (
        "cohort: cohort.filter: collection_id='demo-luad' matches no series of IDC v25 (did you mean demo_luad"
        in proc.stderr
    )
    assert not (tmp_path / "results/cohort/cohort.tsv").exists()
    assert not (tmp_path / "results/slides").exists()


def test_a_rerun_says_what_it_made_apart_from_what_the_stock_holds(first: Run, tmp_path: Path) -> None:
    """Observed: a run that redid nothing said `fetched 274,702`: the whole stock's bytes, as if its own."""
    folder = tmp_path / "copy"
    shutil.copytree(first.workdir, folder, symlinks=True)
    victim = sorted((folder / "results/slides").glob("*.json"))[2]
    fetched = json.loads(victim.read_text())["bytes_fetched"]
    total = sum(json.loads(p.read_text())["bytes_fetched"] for p in (folder / "results/slides").glob("*.json"))
    victim.unlink()
    proc = snakemake(folder, first.config, "--forcerun", "batch")
    assert proc.returncode == 0, proc.stderr[-2000:]
    said = ours(proc.stderr.splitlines())
    assert (
        said[-2]
        == f"slidestock: this run: 1 slide made, 0 failed, 5 kept from before; fetched {fetched:,} bytes for them"
    )
    assert said[-1].startswith(f"slidestock: the stock: 6 of 6 slides done, 0 failed; {total:,} of ")
