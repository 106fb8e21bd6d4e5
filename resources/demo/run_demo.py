"""The offline demo: build the fixtures, serve them over S3 on loopback, run the workflow.

Usage: python resources/demo/run_demo.py [--cores N] [--gdc | --patches] [extra snakemake arguments]

The demo works in a folder of its own (``demo/``, ``demo-gdc/`` for the GDC demo, ``demo-patches/``
with patches), never in the ``results/`` of real runs. With patches, the S3 server is reached
through the test kit's proxy, which answers ranged GETs with 206 as AWS and GCS do (rclone 1.75's
S3 server answers 200 with a Content-Range, which obstore rightly refuses).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
sys.path.insert(0, str(REPO / "testkit"))

from slidestock_testkit import faultproxy, fixtures, gdcserver, s3server, svsfiles  # noqa: E402

BUILD = REPO / "resources" / "demo" / "build"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cores", default="2")
    parser.add_argument("--gdc", action="store_true", help="the GDC demo (config/examples/gdc.yaml)")
    parser.add_argument("--patches", action="store_true", help="the demo with patches (config/demo-patches.yaml)")
    args, extra = parser.parse_known_args()
    start = time.monotonic()
    print(f"demo: building fixtures in {BUILD.relative_to(REPO)} (reused when present) ...", flush=True)
    fixtures.build(BUILD, progress=lambda said: print(f"demo: {said}", flush=True))
    gdc = svsfiles.build_gdc(BUILD / "gdc")
    names = json.loads(gdc["names"].read_text())
    configs = [REPO / ("config/examples/gdc.yaml" if args.gdc else "config/demo.yaml")]
    configs += [REPO / "config/demo-patches.yaml"] if args.patches else []
    workdir = REPO / ("demo-gdc" if args.gdc else "demo-patches" if args.patches else "demo")
    workdir.mkdir(exist_ok=True)
    with (
        s3server.serving(BUILD / "s3", log_path=BUILD / "rclone.log") as server,
        gdcserver.serving(gdc["files"], names=names, log_path=BUILD / "gdcserver.log") as gdc_url,
        faultproxy.serving(server.url, BUILD / "proxy.log") as proxied,
    ):
        endpoint = proxied if args.patches else server.url
        print(f"demo: S3 server {endpoint} (rclone pid {server.pid}), GDC server {gdc_url}", flush=True)
        # The servers' addresses, and the fixtures by absolute path (the demo runs in its own folder).
        overlay = BUILD / "endpoint.yaml"
        tables = "".join(f"    {name}: {BUILD / 'tables' / f'{name}.parquet'}\n"
                         for name in ("index", "sm_index", "sm_instance_index"))  # fmt: skip
        manifest = f"  manifest: {gdc['manifest']}\n" if args.gdc else ""
        overlay.write_text(
            f"cohort:\n  tables:\n{tables}{manifest}fetch:\n  endpoint: {endpoint}\ngdc:\n  api: {gdc_url}\n"
        )
        argv = [
            sys.executable, "-m", "snakemake",
            "--snakefile", str(REPO / "Snakefile"),
            "--directory", str(workdir),
            "--cores", args.cores,
            "--configfile", *map(str, configs), str(overlay),
            *extra,
        ]  # fmt: skip
        code = subprocess.run(argv, cwd=REPO, check=False).returncode
    here = workdir.relative_to(REPO)
    if code != 0:
        print(f"demo: snakemake failed with exit code {code}; see {here}/logs/", file=sys.stderr)
        return code
    with open(workdir / "results" / "report" / "slides.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    done = sum(r["status"] == "done" for r in rows)
    fetched = sum(int(r["bytes_fetched"]) for r in rows)
    whole = sum(int(r["series_size_bytes"]) for r in rows)
    print(
        f"demo: {done}/{len(rows)} slides done in {time.monotonic() - start:.0f} s; fetched "
        f"{fetched:,} of {whole:,} series bytes ({100 * fetched / whole:.2f} %)\n"
        f"demo: images and provenance in {here}/results/slides/, report in {here}/results/report/index.html"
    )
    if args.patches:
        print(patch_summary(workdir / "results" / "patches", here))
    return 0


def patch_summary(folder: Path, here: Path) -> str:
    """One line: the patches cut, and the bytes fetched for them against their levels."""
    records = [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]
    done = [r for r in records if r["status"] == "done"]
    fetched = sum(r["bytes_fetched"] for r in done)
    levels = sum(r["level"]["instance_bytes"] for r in done)
    n_patches = sum(len(r["patches"]) for r in done)
    return (
        f"demo: {n_patches} patches from {len(done)}/{len(records)} slides; fetched {fetched:,} of their levels' "
        f"{levels:,} bytes ({100 * fetched / max(1, levels):.2f} %); in {here}/results/patches/"
    )


if __name__ == "__main__":
    sys.exit(main())
