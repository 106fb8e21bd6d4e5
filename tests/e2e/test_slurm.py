"""The demo cohort through profiles/slurm on a real one-node SLURM cluster (slurmctld, slurmd, munged).

The cluster is started from Debian's packages (resources/slurm/install.sh) on
loopback and stopped by PID. The run's outputs must equal a local run's byte
for byte; every batch must have run as a SLURM job with the resources the
rule asked for; and a batch killed on its first attempt for using more memory
than it asked for must succeed on its retry, which asks for more.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from slidestock_testkit import slurmlocal
from slidestock_testkit.s3server import S3Server
from tests.e2e.runs import REPO, Run, demo_tables, run_in, write_config

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
BATCH_SIZE = 2
FIRST_MB, RETRY_MB = 60, 3000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[slurmlocal.SlurmCluster]:
    why = slurmlocal.missing_requirements()
    if why:
        pytest.skip(f"no local SLURM: {why}")
    with slurmlocal.running(tmp_path_factory.mktemp("slurm")) as running:
        yield running


def test_profiles_pass_snakemake_lint() -> None:
    for profile in ("profiles/default", "profiles/slurm"):
        argv = [sys.executable, "-m", "snakemake", "--lint", "--profile", profile, "--configfile", "config/demo.yaml"]
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


def test_slurm_profile_names_what_a_user_edits() -> None:
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert profile["slurm-status-command"] == "squeue"
    assert "slurm_partition" in profile["default-resources"]
    text = (REPO / "profiles/slurm/config.yaml").read_text()
    assert text.count("EDIT") >= 4


def slurm_profile(folder: Path) -> Path:
    """profiles/slurm as it is, with the waits shortened and a first attempt that is short of memory."""
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    profile.update(
        {
            "slurm-init-seconds-before-status-checks": 2,
            "seconds-between-status-checks": 2,
            "slurm-logdir": str(folder / "slurm-logs"),
            "slurm-keep-successful-logs": True,
        }
    )
    profile["set-resources"]["batch"] = {"mem_mb": f"{FIRST_MB} if attempt == 1 else {RETRY_MB}"}
    profile["set-threads"] = {"batch": 2}
    (folder / "profile").mkdir(parents=True)
    (folder / "profile" / "config.yaml").write_text(yaml.safe_dump(profile))
    return folder / "profile"


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory, demo_build: dict[str, Path], s3: S3Server) -> Run:
    top = {"fetch": {"endpoint": s3.url, "attempts": 1, "batch_size": BATCH_SIZE}}
    return run_in(tmp_path_factory.mktemp("local"), demo_tables(demo_build), s3, top)


@pytest.fixture(scope="module")
def on_slurm(
    cluster: slurmlocal.SlurmCluster,
    tmp_path_factory: pytest.TempPathFactory,
    demo_build: dict[str, Path],
    s3: S3Server,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    folder = tmp_path_factory.mktemp("on-slurm")
    top = {"fetch": {"endpoint": s3.url, "attempts": 1, "batch_size": BATCH_SIZE}}
    config = write_config(folder / "config.yaml", demo_tables(demo_build), s3.url, top)
    argv = [
        "timeout", "-k", "10", "600",
        sys.executable, "-m", "snakemake",
        "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(folder),
        "--configfile", str(config),
        "--profile", str(slurm_profile(folder)),
    ]  # fmt: skip
    (folder / "scratch").mkdir()
    env = {**cluster.env, "TMPDIR": str(folder / "scratch")}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=660, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return folder, proc


def squeue_jobs(cluster: slurmlocal.SlurmCluster) -> list[dict[str, str]]:
    """Every job the cluster still lists (MinJobAge keeps finished ones): id, comment, state, memory, limit, CPUs."""
    fields = ("id", "comment", "state", "memory", "time_limit", "cpus")
    argv = ["squeue", "--states=all", "--noheader", "--format=%i|%k|%T|%m|%l|%C"]
    proc = subprocess.run(argv, env=cluster.env, capture_output=True, text=True, check=True)
    return [dict(zip(fields, line.split("|"), strict=True)) for line in proc.stdout.splitlines()]


def test_outputs_equal_a_local_run_byte_for_byte(on_slurm: tuple[Path, object], local: Run) -> None:
    folder, _ = on_slurm
    for name in ("results/cohort/cohort.tsv", "results/cohort/instances.tsv", "results/report/slides.csv",
                 "results/report/slides.parquet", "results/report/contact_sheet.png"):  # fmt: skip
        assert (folder / name).read_bytes() == (local.workdir / name).read_bytes(), name
    theirs = sorted(p.name for p in (local.workdir / "results/slides").iterdir())
    assert sorted(p.name for p in (folder / "results/slides").iterdir()) == theirs
    assert len(theirs) == 12
    for name in theirs:
        ours, reference = folder / "results/slides" / name, local.workdir / "results/slides" / name
        if name.endswith(".json"):
            volatile = ("started_at", "timings_s")
            a, b = json.loads(ours.read_text()), json.loads(reference.read_text())
            assert {k: v for k, v in a.items() if k not in volatile} == {
                k: v for k, v in b.items() if k not in volatile
            }
            assert a["status"] == "done"
        else:
            assert ours.read_bytes() == reference.read_bytes(), name


def test_each_batch_ran_as_a_slurm_job_with_its_resources(
    on_slurm: tuple[Path, object], cluster: slurmlocal.SlurmCluster
) -> None:
    folder, _ = on_slurm
    jobs = squeue_jobs(cluster)
    batches = sorted(p.stem for p in (folder / "results/cohort/batches").glob("b*.tsv"))
    assert batches == ["b00000", "b00001", "b00002"]
    for batch in batches:
        mine = [job for job in jobs if job["comment"] == f"rule_batch_wildcards_{batch}"]
        done = [job for job in mine if job["state"] == "COMPLETED"]
        assert len(done) == 1, mine
        # What the retry asked for: the profile's memory, the rule's runtime (11 min per attempt), 2 threads.
        assert done[0]["memory"] == f"{RETRY_MB}M"
        assert done[0]["time_limit"] == "22:00"
        assert done[0]["cpus"] == "2"
    assert any(job["comment"] == "rule_cohort" and job["state"] == "COMPLETED" for job in jobs)
    assert any(job["comment"] == "rule_plan" and job["state"] == "COMPLETED" for job in jobs)
    # The report is a local rule: it never reaches the cluster.
    assert not any("report" in job["comment"] for job in jobs)


def test_a_batch_short_of_memory_is_killed_then_succeeds_on_its_retry(
    on_slurm: tuple[Path, subprocess.CompletedProcess[str]], cluster: slurmlocal.SlurmCluster
) -> None:
    folder, proc = on_slurm
    jobs = squeue_jobs(cluster)
    for batch in ("b00000", "b00001", "b00002"):
        first = [
            job for job in jobs if job["comment"] == f"rule_batch_wildcards_{batch}" and job["memory"] == f"{FIRST_MB}M"
        ]
        assert len(first) == 1, jobs
        assert first[0]["state"] in ("OUT_OF_MEMORY", "FAILED", "CANCELLED"), first
        assert first[0]["time_limit"] == "11:00"
    log = proc.stdout + proc.stderr
    assert log.count("Trying to restart job") >= 3 or log.count("attempt 2") >= 3, log[-3000:]
    slurmd_log = (cluster.root / "slurmd.log").read_text()
    assert "exceeded memory limit" in slurmd_log or "Exceeded job memory limit" in slurmd_log
    # The killed attempts' scratch folders were removed by their retries.
    assert [name for name in os.listdir(folder / "scratch") if name.startswith("slidestock-")] == []
