"""Training reads: planned patches read at random from the archive, against wsidicom reading the same regions.

Usage: python benchmarks/stream.py [--slides 10] [--per-slide 100] [--rate-mbps 100] [--workers 8]
                                   [--block-kb 16,64,256]

Ten TCGA-shaped slides (benchmarks/link.py's: 40,000 x 30,000 px at 0.2527 µm/px, 256-px
JPEG frames without an offset table, dual-personality DICOM-TIFF) are planned by the
workflow, 100 patches of 256 px at 0.5 µm/px each (patches.format png, so each patch's
PNG is there to compare with), served unlimited. Then the same objects are served by
rclone --bwlimit (R Mb/s) behind the test kit's proxy (206 answers; every byte it sends
is counted), and the patches are read in a seeded random order by ``--workers`` threads:

  slidestock  PatchReader on each patches.parquet row: the covered frames by range, decode,
              the workflow's resize; compared with the workflow's PNG, pixel for pixel
  wsidicom    WsiDicom.open of each slide's folder through s3fs (anonymous, the proxy as
              endpoint), read_region of the same level pixels, the same resize; at each
              --block-kb (s3fs's default_block_size), its best kept

The covered frames' bytes are each distinct frame the patches touch, once. Prints a table,
writes benchmarks/results/stream.md (stream-w{N}.md for other --workers), and ends with
  stream: N patches, P patches/s, W x wsidicom's rate, F x the covered frames' bytes, D differing
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
sys.path.insert(0, str(REPO / "testkit"))

import link  # noqa: E402  (benchmarks/link.py: the TCGA-shaped slides)
import scale  # noqa: E402  (benchmarks/scale.py: the config and the run)

from slidestock.image.reduce import resize_exact  # noqa: E402
from slidestock.train.reader import PatchReader  # noqa: E402
from slidestock_testkit import faultproxy, s3server, slides  # noqa: E402

WORK = REPO / "benchmarks" / "work" / "stream"
SEED = 7


def plan_patches(folder: Path, tables: dict[str, Path], s3_root: Path, per_slide: int) -> pd.DataFrame:
    """The workflow's run with patches (PNG files): its patches.parquet, in cohort order."""
    with s3server.serving(s3_root) as server, faultproxy.serving(server.url, folder / "setup-proxy.log") as url:
        config = scale.write_config(folder, tables, url)
        settings = yaml.safe_load(config.read_text())
        settings["patches"] = {"enabled": True, "mpp": 0.5, "size_px": 256, "n_per_slide": per_slide,
                               "mode": "random", "min_tissue": 0.5, "format": "png"}  # fmt: skip
        config.write_text(yaml.safe_dump(settings))
        started = time.perf_counter()
        scale.measured(scale.snakemake(config), folder)
        print(f"stream: the workflow planned and cut the patches in {time.perf_counter() - started:.0f} s", flush=True)
    return pd.read_parquet(folder / "results/patches/patches.parquet")


def timed(read: Callable[[dict[str, Any]], np.ndarray], rows: Sequence[dict[str, Any]], workers: int):
    """Every row read by ``workers`` threads in the rows' order: the arrays and the wall seconds."""
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        arrays = list(pool.map(read, rows))
    return arrays, time.perf_counter() - started


def sent_since(log: Path, mark: int) -> int:
    """Body bytes the proxy sent after the log's first ``mark`` bytes."""
    text = log.read_bytes()[mark:].decode()
    return sum(int(line.split(" ")[3]) for line in text.splitlines() if line.startswith("sent "))


def warm(url: str, s3_root: Path) -> None:
    """One byte of every object, before any timing: rclone hashes an object on its first access."""
    for path in sorted(s3_root.rglob("*.dcm")):
        key = path.relative_to(s3_root).as_posix()
        request = urllib.request.Request(f"{url}/{key}", headers={"Range": "bytes=0-0"})
        with urllib.request.urlopen(request, timeout=600) as answer:
            answer.read()


