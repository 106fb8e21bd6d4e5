"""Bytes and time to fetch the demo cohort: one level per slide against whole series.

Usage: python benchmarks/fetch.py [--target-um 15]

Through a local S3 server (rclone serve s3) over the demo's TCGA-shaped
fixtures (levels 0.25, 1, 4, 16 µm), slidestock's fetch (s5cmd cp of the
planned instance of each slide) is timed against what `idc-index download`
does (s5cmd cp of every object of each series). Prints a table and writes it
to benchmarks/results/fetch.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
sys.path.insert(0, str(REPO / "testkit"))

from slidestock.plan.levels import Target  # noqa: E402
from slidestock.plan.planner import plan_frame  # noqa: E402
from slidestock.read.fetch import s5cmd_binary  # noqa: E402
from slidestock.select.cohort import CohortSpec, select_cohort  # noqa: E402
from slidestock.select.lockfile import lock_frame  # noqa: E402
from slidestock.select.sources import TablePaths, connect, instance_levels  # noqa: E402
from slidestock_testkit import fixtures, s3server  # noqa: E402


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def timed(argvs: list[list[str]]) -> float:
    start = time.perf_counter()
    for argv in argvs:
        subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target-um", type=float, default=15.0)
    args = parser.parse_args()
    build = fixtures.build(REPO / "resources" / "demo" / "build")
    tables = TablePaths(build["index"], build["sm_index"], build["sm_instance_index"])
    con = connect(tables)
    lock = lock_frame(select_cohort(con, CohortSpec(filters={"Modality": ["SM"]}), 25), 25)
    plan = plan_frame(lock, instance_levels(con, list(lock["SeriesInstanceUID"])), Target(mpp=args.target_um))
    s5cmd = s5cmd_binary()
    with s3server.serving(build["s3_root"]) as server, tempfile.TemporaryDirectory() as scratch:
        base = [s5cmd, "--no-sign-request", "--endpoint-url", server.url]
        levels_dir, series_dir = Path(scratch) / "levels", Path(scratch) / "series"
        level_argvs = [[*base, "cp", url, f"{levels_dir}/{i}.dcm"] for i, url in enumerate(plan["url"])]
        series_argvs = [
            [*base, "cp", f"s3://{b}/{u}/*", f"{series_dir}/{u}/"]
            for b, u in zip(lock["aws_bucket"], lock["crdc_series_uuid"], strict=True)
        ]
        level_s, series_s = timed(level_argvs), timed(series_argvs)
        level_bytes, series_bytes = folder_bytes(levels_dir), folder_bytes(series_dir)
    lines = [
        f"# fetch: the {len(lock)} demo slides at {args.target_um:g} µm/px, local S3 server",
        "",
        "| fetch | bytes | seconds |",
        "|---|---|---|",
        f"| slidestock (one level per slide) | {level_bytes:,} | {level_s:.2f} |",
        f"| whole series (idc-index download) | {series_bytes:,} | {series_s:.2f} |",
        "",
        f"slidestock moved {100 * level_bytes / series_bytes:.2f} % of the bytes in {100 * level_s / series_s:.0f} % "
        "of the time.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    (REPO / "benchmarks" / "results" / "fetch.md").write_text(text)


if __name__ == "__main__":
    main()
