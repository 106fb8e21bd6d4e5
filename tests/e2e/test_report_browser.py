"""The report in a real headless browser (Debian chromium), and Snakemake's own report.

The page must load offline, show every slide in its table, filter and sort it
with its own script, and display every thumbnail.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from slidestock_testkit.s3server import S3Server
from tests.e2e.runs import REPO, Run, demo_tables, run_in, snakemake, write_config

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, demo_build: dict[str, Path], s3: S3Server) -> Run:
    return run_in(tmp_path_factory.mktemp("report"), demo_tables(demo_build), s3)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("chromium and chromium-driver are not installed (resources/install-browser.sh installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for drivers online
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
        "--window-size=1400,3000", f"--user-data-dir={tmp_path / 'profile'}",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def test_report_works_in_a_real_browser(run: Run, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    page = run.workdir / "results/report/index.html"
    driver.get(page.as_uri())
    report = pd.read_csv(run.workdir / "results/report/slides.csv")

    rows = driver.find_elements(By.CSS_SELECTOR, "#slides tbody tr")
    assert sorted(r.find_elements(By.TAG_NAME, "td")[0].text for r in rows) == sorted(report["slide_id"])
    assert driver.find_element(By.ID, "summary").text.startswith("6 of 6 slides done, 0 failed")

    images = driver.execute_script(
        "return Array.from(document.querySelectorAll('#sheet img')).map(i => [i.complete, i.naturalWidth]);"
    )
    assert len(images) == 6
    assert all(complete and width > 0 for complete, width in images)
    assert len(driver.find_elements(By.CSS_SELECTOR, ".plots svg")) == 4
    assert_plot_labels_fit(driver)

    box = driver.find_element(By.ID, "filter")
    box.send_keys("A005")
    shown = [r for r in driver.find_elements(By.CSS_SELECTOR, "#slides tbody tr") if r.is_displayed()]
    assert [r.find_elements(By.TAG_NAME, "td")[0].text for r in shown] == [s for s in report["slide_id"] if "A005" in s]
    assert driver.find_element(By.ID, "shown").text == "1"
    box.send_keys(Keys.BACKSPACE * len("A005"))
    assert driver.find_element(By.ID, "shown").text == "6"

    headers = driver.find_elements(By.CSS_SELECTOR, "#slides th")
    column = [h.text for h in headers].index("output px")
    header = headers[column]
    pixels = sorted(report["output_columns"] * report["output_rows"])

    def shown_pixels() -> list[int]:
        cells = [
            r.find_elements(By.TAG_NAME, "td")[column]
            for r in driver.find_elements(By.CSS_SELECTOR, "#slides tbody tr")
        ]
        assert all(" x " in cell.text for cell in cells)  # "137 x 103", sorted by its pixel count
        return [int(cell.get_attribute("data-value")) for cell in cells]

    header.click()
    assert shown_pixels() == pixels
    header.click()
    assert shown_pixels() == pixels[::-1]

    shot = run.workdir / "results/report/screenshot.png"
    assert driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 20_000


TABLE_RIGHT_EDGES = """
const right = (el) => Math.round(el.getBoundingClientRect().right);
const heads = Array.from(document.querySelectorAll('#slides thead th'));
return [document.documentElement.clientWidth, right(document.getElementById('slides')),
        Object.fromEntries(heads.map((th) => [th.textContent, right(th)]))];