def wsidicom_reader(url: str, block: int, series: dict[str, str]) -> tuple[Callable[[dict[str, Any]], np.ndarray], Any]:
    """A read of a row's region with wsidicom (one WsiDicom per slide, opened as the row first needs it)."""
    from wsidicom import WsiDicom

    options = {"anon": True, "client_kwargs": {"endpoint_url": url}, "default_block_size": block}
    opened: dict[str, Any] = {}

    def read(row: dict[str, Any]) -> np.ndarray:
        slide = row["slide_id"]
        if slide not in opened:  # threads may open one twice; the first kept
            opened.setdefault(slide, WsiDicom.open(f"s3://{slides.BUCKET}/{series[slide]}/", file_options=options))
        wsi = opened[slide]
        span = 256 * 0.5 / row["level_spacing_um"]
        crop = math.ceil(span - 1e-9)
        level = next(k for k, lv in enumerate(wsi.levels) if lv.size.width == row["level_columns"])
        region = wsi.read_region((row["x_level_px"], row["y_level_px"]), level, (crop, crop))
        array = np.asarray(region.convert("RGB"))
        resized: np.ndarray = resize_exact(array, (256, 256), (span, span)).numpy()
        return resized

    return read, opened


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slides", type=int, default=10)
    parser.add_argument("--per-slide", type=int, default=100)
    parser.add_argument("--rate-mbps", type=float, default=100.0)
    parser.add_argument("--workers", type=int, default=8, help="threads reading patches (a DataLoader's workers)")
    parser.add_argument("--block-kb", default="16,64,256", help="s3fs block sizes tried for wsidicom")
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    tables, s3_root = link.cohort(args.slides, WORK, "40x")
    table = plan_patches(WORK, tables, s3_root, args.per_slide)
    rows = table.to_dict("records")
    random.Random(SEED).shuffle(rows)
    instances = pd.read_csv(WORK / "results/cohort/patch_instances.tsv", sep="\t")
    series = {row.slide_id: row.url.removeprefix("s3://").split("/")[1] for row in instances.itertuples()}
    frames = {(row["url"], f[2], f[3]) for row in rows for f in json.loads(row["frames"])}
    covered = sum(length for *_, length in frames)
    rate = args.rate_mbps * 1e6 / 8
    log = WORK / "proxy.log"
    results: list[tuple[str, float, int]] = []
    with s3server.serving(s3_root, bwlimit=f"{rate:.0f}B") as server, faultproxy.serving(server.url, log) as url:
        warm(server.url, s3_root)
        mark = log.stat().st_size if log.exists() else 0
        reader = PatchReader(url, attempts=2, parallel=8)
        arrays, seconds = timed(reader.read, rows, args.workers)
        results.append(("slidestock", seconds, sent_since(log, mark)))
        differing = 0
        for row, array in zip(rows, arrays, strict=True):
            with Image.open(WORK / "results/patches" / row["path"]) as png:
                differing += not np.array_equal(array, np.asarray(png.convert("RGB")))
        for kb in (int(k) for k in args.block_kb.split(",") if k):
            mark = log.stat().st_size
            read, _ = wsidicom_reader(url, kb << 10, series)
            _, seconds = timed(read, rows, args.workers)
            results.append((f"wsidicom, s3fs blocks of {kb} KB", seconds, sent_since(log, mark)))
    n = len(rows)
    ours = results[0]
    best = min(results[1:], key=lambda r: r[1])
    lines = [
        "| reader | seconds | patches/s | MB sent | x covered frames' bytes |",
        "|---|---|---|---|---|",
        *(f"| {name} | {s:.1f} | {n / s:.1f} | {b / 1e6:.1f} | {b / covered:.3f} |" for name, s, b in results),
    ]
    last = (
        f"stream: {n} patches, {n / ours[1]:.1f} patches/s, {best[1] / ours[1]:.2f} x wsidicom's rate, "
        f"{ours[2] / covered:.3f} x the covered frames' bytes, {differing} differing"
    )
    print("\n".join(lines))
    print(last)
    name = "stream.md" if args.workers == 8 else f"stream-w{args.workers}.md"
    (REPO / "benchmarks" / "results" / name).write_text(
        f"# benchmarks/stream.py\n\n`python benchmarks/stream.py --slides {args.slides} --per-slide {args.per_slide} "
        f"--rate-mbps {args.rate_mbps:g} --workers {args.workers} --block-kb {args.block_kb}` on {os.cpu_count()} "
        f"cores: {n} patches in a seeded random order across {args.slides} slides, {args.workers} threads, "
        f"through {args.rate_mbps:g} Mb/s; the covered frames hold {covered / 1e6:.1f} MB "
        f"({len(frames):,} frames, a link floor of {covered / rate:.1f} s).\n\n"
        + "\n".join(lines)
        + f"\n\n    {last}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
