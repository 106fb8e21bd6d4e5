"""Faults against the real servers on loopback: nothing lost, nothing partial, every error clear.

Each scenario runs the workflow as a user would (snakemake in a subprocess)
on the demo cohort. The S3 endpoint is the fault proxy in front of rclone
(killed, answering 503, stalling or slow on request), or rclone serving a
copy of the demo objects with some of them broken. Outputs are compared with
an undisturbed run's, byte for byte. Run just these: pytest tests/faults.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from slidestock_testkit.s3server import S3Server, free_port, serving
from tests.e2e.runs import REPO, Run, demo_tables, run_in, snakemake, snakemake_argv, wait_for, write_config
from tests.faults.conftest import Proxy

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
COMPARED = ("results/cohort/cohort.tsv", "results/cohort/instances.tsv", "results/report/slides.csv",
            "results/report/slides.parquet")  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, demo_build: dict[str, Path], s3: S3Server) -> Run:
    return run_in(tmp_path_factory.mktemp("reference"), demo_tables(demo_build), s3)


def fetch_settings(endpoint: str, **changes: object) -> dict[str, object]:
    fetch: dict[str, object] = {"endpoint": endpoint, "attempts": 3, "timeout": 60, "retry_count": 0}
    fetch.update(changes)
    return {"fetch": fetch}


def report(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "results/report/slides.csv").set_index("slide_id")


def levels(reference: Run) -> dict[str, str]:
    """Each demo slide's chosen level: slide id -> object key (crdc_series_uuid/crdc_instance_uuid.dcm)."""
    plan = pd.read_csv(reference.workdir / "results/cohort/instances.tsv", sep="\t", dtype=str)
    return {row.slide_id: row.url.split("/", 3)[3] for row in plan.itertuples()}


def assert_same_as(folder: Path, reference: Run) -> None:
    for name in COMPARED:
        assert (folder / name).read_bytes() == (reference.workdir / name).read_bytes(), name
    ours = sorted(p.name for p in (folder / "results/slides").glob("*.png"))
    assert ours == sorted(p.name for p in (reference.workdir / "results/slides").glob("*.png"))
    assert len(ours) == 6
    for name in ours:
        assert (folder / "results/slides" / name).read_bytes() == (
            reference.workdir / "results/slides" / name
        ).read_bytes()


def assert_nothing_partial(folder: Path) -> None:
    leftovers = [p for p in folder.rglob("*") if p.name.endswith((".partial", ".dcm", ".s5cmd"))]
    assert leftovers == []
    assert [p.name for p in (folder / "scratch").iterdir() if p.name.startswith("slidestock-")] == []


def batch_gets(proxy: Proxy) -> int:
    """GETs of levels since s5cmd's first HEAD: the batch's downloads, not the plan's header reads before them."""
    lines = proxy.log.read_text().splitlines()
    first_head = next((i for i, line in enumerate(lines) if line.startswith("HEAD ") and ".dcm" in line), len(lines))
    return sum(line.startswith("GET ") and ".dcm" in line for line in lines[first_head:])


def _sigint_as_in_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_slow_run(
    proxy: Proxy, tmp_path: Path, demo_build: dict[str, Path], bytes_per_s: int, **fetch: object
) -> tuple[Path, Path, subprocess.Popen[str]]:
    """Start the demo run in the background through the proxy, every level trickling at ``bytes_per_s``.

    The run leads a process group of its own, as a command typed in a terminal does (Ctrl-C reaches all of it),
    with SIGINT handled as a terminal's command has it: a suite started in the background (``pytest &``) has it
    ignored, and a child inherits that.
    """
    proxy.set_rules([{"match": ".dcm", "mode": "slow", "bytes_per_s": bytes_per_s}])
    folder = tmp_path / "run"
    top = fetch_settings(proxy.url, **fetch)
    config = write_config(tmp_path / "config.yaml", demo_tables(demo_build), proxy.url, top)
    argv, env = snakemake_argv(folder, config)
    run = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True, preexec_fn=_sigint_as_in_a_terminal)  # fmt: skip
    return folder, config, run