"""


def test_the_slide_table_fits_a_1280_px_window_with_a_failure(run: Run, browser: Any, tmp_path: Path) -> None:
    """Observed: the table was 1,541 px wide in a 1,280 px window: its error and file-link columns cut off."""
    from slidestock.select.lockfile import read_lock
    from slidestock.tell.report import ReportInputs, render_html
    from slidestock.tell.slidetable import report_frame

    records = [json.loads(p.read_text()) for p in sorted((run.workdir / "results/slides").glob("*.json"))]
    first = records[0]
    # The longest reason the tool gives: a missing object, with its URL and what to do.
    first.update(status="failed", retryable=False, output=None, error=(
        f"{first['slide_id']}: {first['source']['url']}: not found at aws: the index names an object the bucket "
        "does not hold; a re-run will not fetch it. Check cohort.idc_version (the index and the bucket disagree), "
        "or report the object to IDC (https://discourse.canceridc.dev)"))  # fmt: skip
    frame = report_frame(records, read_lock(run.workdir / "results/cohort/cohort.tsv"))
    page = run.workdir / "results/report/with-a-failure.html"
    page.write_text(render_html(frame, ReportInputs("25", "SELECT 1", {}, {}, None), {}))
    browser.set_window_size(1280, 900)
    for shown in (run.workdir / "results/report/index.html", page):
        browser.get(shown.as_uri())
        window, table, heads = browser.execute_script(TABLE_RIGHT_EDGES)
        assert table <= window, (shown.name, table, window)
        assert heads["error"] <= heads["files"] <= window, heads


PLOT_TEXT_BOXES = """
return Array.from(document.querySelectorAll('.plots svg')).map(svg => {
  const box = svg.getBoundingClientRect();
  const texts = Array.from(svg.querySelectorAll('text')).filter(t => t.textContent.trim())
    .map(t => { const r = t.getBoundingClientRect();
                return [t.textContent.trim(), r.left, r.top, r.right, r.bottom]; });
  return [[box.left, box.top, box.right, box.bottom], texts];
});
"""


def assert_plot_labels_fit(driver: Any) -> None:
    """Every label of every plot lies inside its plot as the browser draws it, and none overlap."""
    for (left, top, right, bottom), texts in driver.execute_script(PLOT_TEXT_BOXES):
        assert len(texts) >= 5  # a title, two axis labels and ticks
        inside = [left - 0.5, top - 0.5, right + 0.5, bottom + 0.5]
        for text, *box in texts:
            clipped = [box[0] < inside[0], box[1] < inside[1], box[2] > inside[2], box[3] > inside[3]]
            assert not any(clipped), f"{text!r} clipped: {box} outside {inside}"
        for i, (a, *one) in enumerate(texts):
            for b, *other in texts[i + 1 :]:
                overlap_x = min(one[2], other[2]) - max(one[0], other[0])
                overlap_y = min(one[3], other[3]) - max(one[1], other[1])
                assert overlap_x <= 0.5 or overlap_y <= 0.5, f"{a!r} overlaps {b!r}"


def test_plot_labels_fit_at_the_edges(browser: Any, tmp_path: Path) -> None:
    """Plots drawn for awkward data keep their labels inside and apart in a real browser: a first x tick at the
    spine, ticks a hundred-thousandth apart, a range within one decade, long collection names, 40 collections."""
    from slidestock.tell import plots

    svgs = [
        plots.scatter_log("Bytes fetched per slide", "whole series (bytes)", "fetched (bytes)", [2e5, 3e9], [1e5, 4e8]),
        plots.scatter_log("One decade", "whole", "fetched", [3.0e5, 3.2e5], [3.0e5, 3.1e5]),
        plots.histogram("Close values", "µm per pixel", [3.2222, 3.2222, 3.2223]),
        plots.histogram("One value", "µm per pixel", [15.0] * 20),
        plots.histogram("Sizes", "long side (pixels)", [640, 12_000, 99_999, 1_234]),
        plots.bars("Long names", ["TCGA-LUAD-WWWWMMMM", "cptac_ccrcc", "x"], [1_200, 40, 1]),
        plots.bars("Many collections", [f"collection_{i:02d}" for i in range(40)], list(range(40))),
    ]
    page = tmp_path / "plots.html"
    page.write_text('<html><body><div class="plots">' + "".join(svgs) + "</div></body></html>")
    browser.get(page.as_uri())
    assert len(browser.execute_script(PLOT_TEXT_BOXES)) == len(svgs)
    assert_plot_labels_fit(browser)


def test_snakemake_report_zip_has_captions_plots_and_sheet(run: Run) -> None:
    proc = snakemake(run.workdir, run.config, "--report", "report.zip")
    assert proc.returncode == 0, proc.stderr[-2000:]
    with zipfile.ZipFile(run.workdir / "report.zip") as archive:
        names = archive.namelist()
    for part in (
        "slides.csv",
        "cohort.tsv",
        "bytes.svg",
        "spacing.svg",
        "size.svg",
        "collections.svg",
        "contact_sheet.png",
    ):
        assert any(name.endswith(part) for name in names), part


def results_state(workdir: Path) -> dict[str, tuple[int, int]]:
    """Every file a run left under results/: size and modification time."""
    return {
        str(path.relative_to(workdir)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted((workdir / "results").rglob("*"))
        if path.is_file()
    }


def test_snakemake_report_with_another_config_packs_what_the_run_left(run: Run, tmp_path: Path) -> None:
    """The real config (other tables, an unreachable endpoint) or a changed target: nothing runs or changes."""
    before = results_state(run.workdir)
    config = yaml.safe_load(run.config.read_text())
    config["target"]["mpp"] = 20.0
    changed = tmp_path / "target20.yaml"
    changed.write_text(yaml.safe_dump(config))
    for other in (REPO / "config" / "config.yaml", changed):
        archive_path = tmp_path / f"{other.stem}.zip"
        proc = snakemake(run.workdir, other, "--report", str(archive_path))
        assert proc.returncode == 0, proc.stderr[-2000:]
        with zipfile.ZipFile(archive_path) as archive:
            packed = {Path(name).name: archive.read(name) for name in archive.namelist()}
        assert packed["slides.csv"] == (run.workdir / "results/report/slides.csv").read_bytes()
        assert packed["cohort.tsv"] == (run.workdir / "results/cohort/cohort.tsv").read_bytes()
        assert results_state(run.workdir) == before


def test_verify_passes_then_catches_a_changed_image(run: Run) -> None:
    proc = snakemake(run.workdir, run.config, "verify")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = "verify: 6 images match their records, 0 do not; 0 files in the stock's folders are not of it"
    assert summary in proc.stderr.splitlines()
    image = sorted((run.workdir / "results/slides").glob("*.png"))[0]
    original = image.read_bytes()
    stray = run.workdir / "results/slides" / f"{image.stem}.webp"
    try:
        image.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        stray.write_bytes(b"an old format's image")
        proc = snakemake(run.workdir, run.config, "verify")
        assert proc.returncode != 0
        # One plain line names the slide and what is wrong; no traceback (observed: the slide inside one).
        [line] = [line for line in proc.stderr.splitlines() if line.startswith(f"verify: {image.stem}:")]
        assert line.startswith(f"verify: {image.stem}: results/slides/{image.name}: sha256 ")
        assert line.endswith(f"; 1 paths not of this stock (e.g. results/slides/{stray.name}): a run moves them "
                             "to results/stale/")  # fmt: skip
        assert "Traceback" not in proc.stderr
        assert "SlidestockError" not in proc.stderr
    finally:
        image.write_bytes(original)
        stray.unlink()


def test_verify_reads_what_a_run_left_whichever_config(run: Run, tmp_path: Path) -> None:
    # As README says it, after the demo: `snakemake verify` with the real config (other tables, the
    # real endpoint, unreachable here). Nothing may run first, and the lock file must stay as it is.
    lock = run.workdir / "results/cohort/cohort.tsv"
    before = (lock.read_bytes(), lock.stat().st_mtime_ns)
    proc = snakemake(run.workdir, REPO / "config" / "config.yaml", "verify")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "verify: 6 images match their records, 0 do not; 0 files in the stock's folders are not of it" in proc.stderr
    assert (lock.read_bytes(), lock.stat().st_mtime_ns) == before
    assert "rule cohort" not in proc.stdout + proc.stderr
    empty = tmp_path / "nothing"
    empty.mkdir()
    proc = snakemake(empty, run.config, "verify")
    assert proc.returncode != 0
    assert "verify: results/cohort/instances.tsv not found: no plan yet; expected the results of a run" in proc.stderr


def test_a_failed_reselection_keeps_the_lock_file(run: Run, tmp_path: Path, demo_build: dict[str, Path]) -> None:
    # A copy of the finished run, then the same folder with a filter that selects nothing: the
    # cohort step fails, and the lock file is there again, as it was.
    folder = tmp_path / "copy"
    shutil.copytree(run.workdir, folder, symlinks=True)
    lock = folder / "results/cohort/cohort.tsv"
    before = lock.read_bytes()
    config = write_config(tmp_path / "typo.yaml", demo_tables(demo_build), "http://127.0.0.1:9",
                          filter={"collection_id": ["demo_brac"]})  # fmt: skip
    proc = snakemake(folder, config)
    assert proc.returncode != 0
    assert (
        "cohort.filter: collection_id='demo_brac' matches no series of IDC v25 (did you mean demo_brca" in proc.stderr
    )
    assert "slidestock: the cohort step failed; results/cohort/cohort.tsv is the previous one again" in proc.stderr
    assert lock.read_bytes() == before
    assert (folder / "results/cohort/cohort.previous.tsv").read_bytes() == before
