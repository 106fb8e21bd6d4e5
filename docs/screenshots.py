"""Make the README's screenshots of the report: ``python docs/screenshots.py`` (after ``make test`` has installed
Chromium, or ``bash resources/install-browser.sh``).

- ``docs/report-with-failures.png``: the demo with two slides broken on the server (one object missing, one
  frame corrupt), its report at 1280 px wide: the summary, the failures said as they were, the plots.
- ``docs/report-patches.png``: the demo with patches, its report's Patches section.

Both run the workflow as the demo does (fixtures, rclone and the test kit's proxy on loopback).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "workflow" / "scripts"), str(REPO / "testkit"), str(REPO)]

from slidestock_testkit import faultproxy, fixtures, s3server  # noqa: E402
from tests.e2e.runs import demo_tables, snakemake, write_config  # noqa: E402


def run_demo(folder: Path, build: dict[str, Path], root: Path, top: dict[str, object]) -> Path:
    """The demo's workflow over ``root`` (an S3 folder), through the proxy; the report's path."""
    folder.mkdir(parents=True, exist_ok=True)
    with s3server.serving(root) as s3, faultproxy.serving(s3.url, folder / "proxy.log") as url:
        config = write_config(folder / "config.yaml", demo_tables(build), url, top)
        snakemake(folder, config)
    return folder / "results" / "report" / "index.html"


def broken_copy(build: dict[str, Path], folder: Path) -> Path:
    """The demo's objects with one slide's levels missing and another's first frames corrupt (hard links elsewhere)."""
    root = folder / "s3"
    shutil.copytree(build["s3_root"], root, copy_function=os.link)
    series = sorted(p for p in (root / "idc-open-data").iterdir() if p.is_dir())
    for level in series[0].glob("*.dcm"):
        level.unlink()
    for level in series[1].glob("*.dcm"):
        data = bytearray(level.read_bytes())
        start = data.find(b"\xff\xd8\xff")
        data[start : start + 4] = b"\0\0\0\0"
        level.unlink()
        level.write_bytes(bytes(data))
    return root


def screenshot(page: Path, out: Path, height: int, element: str | None = None) -> None:
    """``page`` in headless Chromium, 1280 px wide, from its top (or scrolled to ``element``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", f"--window-size=1280,{height}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver") or ""))
    try:
        driver.get(page.as_uri())
        if element:
            driver.execute_script(f"document.getElementById({element!r}).scrollIntoView();")
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


def main() -> None:
    build = fixtures.build(REPO / "resources" / "demo" / "build")
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        failures = run_demo(folder / "failures", build, broken_copy(build, folder), {})
        screenshot(failures, REPO / "docs" / "report-with-failures.png", 1100)
        top = {"patches": {"enabled": True, "n_per_slide": 16}}
        patches = run_demo(folder / "patches", build, build["s3_root"], top)
        screenshot(patches, REPO / "docs" / "report-patches.png", 1100, "patches-title")
    print("docs/report-with-failures.png, docs/report-patches.png")


if __name__ == "__main__":
    main()
