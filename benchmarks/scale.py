"""Snakemake's own cost at cohort scale: dry-run time and memory, and a full local run against the work floor.

Usage: python benchmarks/scale.py [--dry 1000,10000,30000] [--run 1000,10000] [--templates 8] [--repeat 2]

A synthetic cohort of N tiny but real DICOM slides (two JPEG levels, 512 px at
4 µm/px and 128 px at 16 µm/px) is made by cloning a few generated series with
new UIDs (pydicom), indexed in the real idc-index schema and served by the
local S3 server. For each N in --dry, the cohort and plan steps run,
then `snakemake -n` over the whole DAG is timed with its peak RSS. For each N
in --run, the whole workflow runs from scratch (cohort, fetch, downsample,
report) with `--cores 2`, and the per-slide work floor is measured in the same
run: one `s5cmd run` of the same planned files, then decode, resize and PNG
write of each on as many worker processes as the run has cores (--cores):
the same cores as the workflow, with none of its bookkeeping. Prints a table and writes it to
benchmarks/results/scale.md. Work files go to benchmarks/work/ (deleted after).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pydicom
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
sys.path.insert(0, str(REPO / "testkit"))

from slidestock.image.output import write_image  # noqa: E402
from slidestock.image.reduce import read_level  # noqa: E402
from slidestock.plan.levels import Level  # noqa: E402
from slidestock.read.fetch import BatchItem, command_file_line, s5cmd_base  # noqa: E402
from slidestock_testkit import dicomseries, indextables, s3server, slides  # noqa: E402

WORK = REPO / "benchmarks" / "work"
COLLECTION = "scale_tcga"


def templates(folder: Path, count: int) -> list[slides.SeriesRecord]:
    specs = [
        slides.SlideSpec(COLLECTION, f"TEMPLATE-{k}", f"TEMPLATE-{k}-01Z-00-DX1", (512, 512), 4.0, 2, seed=k)
        for k in range(count)
    ]
    return [dicomseries.write_series(spec, folder) for spec in specs]


def clone(template: slides.SeriesRecord, i: int, s3_root: Path | None, src_root: Path) -> slides.SeriesRecord:
    """Slide ``i``: the template's pixels under new ids; written under ``s3_root`` when given."""
    patient = f"TCGA-S{i // 10000:01d}-{i % 10000:04d}"
    spec = replace(template.spec, patient_id=patient, container_id=f"{patient}-01Z-00-DX1")
    key = f"scale/{i}"
    study, series_uid = slides.uid_for(key, "study"), slides.uid_for(key, "series")
    series_uuid = slides.uuid_for(key, "series")
    levels = []
    for k, inst in enumerate(template.instances):
        sop, instance_uuid = slides.uid_for(key, k), slides.uuid_for(key, k)
        size = inst.size_bytes
        if s3_root is not None:
            ds = pydicom.dcmread(
                src_root / slides.BUCKET / template.crdc_series_uuid / f"{inst.crdc_instance_uuid}.dcm"
            )
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series_uid, sop
            ds.file_meta.MediaStorageSOPInstanceUID = sop
            ds.PatientID, ds.ContainerIdentifier = patient, spec.container_id
            path = s3_root / slides.BUCKET / series_uuid / f"{instance_uuid}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            size = path.stat().st_size
        levels.append(
            Level(sop, instance_uuid, inst.image_type, inst.size_px, inst.spacing_um, inst.transfer_syntax, size)
        )
    return slides.SeriesRecord(spec, study, series_uid, series_uuid, tuple(levels))


def cohort(n: int, folder: Path, source: list[slides.SeriesRecord], src_root: Path, objects: bool) -> dict[str, Path]:
    s3_root = folder / "s3" if objects else None
    records = [clone(source[i % len(source)], i, s3_root, src_root) for i in range(n)]
    return indextables.write_tables(records, folder / "tables", 25)


def write_config(folder: Path, tables: dict[str, Path], endpoint: str) -> Path:
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config["cohort"].update(
        filter={"collection_id": [COLLECTION]}, n=None, tables={k: str(v) for k, v in tables.items()}
    )
    config["fetch"].update(endpoint=endpoint, attempts=2)
    config["gdc"] = {"api": "http://127.0.0.1:9"}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# A small launcher forks the command and reports its ru_maxrss: a process started straight from this
# one would count this process's RSS at the fork (Linux keeps it across exec) as its own peak.
LAUNCH = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}")
"""


def measured(argv: list[str], cwd: Path) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) and output of one command (the process itself, not its children)."""
    env = {**os.environ, "TMPDIR": str(cwd / "scratch")}
    (cwd / "scratch").mkdir(exist_ok=True)
    out, usage = cwd / "snakemake.out", cwd / "usage.txt"
    start = time.perf_counter()
    with out.open("w") as handle:
        subprocess.run(
            [sys.executable, "-c", LAUNCH, str(usage), *argv], cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT
        )
    seconds = time.perf_counter() - start
    text = out.read_text()
    code, peak_kb = (int(v) for v in usage.read_text().split())
    if code != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{text[-3000:]}")
    return seconds, peak_kb / 1024, text


CORES = 2


def snakemake(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--configfile", str(config),
            "--cores", str(CORES), *extra]  # fmt: skip


def jobs_of(output: str, dry: bool = False) -> int:
    """Jobs in the DAG: a dry run's job stats total, or the jobs a run finished (with the batches the plan added)."""
    if dry:
        return int([line.split()[1] for line in output.splitlines() if line.startswith("total ")][-1])
    return sum(line.startswith("Finished jobid") for line in output.splitlines())


