"""Link and CPU overlapping: the whole workflow against the link floor and the same-cores floor.

Usage: python benchmarks/link.py [--link 100,300] [--rate-mbps 100] [--cpu 100] [--repeat 1] [--workflow DIR]
                                 [--keep]

TCGA-shaped slides: 40,000 x 30,000 px at 0.2527 µm/px (a 40x scan) with levels /4, /16
and /64 of 256-px JPEG frames (Q90 4:2:2, the test kit's real-tissue mosaic), without an
offset table, dual-personality DICOM-TIFF, as IDC's converted TCGA slides are (DESIGN.md).
One template series is written once (benchmarks/work/link/, kept); N slides are made from
it. The levels the workflow reads at 15 µm/px (/16, and /64 beside it) are copies with the
slide's own UIDs written in place (same length: the TIFF directory's offsets hold); the base
and /4 levels, never read, are hard links to the template's. The index tables (idc-index's
schema, spacings rounded as published) list every level with its real size.

link: rclone serve s3 --bwlimit (R Mb/s); the workflow from scratch (cohort, plan, batches,
report) with --cores 2. The link floor is the bytes the plan needs (the chosen levels and the
plan's header reads) at R.
cpu: no limit; the same workflow against the same-cores floor of benchmarks/scale.py: one
s5cmd run of the same files, then decode, resize and PNG write on 2 worker processes.

Then, per slide at 15 µm/px, the core-seconds (the whole run's user + system CPU, every
process, over N) and the bytes, for the 40x slides and for 20x ones (20,000 x 15,000 px at
0.5054 µm/px, levels /4 and /16: their decode measured alone, plus the 40x run's per-slide
cost beyond its decode), and what they project for all 30,075 TCGA slides on one 16-core
machine next to the data at 1 GB/s: the larger of bytes / 1 GB/s and core-seconds / 16.
``--workflow DIR`` runs another checkout's Snakefile on the same fixtures (a before/after).
``--repeat R`` runs each R times (and the floor R times) and keeps the best of each, as
benchmarks/scale.py does: on a shared 2-core machine one run of the same work varies by 10 %.
Prints the lines below and writes benchmarks/results/link.md:
  link: N slides at R Mb/s: T s, X x the link floor
  cpu: N slides, no limit: T s, Y x the same-cores floor
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import pickle
import resource
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
sys.path.insert(0, str(REPO / "testkit"))

import scale  # noqa: E402  (benchmarks/scale.py: the run, its peak memory, the same-cores floor)

from slidestock.image.output import write_image  # noqa: E402
from slidestock.image.reduce import read_level  # noqa: E402
from slidestock.plan.levels import Level  # noqa: E402
from slidestock_testkit import dicomseries, indextables, s3server, slides  # noqa: E402

WORK = REPO / "benchmarks" / "work" / "link"
TCGA_SLIDES = 30_075
TARGET_UM = 15.0
SHAPES = {
    "40x": slides.SlideSpec(scale.COLLECTION, "TCGA-L4-0000", "TCGA-L4-0000-01Z-00-DX1", (40000, 30000), 0.2527,
                            n_levels=4, frame_index="tiff", seed=21),
    "20x": slides.SlideSpec(scale.COLLECTION, "TCGA-L2-0000", "TCGA-L2-0000-01Z-00-DX1", (20000, 15000), 0.5054,
                            n_levels=3, frame_index="tiff", seed=22),
}  # fmt: skip
# Levels the workflow never reads at 15 µm/px (hard links to the template's): the base and /4.
UNREAD_LEVELS = 2


def template(shape: str) -> tuple[slides.SeriesRecord, Path]:
    """The template series of ``shape`` (written once, kept) and the S3 root it is under."""
    root = WORK / f"template-{shape}"
    stamp = root / "series.pickle"
    if not stamp.exists():
        shutil.rmtree(root, ignore_errors=True)
        started = time.perf_counter()
        series = dicomseries.write_series(SHAPES[shape], root)
        stamp.write_bytes(pickle.dumps(series))
        print(f"link: {shape} template written in {time.perf_counter() - started:.0f} s", flush=True)
    series = pickle.loads(stamp.read_bytes())
    assert isinstance(series, slides.SeriesRecord)
    return series, root


def object_path(root: Path, series: slides.SeriesRecord, level: Level) -> Path:
    return root / slides.BUCKET / series.crdc_series_uuid / f"{level.crdc_instance_uuid}.dcm"


def same_length_uid(uid: str, i: int) -> str:
    """``uid`` with its last digits replaced by slide ``i``'s number: as long as ``uid``, so nothing moves."""
    return uid[:-7] + f"{i:07d}"