def test_server_killed_mid_transfer_then_restarted(
    reference: Run, proxy: Proxy, tmp_path: Path, demo_build: dict[str, Path]
) -> None:
    # Every level trickles at 10 kB/s (seconds each), so the kill lands in the middle of the downloads.
    folder, _, run = start_slow_run(proxy, tmp_path, demo_build, 10_000)
    wait_for(lambda: batch_gets(proxy) >= 3, 120, "the batch's downloads to start")
    proxy.kill()
    # Back once the batch has seen its attempt fail (its log says so), as a server restarted by hand would be.
    batch_log = folder / "logs/batch/b00000.log"
    wait_for(lambda: batch_log.is_file() and "attempt 1/3 failed" in batch_log.read_text(), 120, "the failed attempt")
    proxy.set_rules([])
    proxy.start()
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 0, out[-3000:]
    batch_log = (folder / "logs/batch/b00000.log").read_text()
    assert "attempt 1/3 failed" in batch_log
    assert (report(folder)["status"] == "done").all()
    assert_same_as(folder, reference)
    assert_nothing_partial(folder)


def test_503_and_a_stalled_server_fail_only_their_slides(
    reference: Run, proxy: Proxy, tmp_path: Path, demo_build: dict[str, Path]
) -> None:
    keys = levels(reference)
    answers_503, stalls = sorted(keys)[0], sorted(keys)[1]
    proxy.set_rules([{"match": keys[answers_503], "mode": "503"}, {"match": keys[stalls], "mode": "stall"}])
    top = fetch_settings(proxy.url, attempts=2, timeout=5, retry_count=1)
    config = write_config(tmp_path / "config.yaml", demo_tables(demo_build), proxy.url, top)
    proc = snakemake(tmp_path / "run", config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Two attempts of at most 5 s each and a 2 s backoff: bounded by the config, whatever the server does
    # (the requests counted below; the time is for benchmarks, not tests).
    table = report(tmp_path / "run")
    assert (table["status"] == "done").sum() == 4
    assert table.loc[answers_503, "status"] == "failed"
    assert "2 attempts failed" in table.loc[answers_503, "error"]
    assert "503" in table.loc[answers_503, "error"]
    assert table.loc[stalls, "status"] == "failed"
    assert (
        "2 attempts failed; last: s5cmd stopped: no object arrived for 5 s (fetch.timeout)"
        in table.loc[stalls, "error"]
    )
    # Observed: the batch decoded nothing until every object was in. Now the four others were done, their records
    # written, before either failed slide was given up (after the second attempt, past the first's 5 s stall).
    written = {slide: (tmp_path / "run" / f"results/slides/{slide}.json").stat().st_mtime_ns for slide in table.index}
    done = [written[slide] for slide in table.index if table.loc[slide, "status"] == "done"]
    assert max(done) < min(written[answers_503], written[stalls])
    for slide in (answers_503, stalls):
        assert not (tmp_path / "run" / f"results/slides/{slide}.png").exists()
    # Each attempt: for the 503, s5cmd's HEAD and GET, each retried once (retry_count 1); the stalled
    # HEAD never returns. Two attempts, then the slides are given up: bounded.
    # Before them, the plan's header read of each: one GET per attempt (2), then decided on the index alone.
    # And one HEAD of the batch's first object, whichever it is: the bucket is there (an error is an answer).
    batch_log = (tmp_path / "run/logs/batch/b00000.log").read_text()
    asked = [
        slide
        for slide in (answers_503, stalls)
        if f"the slide bucket answers (HEAD s3://idc-open-data/{keys[slide]})" in batch_log
    ]
    assert proxy.requests_for(keys[answers_503]) == 8 + 2 + (answers_503 in asked)
    assert proxy.requests_for(keys[stalls]) == 2 + 2 + (stalls in asked)
    # HEADs: s5cmd's of the bucket (one per run: 2), of the objects (the 503's 4, the stall's 2, the others' 4), ours.
    assert proxy.requests_for("", "HEAD ") == 2 + 4 + 2 + 4 + 1
    assert_nothing_partial(tmp_path / "run")


def test_wrong_sizes_corrupt_frame_and_not_dicom_fail_with_their_reasons(
    reference: Run, broken_root: Path, tmp_path: Path, demo_build: dict[str, Path], instance_table: pd.DataFrame
) -> None:
    keys = levels(reference)
    longer, shorter, corrupt, not_dicom, missing, *fine = sorted(keys)
    (broken_root / "idc-open-data" / keys[missing]).unlink()  # the index names it; the bucket has it not
    # Files are hard links into the demo build: replace them, never write into them.
    for slide, damage in ((corrupt, "frame"), (not_dicom, "noise")):
        path = broken_root / "idc-open-data" / keys[slide]
        data = bytearray(path.read_bytes())
        if damage == "frame":
            start = data.find(b"\xff\xd8\xff")  # the first frame's JPEG start-of-image marker
            data[start : start + 4] = b"\0\0\0\0"
        else:
            data = bytearray(hashlib.sha256(bytes(data)).digest() * (len(data) // 32 + 1))[: len(data)]
        path.unlink()
        path.write_bytes(bytes(data))
    # The index says one byte less than the object holds, and one byte more.
    table = instance_table.copy()
    uuid = table["crdc_instance_uuid"]
    table.loc[uuid == keys[longer].split("/")[1].removesuffix(".dcm"), "instance_size"] -= 1
    table.loc[uuid == keys[shorter].split("/")[1].removesuffix(".dcm"), "instance_size"] += 1
    tables = demo_tables(demo_build)
    tables["sm_instance_index"] = tmp_path / "sm_instance_index.parquet"
    table.to_parquet(tables["sm_instance_index"], index=False)
    with serving(broken_root) as server:
        run = run_in(tmp_path / "run", tables, server, fetch_settings(server.url, attempts=2))
        again = snakemake(run.workdir, run.config)
    result = report(run.workdir)
    assert sorted(result.index[result["status"] == "done"]) == sorted(fine)
    errors = result["error"]
    assert "wrong size twice" in errors[longer]
    assert "expected" in errors[longer]
    assert "wrong size twice" in errors[shorter]
    assert f"{corrupt}" in errors[corrupt]
    assert "frame 1 cannot be decoded" in errors[corrupt]
    assert errors[corrupt].endswith("(the file is malformed)")
    assert "not a readable DICOM file" in errors[not_dicom]
    # Observed: a 404 was "may pass on a re-run", and every re-run tried it again, forever.
    assert errors[missing].endswith(
        "not found at " + run.config.read_text().split("endpoint: ")[1].split()[0] + ": the index names an object "
        "the bucket does not hold; a re-run will not fetch it. Check cohort.idc_version (the index and the bucket "
        "disagree), or report the object to IDC (https://discourse.canceridc.dev)"
    )
    for slide in (longer, shorter, corrupt, not_dicom, missing):
        assert not (run.workdir / f"results/slides/{slide}.png").exists()
        record = json.loads((run.workdir / f"results/slides/{slide}.json").read_text())
        assert record["status"] == "failed"
        assert record["output"] is None
        assert record["retryable"] is False  # each the same on every run: permanent for this plan
    page = (run.workdir / "results/report/index.html").read_text()
    assert "1 of 6 slides done, 5 failed" in page
    # The same command again tries none of them: nothing may pass.
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Nothing to be done" in again.stdout + again.stderr
    assert_nothing_partial(run.workdir)


def fetching(folder: Path) -> int:
    """How many batch jobs are under way: each one's log says what it has to do, and it has no table yet."""
    logs = (folder / "logs/batch").glob("b*.log")
    return sum(" to do, on " in log.read_text() and not (folder / "results/batches" / f"{log.stem}.tsv").exists()
               for log in logs)  # fmt: skip


def test_workflow_killed_then_rerun_finishes_without_redoing_slides(
    reference: Run, proxy: Proxy, tmp_path: Path, demo_build: dict[str, Path]
) -> None:
    folder, config, run = start_slow_run(proxy, tmp_path, demo_build, 8_000, batch_size=1)
    wait_for(lambda: (folder / "results/batches/b00000.tsv").exists(), 120, "the first batch")
    # Both jobs the two cores run are past their start (Ctrl-C while Python starts is Python's, not ours).
    wait_for(lambda: fetching(folder) == 2, 120, "two batch jobs fetching their slides")
    os.killpg(run.pid, signal.SIGINT)  # Ctrl-C: to Snakemake and its jobs alike
    try:
        said, _ = run.communicate(timeout=30)  # Snakemake stops its jobs on SIGINT; SIGKILL if it will not
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)
        said, _ = run.communicate(timeout=60)
    # Observed: a raw KeyboardInterrupt traceback. Now one line from the job that was stopped.
    assert "Traceback" not in said
    assert "KeyboardInterrupt" not in said
    assert re.search(
        r"^batch b0000\d: interrupted; what it finished is kept, and the next run does the rest$", said, re.M
    )
    done_before = {
        p.name: p.stat().st_mtime_ns
        for p in (folder / "results/slides").glob("*.json")
        if json.loads(p.read_text())["status"] == "done"
    }
    assert 1 <= len(done_before) < 6
    proxy.set_rules([])
    snakemake(folder, config, "--unlock")
    proc = snakemake(folder, config, "--rerun-incomplete")
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = {p.name: p.stat().st_mtime_ns for p in (folder / "results/slides").glob("*.json")}
    assert {name: after[name] for name in done_before} == done_before
    assert_same_as(folder, reference)
    assert_nothing_partial(folder)


def test_ctrl_c_on_the_demo_leaves_no_lock_and_the_same_command_goes_on(
    tmp_path: Path, demo_build: dict[str, Path]
) -> None:
    """Observed (a newcomer's trial): after Ctrl-C, `make demo` failed on Snakemake's lock until unlocked by hand:
    the demo's driver killed Snakemake at once, and its batch job ran on after the prompt."""
    # Near the base's spacing, so that each slide takes a while and Ctrl-C finds the batch at work.
    (tmp_path / "fine.yaml").write_text("target:\n  mpp: 0.5\n")
    demo = [sys.executable, str(REPO / "resources/demo/run_demo.py"), "--workdir", str(tmp_path / "demo"),
            "--configfile", str(tmp_path / "fine.yaml")]  # fmt: skip
    run = subprocess.Popen(demo, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True, preexec_fn=_sigint_as_in_a_terminal)  # fmt: skip
    wait_for(lambda: (tmp_path / "demo/logs/batch/b00000.log").exists() or run.poll() is not None, 300, "the batch")
    assert run.poll() is None, run.communicate()[0][-3000:]
    os.killpg(run.pid, signal.SIGINT)
    said, _ = run.communicate(timeout=120)
    assert run.returncode == 130, said[-3000:]
    # Nothing of the run goes on behind the prompt (the batch job, once, ran on after it).
    with pytest.raises(ProcessLookupError):
        os.killpg(run.pid, 0)
    # The command it was given, its own folder and config with it (a newcomer's trial: it said `make demo`).
    command = f"python resources/demo/run_demo.py --workdir {tmp_path / 'demo'} --configfile {tmp_path / 'fine.yaml'}"
    assert said.splitlines()[-1] == f"demo: interrupted; `{command}` again goes on from where it stopped"
    assert "Traceback" not in said
    assert list((tmp_path / "demo/.snakemake/locks").glob("*")) == []
    again = subprocess.run(demo, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "demo: the stock: 6 of 6 slides done, 0 failed" in again.stdout
    assert "kept from before" in again.stdout
    assert [p for p in (tmp_path / "demo").rglob("*") if p.name.endswith((".partial", ".dcm", ".s5cmd"))] == []


def test_a_config_mistake_on_the_demo_says_to_mend_it_not_to_retry(tmp_path: Path, demo_build: dict[str, Path]) -> None:
    """Observed (a newcomer's trial): `target.mpp: -5` was named, then the demo said `see demo-bad/logs/` (there
    were none) and that running again retries what may pass (it would fail the same way)."""
    (tmp_path / "bad.yaml").write_text("target:\n  mpp: -5\n")
    demo = [sys.executable, str(REPO / "resources/demo/run_demo.py"), "--workdir", str(tmp_path / "demo"),
            "--configfile", str(tmp_path / "bad.yaml")]  # fmt: skip
    run = subprocess.run(demo, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode != 0
    said = run.stderr.strip().splitlines()
    assert any("config key target.mpp: got -5" in line for line in said), said[-5:]
    assert said[-1].endswith("before any job ran; mend what it says above, then run again"), said[-3:]
    assert not (tmp_path / "demo" / "logs").exists()


def test_disk_preflight_stops_the_batch_before_any_download(
    s3: S3Server, tmp_path: Path, demo_build: dict[str, Path], instance_table: pd.DataFrame, reference: Run
) -> None:
    keys = levels(reference)
    huge_slide = sorted(keys)[0]
    table = instance_table.copy()
    table.loc[table["crdc_instance_uuid"] == keys[huge_slide].split("/")[1].removesuffix(".dcm"), "instance_size"] = (
        10**15
    )
    tables = demo_tables(demo_build)
    tables["sm_instance_index"] = tmp_path / "sm_instance_index.parquet"
    table.to_parquet(tables["sm_instance_index"], index=False)
    config = write_config(tmp_path / "config.yaml", tables, s3.url, fetch_settings(s3.url, batch_size=2))
    proc = snakemake(tmp_path / "run", config)
    assert proc.returncode != 0
    log = (tmp_path / "run/logs/batch/b00000.log").read_text()
    assert "batch b00000: needs 1,000,000,000," in log
    assert "batch b00000: needs 1,000,000,000," in proc.stderr
    assert "bytes of scratch space in" in log
    assert "bytes are free" in log
    # Nothing of that batch was fetched or written; the other batches finished.
    first_two = sorted(keys)[:2]
    assert not any((tmp_path / f"run/results/slides/{slide}.json").exists() for slide in first_two)
    assert len(list((tmp_path / "run/results/slides").glob("*.png"))) == 4
    assert "fetched" not in log
    assert_nothing_partial(tmp_path / "run")


def test_second_workflow_on_the_same_folder_is_stopped_by_the_lock(
    proxy: Proxy, tmp_path: Path, demo_build: dict[str, Path]
) -> None:
    folder, config, first = start_slow_run(proxy, tmp_path, demo_build, 20_000)
    wait_for(lambda: proxy.requests_for(".dcm", "GET ") >= 1, 60, "the first run's downloads")
    second = snakemake(folder, config)
    out, _ = first.communicate(timeout=300)
    assert second.returncode != 0
    assert "Directory cannot be locked" in second.stderr
    assert first.returncode == 0, out[-3000:]
    assert (report(folder)["status"] == "done").all()


HOSTILE = (
    "../../../escape",
    "TCGA-'quoted\"-01Z",
    "x; touch PWNED_SEMICOLON",
    "$(touch PWNED_SUBSHELL)",
    "line\nbreak",
    "<script>alert('slidestock')</script>",
)


def test_hostile_ids_stay_inside_results_execute_nothing_and_are_escaped(
    tmp_path: Path, demo_build: dict[str, Path], s3: S3Server
) -> None:
    tables = demo_tables(demo_build)
    sm_index = pd.read_parquet(tables["sm_index"])
    sm_index["ContainerIdentifier"] = list(HOSTILE)
    index = pd.read_parquet(tables["index"])
    index["PatientID"] = [f"<b>{p}</b>" for p in index["PatientID"]]
    tables["sm_index"], tables["index"] = tmp_path / "sm_index.parquet", tmp_path / "index.parquet"
    sm_index.to_parquet(tables["sm_index"], index=False)
    index.to_parquet(tables["index"], index=False)
    run = run_in(tmp_path / "run", tables, s3, fetch_settings(s3.url))
    # Ids become file names only after sanitising: nothing escapes results/ or logs/, nothing ran.
    touched = {"PWNED_SEMICOLON", "PWNED_SUBSHELL", "escape"}
    assert not [p for p in tmp_path.parent.rglob("*") if p.name in touched]
    assert not [p for p in Path.cwd().iterdir() if p.name in touched]
    tops = {p.relative_to(run.workdir).parts[0] for p in run.workdir.rglob("*")}
    assert tops <= {"results", "logs", ".snakemake", "scratch", "config.yaml"}
    slides = sorted(p.name for p in (run.workdir / "results/slides").glob("*.png"))
    assert len(slides) == 6
    assert all(name.replace(".png", "").replace("_", "").replace("-", "").replace(".", "").isalnum() for name in slides)
    page = (run.workdir / "results/report/index.html").read_text()
    assert "<script>alert" not in page
    assert "<b>TCGA" not in page
    assert 'title="patient &lt;b&gt;TCGA-D1-A001&lt;/b&gt;"' in page
    assert "6 of 6 slides done, 0 failed" in page


@pytest.mark.parametrize(
    ("cohort", "message"),
    [
        ({"colour": "red"}, "config key cohort.colour: not a known key; expected one of: filter, idc_version"),
        ({"n": "ten"}, "config key cohort.n: got 'ten'; expected an integer >= 1 (or null for all)"),
        ({"filter": {"collection_id": "tcga_brca"}}, "config key cohort.filter.collection_id: got 'tcga_brca'"),
        ({"source": "idc; rm -rf ~"}, "config key cohort.source: got 'idc; rm -rf ~'"),
    ],
)
def test_config_abuse_stops_before_anything_runs(
    tmp_path: Path, demo_build: dict[str, Path], s3: S3Server, cohort: dict[str, object], message: str
) -> None:
    config = write_config(tmp_path / "config.yaml", demo_tables(demo_build), s3.url, None, **cohort)
    proc = snakemake(tmp_path, config)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("n", [7, 10**12])
def test_n_beyond_the_candidates_takes_them_all_and_says_so(
    tmp_path: Path, demo_build: dict[str, Path], s3: S3Server, n: int
) -> None:
    run = run_in(tmp_path, demo_tables(demo_build), s3, fetch_settings(s3.url), n=n)
    lock = (run.workdir / "results/cohort/cohort.tsv").read_text()
    assert "# candidates: 6" in lock
    assert len(list((run.workdir / "results/slides").glob("*.png"))) == 6


def test_failures_exit_nonzero_and_the_same_command_retries_only_those_that_may_pass(
    reference: Run, broken_root: Path, tmp_path: Path, demo_build: dict[str, Path]
) -> None:
    keys = levels(reference)
    corrupt, busy, *_ = sorted(keys)
    path = broken_root / "idc-open-data" / keys[corrupt]
    data = bytearray(path.read_bytes())
    start = data.find(b"\xff\xd8\xff")
    data[start : start + 4] = b"\0\0\0\0"
    path.unlink()  # a hard link into the demo build: replace it, never write into it
    path.write_bytes(bytes(data))
    with serving(broken_root) as server:
        port = free_port()
        proxy = Proxy(f"http://127.0.0.1:{port}", port, tmp_path / "rules.json", tmp_path / "proxy.log", server.url)
        proxy.set_rules([{"match": keys[busy], "mode": "503"}])
        proxy.start()
        try:
            top = {**fetch_settings(proxy.url, attempts=2), "report": {"accept_failures": False}}
            config = write_config(tmp_path / "config.yaml", demo_tables(demo_build), proxy.url, top)
            folder = tmp_path / "run"
            # As `make demo` runs it: the retry hint names the command a user typed, not snakemake's own.
            first = snakemake(folder, config, env={"SLIDESTOCK_RETRY_COMMAND": "make demo"})
            said = first.stderr.strip().splitlines()
            # Its table is gone, so that the same command re-runs the batch; the report stays.
            table_left = (folder / "results/batches/b00000.tsv").exists()
            retryable = {
                slide: json.loads((folder / f"results/slides/{slide}.json").read_text()).get("retryable")
                for slide in (busy, corrupt)
            }
            records = {p.stem: p.stat().st_mtime_ns for p in (folder / "results/slides").glob("*.json")}
            proxy.set_rules([])  # the server is well again
            second = snakemake(folder, config)
            again = second.stderr.strip().splitlines()
            after = {p.stem: p.stat().st_mtime_ns for p in (folder / "results/slides").glob("*.json")}
        finally:
            proxy.kill()
    assert first.returncode == 1
    assert said[-2].startswith("slidestock: this run: 4 slides made, 2 failed, 0 kept from before; fetched ")
    assert said[-1].startswith("slidestock: the stock: 4 of 6 slides done, 2 failed; ")
    assert re.search(r" series bytes fetched for it \(0\.\d\d %\);", said[-1])
    assert said[-1].endswith(
        "; 1 may pass: `make demo` again retries them; 1 permanent: fetch.redo_failed: true retries those; "
        "report: results/report/index.html"
    )
    assert any(line.endswith("(may pass on a re-run)") and "attempts failed" in line for line in said), said[-4:]
    # Shown as said, numbers and all (observed: `frame # cannot be decoded`).
    assert any(line.endswith("(permanent)") and "frame 1 cannot be decoded" in line for line in said)
    assert retryable == {busy: True, corrupt: False}
    assert not table_left
    # The same command again: the 503 slide is redone and done; the corrupt one is not tried again.
    assert second.returncode == 1
    assert again[-2].startswith("slidestock: this run: 1 slide made, 0 failed, 5 kept from before; fetched ")
    assert again[-1].startswith("slidestock: the stock: 5 of 6 slides done, 1 failed; ")
    assert "; 1 permanent: fetch.redo_failed: true retries those" in again[-1]
    assert after[busy] != records[busy]
    assert {slide: after[slide] for slide in after if slide != busy} == {
        slide: records[slide] for slide in records if slide != busy
    }
    assert report(folder).loc[busy, "status"] == "done"