def reduce_and_write(work: list[tuple[str, str, int, int, int]]) -> int:
    """Decode, resize and write a chunk of slides (level file, output file, output size, level width)."""
    for level_path, out_path, width, height, _ in work:
        level = read_level(Path(level_path), item=out_path, out_px=(width, height))
        write_image(level.image, Path(out_path), (15.0, 15.0), "png")
    return len(work)


def plain_s5cmd_run(items: list[BatchItem], endpoint: str, commands: Path, workers: int = 16) -> None:
    """Every item in one ``s5cmd run`` of a command file, as a script by hand would: no events read, no window."""
    commands.write_text("".join(command_file_line(item, endpoint) + "\n" for item in items))
    argv = [*s5cmd_base(endpoint), "--numworkers", str(workers), "run", str(commands)]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    wrong = [item.dest for item in items if item.dest.stat().st_size != item.expected_bytes]
    assert not wrong, f"{len(wrong)} objects of a wrong size, first {wrong[0]}"


def floor(folder: Path, endpoint: str, pool: ProcessPoolExecutor) -> float:
    """The same planned files: one s5cmd run, then decode, resize and write each on the pool's worker processes."""
    plan = pd.read_csv(folder / "results/cohort/instances.tsv", sep="\t", dtype=str)
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        start = time.perf_counter()
        items = [
            BatchItem(row.url, Path(scratch) / f"{row.slide_id}.dcm", int(row.instance_size))
            for row in plan.itertuples()
        ]
        plain_s5cmd_run(items, endpoint, Path(scratch) / "commands.txt")
        work = [
            (str(item.dest), str(item.dest.with_suffix(".png")), int(row.output_columns), int(row.output_rows),
             int(row.level_columns))
            for row, item in zip(plan.itertuples(), items, strict=True)
        ]  # fmt: skip
        chunks = [work[k : k + 100] for k in range(0, len(work), 100)]
        assert sum(pool.map(reduce_and_write, chunks)) == len(work)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry", default="1000,10000,30000")
    parser.add_argument("--run", default="1000,10000")
    parser.add_argument("--templates", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2, help="runs (and floors) per N; the best of each is kept")
    args = parser.parse_args()
    dry = [int(n) for n in args.dry.split(",") if n]
    run = [int(n) for n in args.run.split(",") if n]
    # The floor's workers, forked now: before this process starts libvips' threads (building the
    # templates does), which a child forked later would inherit half made and hang on.
    pool = ProcessPoolExecutor(CORES, mp_context=multiprocessing.get_context("fork"))
    assert sum(pool.map(reduce_and_write, [[]] * CORES)) == 0  # every worker up, its imports done
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    source_root = WORK / "templates"
    source = templates(source_root, args.templates)
    rows = []
    try:
        for n in sorted(set(dry) | set(run)):
            folder = WORK / f"n{n}"
            folder.mkdir()
            t0 = time.perf_counter()
            tables = cohort(n, folder, source, source_root, objects=n in run)
            print(f"scale: N={n}: cohort of {n} slides built in {time.perf_counter() - t0:.0f} s", flush=True)
            row: dict[str, object] = {"N": n}
            s3_root = folder / "s3"
            s3_root.mkdir(exist_ok=True)
            with s3server.serving(s3_root) as server:
                config = write_config(folder, tables, server.url)
                if n in dry:
                    measured(snakemake(config, "results/cohort/instances.tsv"), folder)
                    seconds, rss, out = measured(snakemake(config, "-n"), folder)
                    row.update(dry_run_s=round(seconds, 1), dry_run_rss_mb=round(rss), jobs=jobs_of(out, dry=True))
                    print(f"scale: N={n}: dry-run {seconds:.1f} s, {rss:.0f} MB, {row['jobs']} jobs", flush=True)
                if n in run:
                    runs, floors = [], []
                    for _ in range(args.repeat):  # each from scratch; the best of each is kept
                        shutil.rmtree(folder / "results", ignore_errors=True)
                        shutil.rmtree(folder / ".snakemake", ignore_errors=True)
                        seconds, rss, out = measured(snakemake(config), folder)
                        done = (pd.read_csv(folder / "results/report/slides.csv")["status"] == "done").sum()
                        assert done == n, f"{done} of {n} slides done"
                        runs.append(seconds)
                        floors.append(floor(folder, server.url, pool))
                        print(f"scale: N={n}: run {seconds:.1f} s, floor {floors[-1]:.1f} s", flush=True)
                    row.update(run_s=round(min(runs), 1), floor_s=round(min(floors), 1))
                    row["run_over_floor"] = round(min(runs) / min(floors), 2)
                    row.setdefault("jobs", jobs_of(out))
            rows.append(row)
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        pool.shutdown()
        shutil.rmtree(WORK, ignore_errors=True)
    table = pd.DataFrame(rows).to_markdown(index=False)
    print(table)
    out = REPO / "benchmarks" / "results" / "scale.md"
    out.write_text(
        "# benchmarks/scale.py\n\n"
        f"`python benchmarks/scale.py --dry {args.dry} --run {args.run} --repeat {args.repeat}` on {os.cpu_count()} "
        "cores (best run and best floor of the repeats), "
        f"fetch.batch_size {yaml.safe_load((REPO / 'config/demo.yaml').read_text())['fetch']['batch_size']}, "
        "`--cores 2`. Dry-run: after the cohort and the plan ran, `snakemake -n` over the whole DAG. "
        "Run: the whole workflow from scratch. Floor: one `s5cmd run` of the same files, then decode, resize "
        f"and PNG write of each on {CORES} worker processes (the run's cores).\n\n" + table + "\n"
    )


if __name__ == "__main__":
    main()
