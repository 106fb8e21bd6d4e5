"""The offline demo: build the fixtures, serve them over S3 on loopback, run the workflow.

Usage: python resources/demo/run_demo.py [--cores N] [--gdc | --patches] [--workdir DIR] [--configfile FILE]
       [extra snakemake arguments]

The demo works in a folder of its own (``demo/``, ``demo-gdc/`` for the GDC demo, ``demo-patches/``
with patches), never in the ``results/`` of real runs. With patches, the S3 server is reached
through the test kit's proxy, which answers ranged GETs with 206 as AWS and GCS do (rclone 1.75's
S3 server answers 200 with a Content-Range, which obstore rightly refuses).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
sys.path.insert(0, str(REPO / "testkit"))

from slidestock.state import Stock  # noqa: E402
from slidestock.tell.status import report_is_current, run_lines  # noqa: E402
from slidestock_testkit import faultproxy, fixtures, gdcserver, s3server, svsfiles  # noqa: E402

BUILD = REPO / "resources" / "demo" / "build"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cores", default="2")
    parser.add_argument("--gdc", action="store_true", help="the GDC demo (config/examples/gdc.yaml)")
    parser.add_argument("--patches", action="store_true", help="the demo with patches (config/demo-patches.yaml)")
    parser.add_argument("--workdir", type=Path, help="the demo's folder (default: demo/, demo-gdc/ or demo-patches/)")
    parser.add_argument("--configfile", type=Path, action="append", default=[], help="a config laid over the demo's")
    args, extra = parser.parse_known_args()
    start = time.monotonic()
    print(f"demo: building fixtures in {BUILD.relative_to(REPO)} (reused when present) ...", flush=True)
    fixtures.build(BUILD, progress=lambda said: print(f"demo: {said}", flush=True))
    gdc = svsfiles.build_gdc(BUILD / "gdc")
    names = json.loads(gdc["names"].read_text())
    configs = [REPO / ("config/examples/gdc.yaml" if args.gdc else "config/demo.yaml")]
    configs += [REPO / "config/demo-patches.yaml"] if args.patches else []
    configs += [path.resolve() for path in args.configfile]
    default = REPO / ("demo-gdc" if args.gdc else "demo-patches" if args.patches else "demo")
    workdir = (args.workdir or default).resolve()
    retry = "make demo PATCHES=1" if args.patches else "make demo"
    retry = "python resources/demo/run_demo.py --gdc" if args.gdc else retry
    if args.workdir or args.configfile:  # the same command, with its own folder and configs
        kind = " --gdc" if args.gdc else " --patches" if args.patches else ""
        options = (f" --workdir {args.workdir}" if args.workdir else "") + "".join(
            f" --configfile {path}" for path in args.configfile
        )
        retry = f"python resources/demo/run_demo.py{kind}{options}"
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
        # The retry hint of a failed run names this command, not snakemake's (its endpoint changes each time).
        env = {**os.environ, "SLIDESTOCK_RETRY_COMMAND": retry}
        began = time.time()
        code = run_to_its_end(argv, env)
        if code is None:
            print(f"demo: interrupted; `{retry}` again goes on from where it stopped", file=sys.stderr)
            return 130
    here = workdir.relative_to(REPO) if workdir.is_relative_to(REPO) else workdir
    if code != 0:
        if (workdir / "logs").is_dir():
            said = (
                f"demo: snakemake failed with exit code {code}; see {here}/logs/; `{retry}` again retries what may pass"
            )
        else:  # no job ran: the config, or the workflow's own checks, stopped it
            said = f"demo: snakemake stopped with exit code {code} before any job ran; "
            said += "mend what it says above, then run again"
        print(said, file=sys.stderr)
        return code
    print(f"demo: {time.monotonic() - start:.0f} s in all (fixtures, servers and the workflow)")
    for line in summary_lines(workdir / "results", began, retry):
        print(line)
    stock = Stock.at(workdir / "results")
    current = report_is_current(stock, stock.slide_states())
    print(f"demo: images and provenance in {here}/results/slides/, report "
          + (f"in {here}/results/report/index.html" if current else "not made for this stock yet"))  # fmt: skip
    if args.patches:
        print(patch_summary(workdir / "results" / "patches", here))
    return 0


def run_to_its_end(argv: list[str], env: dict[str, str]) -> int | None:
    """Snakemake's exit code; None when Ctrl-C stopped it.

    Ctrl-C reaches Snakemake too (the terminal's process group): it is left to stop its jobs and release its
    lock, so that the same command runs again. (``subprocess.run`` would kill it at once, leaving the lock and
    its jobs behind, and the servers stopped under them.) A second Ctrl-C, or a minute, ends the wait.
    """
    proc = subprocess.Popen(argv, cwd=REPO, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        try:
            proc.wait(timeout=60)
        except (KeyboardInterrupt, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        return None


def summary_lines(results: Path, began: float, retry: str) -> list[str]:
    """What this run made and what the stock holds, as the workflow's own last lines say it (also for a run that
    had nothing to do, after which Snakemake says nothing)."""
    lines, _ = run_lines(Stock.at(results), began, retry)
    said = []
    for line in lines:
        if line.startswith("slidestock: the stock: "):
            line = line.rsplit("; ", 1)[0]  # where its report is: the demo's own last line says it
        if line.startswith("slidestock: "):
            said.append(line.replace("slidestock: ", "demo: ", 1))
    return said


def patch_summary(folder: Path, here: Path) -> str:
    """One line: the bytes fetched for the stock's patches against their levels' (what reading by range saves)."""
    records = [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]
    done = [r for r in records if r["status"] == "done"]
    fetched = sum(r["bytes_fetched"] for r in done)
    levels = sum(r["level"]["instance_bytes"] for r in done)
    return (
        f"demo: the patches' {fetched:,} bytes fetched by range are {100 * fetched / max(1, levels):.2f} % of "
        f"their levels' {levels:,}; patches in {here}/results/patches/"
    )


if __name__ == "__main__":
    sys.exit(main())
