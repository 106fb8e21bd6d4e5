"""Every cohort source, end to end through the local S3 server.

The reference is a plain `idc` run over the demo tables; each other source
must give the same lock rows (or the rows its manifest names) and the same
plans and images.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from slidestock_testkit.indextables import DICOM_ALL_PREFIX
from slidestock_testkit.s3server import S3Server
from tests.e2e.runs import Run, demo_tables, run_in, snakemake, write_config

pytestmark = pytest.mark.e2e


def lock_body(run: Run) -> str:
    """The lock file without its header (which names the source and query)."""
    text = (run.workdir / "results/cohort/cohort.tsv").read_text()
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))


def image_hashes(run: Run) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (run.workdir / "results/slides").glob("*.png")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, demo_build: dict[str, Path], s3: S3Server) -> Run:
    return run_in(tmp_path_factory.mktemp("idc"), demo_tables(demo_build), s3)


@pytest.mark.parametrize("mode", ["in_place", "sync", "local folder", "local glob"])
def test_parquet_export_gives_the_same_cohort_and_plan(
    mode: str, reference: Run, tmp_path: Path, demo_build: dict[str, Path], s3: S3Server
) -> None:
    parquet = {"url": f"s3://{DICOM_ALL_PREFIX.format(version=25)}/", "mode": mode, "cache": "export"}
    if mode.startswith("local"):
        # Staged on a shared disk: read where it is, nothing synced, no S3 involved for the cohort.
        folder = demo_build["dicom_all"]
        parquet = {"url": str(folder) if mode == "local folder" else str(folder / "0000*.parquet")}
    run = run_in(tmp_path, demo_tables(demo_build), s3, source="idc_parquet", parquet=parquet)
    assert lock_body(run) == lock_body(reference)
    plans = ("results/cohort/instances.tsv",)
    for name in plans:
        assert (run.workdir / name).read_bytes() == (reference.workdir / name).read_bytes()
    assert image_hashes(run) == image_hashes(reference)
    synced = sorted(p.name for p in (run.workdir / "export").glob("*.parquet"))
    assert synced == (["000000000000.parquet", "000000000001.parquet"] if mode == "sync" else [])


def test_a_local_export_folder_without_parquet_files_says_so(
    tmp_path: Path, demo_build: dict[str, Path], s3: S3Server
) -> None:
    (tmp_path / "empty").mkdir()
    config = write_config(tmp_path / "config.yaml", demo_tables(demo_build), s3.url, source="idc_parquet",
                          parquet={"url": str(tmp_path / "empty")})  # fmt: skip
    proc = snakemake(tmp_path, config)
    assert proc.returncode != 0
    log = (tmp_path / "logs/cohort/cohort.log").read_text()
    assert f"cohort.parquet.url: no .parquet files at {str(tmp_path / 'empty')!r}" in log


def test_idc_manifest(reference: Run, tmp_path: Path, demo_build: dict[str, Path], s3: S3Server) -> None:
    locked = pd.read_csv(reference.workdir / "results/cohort/cohort.tsv", sep="\t", comment="#", dtype=str)
    chosen = locked.iloc[[1, 4]]
    manifest = tmp_path / "cohort.s5cmd"
    manifest.write_text(
        "# IDC portal manifest\n\n"
        + "".join(
            f"cp s3://{b}/{u}/* .\n" for b, u in zip(chosen["aws_bucket"], chosen["crdc_series_uuid"], strict=True)
        )
    )
    run = run_in(tmp_path / "run", demo_tables(demo_build), s3, source="idc_manifest", manifest=str(manifest))
    got = pd.read_csv(run.workdir / "results/cohort/cohort.tsv", sep="\t", comment="#", dtype=str)
    assert got["slide_id"].tolist() == chosen["slide_id"].tolist()
    hashes = image_hashes(run)
    assert hashes == {k: v for k, v in image_hashes(reference).items() if k in hashes}
    assert len(hashes) == 2
    header = (run.workdir / "results/cohort/cohort.tsv").read_text()
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert f"# manifest: cohort.s5cmd sha256:{digest}" in header


def test_malformed_manifest_line_stops_with_its_number(
    tmp_path: Path, demo_build: dict[str, Path], s3: S3Server
) -> None:
    manifest = tmp_path / "bad.s5cmd"
    manifest.write_text("# ok\ncp s3://idc-open-data/not-a-uuid/* .\n")
    from tests.e2e.runs import snakemake, write_config

    config = write_config(
        tmp_path / "c.yaml", demo_tables(demo_build), s3.url, source="idc_manifest", manifest=str(manifest)
    )
    proc = snakemake(tmp_path, config)
    assert proc.returncode != 0
    assert "bad.s5cmd:2: 'cp s3://idc-open-data/not-a-uuid/* .' is not a manifest line" in proc.stderr
    assert not list((tmp_path / "results").glob("slides/*"))


def test_gdc_manifest_matched_take_idc_unmatched_are_listed(
    reference: Run, tmp_path: Path, demo_build: dict[str, Path], s3: S3Server
) -> None:
    manifest = tmp_path / "gdc_manifest.tsv"
    rows = [
        ("6e3b7a14-5d4c-4f8e-9a21-0c1d2e3f4a01", "TCGA-D1-A002-01Z-00-DX1.1A2B3C4D.svs"),
        ("6e3b7a14-5d4c-4f8e-9a21-0c1d2e3f4a02", "TCGA-D2-A005-01Z-00-DX1.5E6F7A8B.svs"),
        ("6e3b7a14-5d4c-4f8e-9a21-0c1d2e3f4a03", "TCGA-XX-0000-01Z-00-DX1.9C0D1E2F.svs"),
    ]
    manifest.write_text(
        "id\tfilename\tmd5\tsize\tstate\n" + "".join(f"{i}\t{f}\t{'0' * 32}\t123456\treleased\n" for i, f in rows)
    )
    run = run_in(tmp_path / "run", demo_tables(demo_build), s3, source="gdc_manifest", manifest=str(manifest))
    report = pd.read_csv(run.workdir / "results/report/slides.csv").set_index("slide_id")
    assert report["status"].value_counts().to_dict() == {"done": 2, "failed": 1}
    # Unmatched, so it took the GDC path, which no server answers here.
    listed = report.loc["TCGA-XX-0000-01Z-00-DX1_6e3b7a14"]
    assert listed["fetch_from"] == "gdc"
    assert "metadata of 6e3b7a14-5d4c-4f8e-9a21-0c1d2e3f4a03: 1 attempt failed" in listed["error"]
    plan = pd.read_csv(run.workdir / "results/cohort/instances.tsv", sep="\t").set_index("slide_id")
    assert plan.loc["TCGA-XX-0000-01Z-00-DX1_6e3b7a14", "url"] == "gdc:6e3b7a14-5d4c-4f8e-9a21-0c1d2e3f4a03"
    lock = pd.read_csv(run.workdir / "results/cohort/cohort.tsv", sep="\t", comment="#", dtype=str)
    assert sorted(lock["fetch_from"]) == ["gdc", "idc", "idc"]
    assert "# gdc_unmatched: 1" in (run.workdir / "results/cohort/cohort.tsv").read_text()
    done = image_hashes(run)
    assert len(done) == 2
    assert done == {k: v for k, v in image_hashes(reference).items() if k in done}


def test_lock_from_another_run_is_reproduced_exactly(
    reference: Run, tmp_path: Path, demo_build: dict[str, Path], s3: S3Server
) -> None:
    colleague = tmp_path / "colleague_cohort.tsv"
    colleague.write_bytes((reference.workdir / "results/cohort/cohort.tsv").read_bytes())
    run = run_in(tmp_path / "run", demo_tables(demo_build), s3, source="lock", manifest=str(colleague), n=1, seed=3)
    assert lock_body(run) == lock_body(reference)
    assert (run.workdir / "results/cohort/instances.tsv").read_bytes() == (
        reference.workdir / "results/cohort/instances.tsv"
    ).read_bytes()
    assert image_hashes(run) == image_hashes(reference)