def clone(source: slides.SeriesRecord, source_root: Path, i: int, s3_root: Path) -> slides.SeriesRecord:
    """Slide ``i``: the template's levels under its own ids and objects."""
    patient = f"TCGA-L{i // 10000}-{i % 10000:04d}"
    spec = replace(source.spec, patient_id=patient, container_id=f"{patient}-01Z-00-DX1")
    key = f"link/{i}"
    old = [source.study_uid, source.series_uid, *(level.sop_instance_uid for level in source.instances)]
    uids = {uid: same_length_uid(uid, i) for uid in old}
    series_uuid = slides.uuid_for(key, "series")
    levels = []
    for k, level in enumerate(source.instances):
        made = replace(level, sop_instance_uid=uids[level.sop_instance_uid], crdc_instance_uuid=slides.uuid_for(key, k))
        dest = s3_root / slides.BUCKET / series_uuid / f"{made.crdc_instance_uuid}.dcm"
        dest.parent.mkdir(parents=True, exist_ok=True)
        original = object_path(source_root, source, level)
        if k < UNREAD_LEVELS:
            os.link(original, dest)
        else:
            data = original.read_bytes()
            for old, new in uids.items():
                data = data.replace(old.encode(), new.encode())
            dest.write_bytes(data)
        levels.append(made)
    return slides.SeriesRecord(spec, uids[source.study_uid], uids[source.series_uid], series_uuid, tuple(levels))


def cohort(n: int, folder: Path, shape: str) -> tuple[dict[str, Path], Path]:
    """``n`` slides of ``shape`` under ``folder/s3``, and their index tables."""
    source, source_root = template(shape)
    s3_root = folder / "s3"
    records = [clone(source, source_root, i, s3_root) for i in range(n)]
    return indextables.write_tables(records, folder / "tables", 25), s3_root


def planned_bytes(folder: Path) -> int:
    """What the plan needs moved: the chosen levels' objects and the plan's own header reads."""
    plan = pd.read_csv(folder / "results/cohort/instances.tsv", sep="\t")
    return int(plan["instance_size"].sum() + plan["header_bytes"].fillna(0).sum())


def run_workflow(folder: Path, config: Path, snakefile: Path) -> tuple[float, float]:
    """One run from scratch: its wall seconds and the CPU seconds of every process it started."""
    shutil.rmtree(folder / "results", ignore_errors=True)
    shutil.rmtree(folder / ".snakemake", ignore_errors=True)
    shutil.rmtree(folder / "logs", ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    argv = scale.snakemake(config)
    argv[argv.index("--snakefile") + 1] = str(snakefile)
    seconds, _, _ = scale.measured(argv, folder)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    done = (pd.read_csv(folder / "results/report/slides.csv")["status"] == "done").sum()
    n = len(pd.read_csv(folder / "results/cohort/instances.tsv", sep="\t"))
    assert done == n, f"{done} of {n} slides done"
    return seconds, cpu


def decode_core_s(shape: str, repeat: int = 5) -> tuple[float, int]:
    """CPU seconds to read, reduce and write one slide of ``shape`` at 15 µm/px (its level alone), and its bytes."""
    series, root = template(shape)
    spacing = series.spec.base_spacing_um
    levels = sorted(series.instances, key=lambda level: level.size_px[0], reverse=True)
    chosen = [lv for lv in levels if spacing * series.spec.base_size_px[0] / lv.size_px[0] <= TARGET_UM][-1]
    path = object_path(root, series, chosen)
    width = round(series.spec.base_size_px[0] * spacing / TARGET_UM)
    height = round(series.spec.base_size_px[1] * spacing / TARGET_UM)
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        level = read_level(path, item=shape, out_px=(width, height))
        write_image(level.image, WORK / f"{shape}.png", (TARGET_UM, TARGET_UM), "png")
        best = min(best, time.process_time() - start)
    return best, chosen.size_bytes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--link", default="100,300", help="cohort sizes run through the limited link")
    parser.add_argument("--rate-mbps", type=float, default=100.0)
    parser.add_argument("--cpu", type=int, default=100, help="cohort size run without a limit, against the floor")
    parser.add_argument("--workflow", type=Path, default=REPO, help="the checkout whose Snakefile runs")
    parser.add_argument("--repeat", type=int, default=1, help="runs (and floors) per size; the best of each is kept")
    parser.add_argument("--keep", action="store_true", help="keep each run's folder (benchmarks/work/link/n*)")
    args = parser.parse_args()
    links = [int(n) for n in args.link.split(",") if n]
    snakefile = args.workflow.resolve() / "Snakefile"
    # The floor's workers, forked before libvips starts its threads (as benchmarks/scale.py does).
    pool = ProcessPoolExecutor(scale.CORES, mp_context=multiprocessing.get_context("fork"))
    assert sum(pool.map(scale.reduce_and_write, [[]] * scale.CORES)) == 0
    rate = args.rate_mbps * 1e6 / 8  # bytes per second
    lines, per_slide = [], {}
    try:
        for n in sorted(set(links) | {args.cpu}):
            folder = WORK / f"n{n}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            tables, s3_root = cohort(n, folder, "40x")
            if n in links:
                with s3server.serving(s3_root, bwlimit=f"{rate:.0f}B") as server:
                    config = scale.write_config(folder, tables, server.url)
                    seconds = min(run_workflow(folder, config, snakefile)[0] for _ in range(args.repeat))
                planned = planned_bytes(folder)
                floor_s = planned / rate
                lines.append(f"link: {n} slides at {args.rate_mbps:g} Mb/s: {seconds:.1f} s, "
                             f"{seconds / floor_s:.2f} x the link floor ({planned / 1e6:.1f} MB, "
                             f"{floor_s:.1f} s)")  # fmt: skip
                print(lines[-1], flush=True)
            if n == args.cpu:
                with s3server.serving(s3_root) as server:
                    config = scale.write_config(folder, tables, server.url)
                    seconds, cpu = min(run_workflow(folder, config, snakefile) for _ in range(args.repeat))
                    floor_s = min(scale.floor(folder, server.url, pool) for _ in range(args.repeat))
                per_slide["40x run"] = (cpu / n, planned_bytes(folder) / n)
                lines.append(f"cpu: {n} slides, no limit: {seconds:.1f} s, {seconds / floor_s:.2f} x the same-cores "
                             f"floor ({floor_s:.1f} s on {scale.CORES} cores)")  # fmt: skip
                print(lines[-1], flush=True)
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        pool.shutdown()
    table = projection(per_slide)
    print(table)
    out = REPO / "benchmarks" / "results" / "link.md"
    out.write_text(
        f"# benchmarks/link.py\n\n`python benchmarks/link.py --link {args.link} --rate-mbps {args.rate_mbps:g} "
        f"--cpu {args.cpu} --repeat {args.repeat}` (the best of each) on {os.cpu_count()} cores, "
        f"`--cores {scale.CORES}`, workflow of {args.workflow}.\n\n"
        + "\n".join(f"    {line}" for line in lines)
        + "\n\n"
        + table
        + "\n"
    )
    return 0


def projection(per_slide: dict[str, tuple[float, float]]) -> str:
    """Core-seconds and bytes per slide at 15 µm/px, and all of TCGA on 16 cores next to the data at 1 GB/s."""
    rows = []
    run_core_s, run_bytes = per_slide.get("40x run", (float("nan"), float("nan")))
    decode40, _ = decode_core_s("40x")
    overhead = run_core_s - decode40  # what a slide costs in the workflow beyond its own decode
    for shape in SHAPES:
        decode, level_bytes = decode_core_s(shape)
        core_s = run_core_s if shape == "40x" else decode + overhead
        slide_bytes = run_bytes if shape == "40x" else level_bytes
        minutes = max(TCGA_SLIDES * slide_bytes / 1e9, TCGA_SLIDES * core_s / 16) / 60
        rows.append({
            "scan": f"{shape}: {SHAPES[shape].base_size_px[0]:,} x {SHAPES[shape].base_size_px[1]:,} px",
            "decode core-s / slide": round(decode, 3),
            "workflow core-s / slide": round(core_s, 3),
            "MB / slide": round(slide_bytes / 1e6, 2),
            "TCGA 30,075 on 16 cores at 1 GB/s (min)": round(minutes, 1),
        })  # fmt: skip
    return pd.DataFrame(rows).to_markdown(index=False)


if __name__ == "__main__":
    sys.exit(main())
