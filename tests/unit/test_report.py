"""Report rows, tables, plots and the HTML page."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from slidestock.image.thumbnails import contact_sheet, thumbnails
from slidestock.select.lockfile import read_lock_header
from slidestock.tell import plots
from slidestock.tell.report import ReportInputs, render_html
from slidestock.tell.slidetable import report_frame, run_date, summary, write_tables


def record(slide: str, status: str, fetched: int, error: str | None = None) -> dict[str, Any]:
    done = status == "done"
    return {
        "slide_id": slide,
        "status": status,
        "error": error,
        "source": {"SeriesInstanceUID": f"1.2.{slide}"},
        "series_size_bytes": 1_000_000,
        "bytes_fetched": fetched,
        "level": {"size_px": [500, 400], "header_spacing_um": [4.0, 4.0], "reason": "why"},
        "output": {"size_px": [133, 107], "spacing_um": [15.04, 14.95], "path": "x.png", "sha256": "ab", "bytes": 9}
        if done
        else None,
    }


COHORT = pd.DataFrame(
    {
        "slide_id": ["a", "b"],
        "collection_id": ["c1", "c2"],
        "PatientID": ["p1", "p2"],
        "source_DOI": ["10.1/x", "10.1/y"],
        "license_short_name": ["CC BY 4.0", "CC BY 4.0"],
        "fetch_from": ["idc", "idc"],
    }
)


def test_rows_flatten_records_and_sort() -> None:
    frame = report_frame([record("b", "done", 3000), record("a", "failed", 0, "no level")], COHORT)
    assert frame["slide_id"].tolist() == ["a", "b"]
    done = frame.iloc[1]
    assert done["collection_id"] == "c2"
    assert done["scale"] == 0.266
    assert done["fraction_fetched"] == 0.003
    assert done["output_spacing_um"] == 15.04
    assert done["log_path"] == "logs/slide/b.log"
    assert frame.iloc[0]["error"] == "no level"
    assert pd.isna(frame.iloc[0]["output_columns"])
    assert summary(frame) == {
        "slides": 2,
        "done": 1,
        "failed": 1,
        "not_made": 0,
        "bytes_fetched": 3000,
        "series_bytes": 2_000_000,
        "fraction_fetched": 0.0015,
    }


def test_parquet_has_typed_columns_and_tables_are_deterministic(tmp_path: Path) -> None:
    frame = report_frame([record("b", "done", 3000), record("a", "failed", 0, "no level")], COHORT)
    write_tables(frame, tmp_path / "1.csv", tmp_path / "1.parquet")
    write_tables(frame, tmp_path / "2.csv", tmp_path / "2.parquet")
    schema = pq.read_schema(tmp_path / "1.parquet")
    assert str(schema.field("bytes_fetched").type) == "int64"
    assert str(schema.field("output_spacing_um").type) == "double"
    assert str(schema.field("slide_id").type) in ("string", "large_string")
    assert (tmp_path / "1.parquet").read_bytes() == (tmp_path / "2.parquet").read_bytes()
    back = pd.read_parquet(tmp_path / "1.parquet")
    assert back["bytes_fetched"].tolist() == [0, 3000]


def inputs(query: str = "SELECT 1") -> ReportInputs:
    return ReportInputs("25", query, {"source": "idc", "n": "2", "seed": "1"}, {"libvips": "8.18.7"}, 12.5)


def test_html_escapes_every_metadata_string() -> None:
    hostile = '<script>alert("x")</script>'
    cohort = COHORT.assign(collection_id=[hostile, hostile], source_DOI=[hostile, hostile])
    frame = report_frame([record("a", "failed", 0, hostile)], cohort)
    page = render_html(frame, inputs(hostile), plots_of(frame))
    assert "<script>alert" not in page
    assert page.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;") >= 4
    assert "0 of 1 slides done, 1 failed" in page
    assert "logs/slide/a.log" in page


def plots_of(frame: pd.DataFrame) -> dict[str, str]:
    return {"bars": plots.bars("Slides per collection", list(frame["collection_id"]), [1] * len(frame))}


def test_page_has_every_section() -> None:
    frame = report_frame([record("b", "done", 3000), record("a", "failed", 0, "no level")], COHORT)
    page = render_html(frame, inputs(), plots_of(frame))
    for anchor in ('id="summary"', 'id="sheet"', 'id="slides"', 'id="failures"', 'id="citations"', 'id="software"'):
        assert anchor in page
    assert "https://doi.org/10.1/y" in page
    assert "12.5 s" in page
    assert "https://doi.org/10.1148/rg.230180" in page


def test_contact_sheets_show_at_most_sheet_max_slides_and_say_so(tmp_path: Path) -> None:
    import base64
    import re

    import pyvips

    records, slides = [], []
    for i in range(5):
        path = tmp_path / f"s{i}.png"
        pyvips.Image.black(300, 200, bands=3).new_from_image([40 * i, 0, 0]).pngsave(str(path))
        row = record(f"s{i}", "done", 100)
        row["output"].update(size_px=[300, 200], path=str(path))
        records.append(row)
        slides.append({"slide_id": f"s{i}", "collection_id": "c", "PatientID": f"p{i}"})
    frame = report_frame(records, pd.DataFrame(slides))

    def sheet_of(page: str) -> list[tuple[str, str]]:
        section = page[page.index('id="sheet"') : page.index('id="slides"')]
        return re.findall(r'alt="([^"]+)" src="data:image/jpeg;base64,([^"]+)"', section)

    capped = render_html(frame, replace(inputs(), sheet_max=2), plots_of(frame))
    shown = sheet_of(capped)
    assert [alt for alt, _ in shown] == ["s0", "s1"]
    thumb = pyvips.Image.new_from_buffer(base64.b64decode(shown[1][1]), "")
    assert (thumb.width, thumb.height) == (160, 107)
    assert abs(thumb.avg() - 40 / 3) < 1  # s1 is (40, 0, 0)
    assert "The first 2 of 5 finished slides" in capped
    assert capped.count("<tr ") == 5  # the table still lists every slide

    whole = render_html(frame, inputs(), plots_of(frame))
    assert [alt for alt, _ in sheet_of(whole)] == ["s0", "s1", "s2", "s3", "s4"]
    assert 'id="sheet-note"' not in whole

    contact_sheet([Path(r["output"]["path"]) for r in records[:3]], tmp_path / "sheet.png")
    sheet = pyvips.Image.new_from_file(str(tmp_path / "sheet.png"))
    assert (sheet.width, sheet.height, sheet.bands) == (3 * 136, 136, 3)

    # The rule makes each thumbnail once, on threads, for the page and the sheet: the same page and sheet.
    paths = [Path(r["output"]["path"]) for r in records]
    made = thumbnails(paths, threads=2)
    assert [(made[p].width, made[p].height) for p in paths] == [(160, 107)] * 5
    assert render_html(frame, inputs(), plots_of(frame), made) == whole
    contact_sheet(paths[:3], tmp_path / "from_made.png", made=made)
    again = pyvips.Image.new_from_file(str(tmp_path / "from_made.png"))
    assert (again.width, again.height, again.bands) == (3 * 136, 136, 3)
    assert abs(again.avg() - sheet.avg()) < 3  # the same pictures, resized once more


SVG = "{http://www.w3.org/2000/svg}"


def tick_labels(svg: str, axis: str) -> list[str]:
    """The text of each tick label of ``axis`` ("x" or "y") in a plot's SVG."""
    root = ElementTree.fromstring(svg)
    ticks = [g for g in root.iter(f"{SVG}g") if g.get("class") == f"{axis}tick"]
    return [(text.text or "").strip() for tick in ticks for text in tick.iter(f"{SVG}text")]


def test_plots_are_deterministic_svg_with_text_labels() -> None:
    first = plots.scatter_log("t", "x", "y", [1e6, 2e7], [3e4, 5e5])
    assert first == plots.scatter_log("t", "x", "y", [1e6, 2e7], [3e4, 5e5])
    assert first.startswith("<svg")
    assert first.rstrip().endswith("</svg>")
    assert "no data" in plots.histogram("h", "x", [])


def test_count_axes_have_integer_ticks() -> None:
    """Three slides in two bins once gave ticks at 0.75 slides."""
    counts = tick_labels(plots.histogram("h", "x", [1.0, 2.0, 2.0], bins=2), "y")
    assert counts
    assert all(re.fullmatch(r"\d+", label) for label in counts), counts
    assert counts[0] == "0"
    assert int(counts[-1]) >= 2
    bar_counts = tick_labels(plots.bars("b", ["a", "b"], [1, 3]), "x")
    assert bar_counts
    assert all(re.fullmatch(r"\d+", label) for label in bar_counts), bar_counts


def test_value_axes_read_without_exponents() -> None:
    """Observed before: 4.567e+06 on a byte axis and a clipped 3.222e+0 on the spacing axis."""
    scatter = plots.scatter_log("t", "x", "y", [1e6, 2e7, 4.567e6], [3e4, 5e5, 1e5])
    assert tick_labels(scatter, "x") == ["100 kB", "1 MB", "10 MB"]
    spacing = tick_labels(plots.histogram("s", "µm per pixel", [3.2222, 3.2222, 3.2223]), "x")
    assert len(set(spacing)) == len(spacing) >= 3, spacing  # distinct, each readable
    assert not [label for label in spacing + tick_labels(scatter, "y") if "e+" in label or "e-" in label]
    assert plots.byte_label(4.567e6) == "4.57 MB"
    assert plots.byte_label(512) == "512 B"


def test_plots_draw_their_data_to_scale() -> None:
    """Bars as tall or as long as their counts, one dot per slide with bytes on both axes."""
    heights = [
        float(r.get("height", 0))
        for r in ElementTree.fromstring(plots.histogram("h", "x", [1.0, 2.0, 2.0], bins=2)).iter(f"{SVG}rect")
    ]
    assert len(heights) == 2
    assert heights[1] == pytest.approx(2 * heights[0], abs=0.2)
    widths = [
        float(r.get("width", 0))
        for r in ElementTree.fromstring(plots.bars("b", ["a", "b", "c"], [5, 10, 20])).iter(f"{SVG}rect")
    ]
    assert widths[0] == pytest.approx(2 * widths[1], abs=0.2)
    assert widths[0] == pytest.approx(4 * widths[2], abs=0.4)
    dots = list(
        ElementTree.fromstring(plots.scatter_log("t", "x", "y", [1e6, 2e7, 0.0], [3e4, 5e5, 1e5])).iter(f"{SVG}circle")
    )
    assert len(dots) == 2  # the slide with no series size is left out
    assert float(dots[0].get("cx", 0)) < float(dots[1].get("cx", 0))
    assert float(dots[0].get("cy", 0)) > float(dots[1].get("cy", 0))  # more bytes fetched: higher


def test_many_collections_are_summed_beyond_the_cap() -> None:
    svg = plots.bars("b", [f"c{i:02d}" for i in range(40)], list(range(40)))
    labels = tick_labels(svg, "y")
    assert len(labels) == plots.MAX_BARS
    assert labels[0] == "c39"
    assert labels[-1] == f"{40 - plots.MAX_BARS + 1} others"


def test_lock_header_joins_continuation_lines(tmp_path: Path) -> None:
    path = tmp_path / "cohort.tsv"
    path.write_text("# seed: 4\n# query: SELECT *\n#   FROM x\nslide_id\tb\n1\t2\n")
    assert read_lock_header(path) == {"seed": "4", "query": "SELECT *\nFROM x"}


def test_a_failed_slide_leaves_no_image_or_side_files(tmp_path: Path) -> None:
    from slidestock.jobs.slide import SIDE_FILES, SlideJob
    from slidestock.jobs.stock import run_batch
    from slidestock.plan.levels import Target
    from slidestock.plan.rows import PLAN_COLUMNS, PlanRow
    from slidestock.settings import StockSettings

    image = tmp_path / "s1.png"
    stale = [image, *(tmp_path / f"s1.{name}.png" for name in SIDE_FILES)]
    for path in stale:
        path.write_bytes(b"from an earlier run")
    plan = dict.fromkeys(PLAN_COLUMNS, "")
    plan.update(slide_id="s1", status="failed", reason="s1: no VOLUME instance", SeriesInstanceUID="1.2")
    settings = StockSettings(Target(mpp=15.0))
    job = SlideJob(PlanRow.from_columns(plan), settings, "aws", 1, image, tmp_path / "s1.json", tmp_path / "scratch")
    [record] = run_batch([job], "b00000", tmp_path / "scratch")
    assert json.loads((tmp_path / "s1.json").read_text()) == record
    assert record["status"] == "failed"
    assert record["error"] == "s1: no VOLUME instance"
    assert [p for p in stale if p.exists()] == []


def test_batch_table_has_one_line_per_slide_with_hash_or_reason(tmp_path: Path) -> None:
    from slidestock.jobs.stock import write_batch_table

    done = record("a", "done", 10)
    failed = {**record("b", "failed", 0, "b: frame 3 cannot be decoded\n(broken data)"), "retryable": False}
    busy = {**record("c", "failed", 0, "c: s3://x: 3 attempts failed; last: HTTP 503"), "retryable": True}
    paths = []
    for rec in (done, failed, busy):
        paths.append(tmp_path / f"{rec['slide_id']}.json")
        paths[-1].write_text(json.dumps(rec))
    # One slide may pass on a re-run.
    assert write_batch_table(paths, tmp_path / "b00000.tsv") == 1
    assert (tmp_path / "b00000.tsv").read_text() == (
        "slide_id\tstatus\tsha256_or_error\tretryable\n"
        "a\tdone\tab\t\n"
        "b\tfailed\tb: frame 3 cannot be decoded (broken data)\tfalse\n"
        "c\tfailed\tc: s3://x: 3 attempts failed; last: HTTP 503\ttrue\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json", "b00000.tsv", "c.json"]  # no temp left


def test_page_says_the_target_date_config_links_each_slide_and_groups_failures() -> None:
    cohort = pd.DataFrame({**{k: [*v, v[0], v[0]] for k, v in COHORT.to_dict("list").items()},
                           "slide_id": ["a", "b", "c", "d"]})  # fmt: skip
    failures = [
        {**record(s, "failed", 0, f"{s}: s3://b/{s}.dcm: 3 attempts failed; last: HTTP 503"), "retryable": True}
        for s in ("a", "c")
    ]
    broken = {**record("d", "failed", 0, "d: frame 7 cannot be decoded (broken)"), "retryable": False}
    records = [*failures, broken, {**record("b", "done", 3000), "started_at": "2026-11-30T10:00:00+00:00"}]
    frame = report_frame(records, cohort)
    inputs = ReportInputs(
        "25", "SELECT 1", {}, {}, None, target={"mpp": 8.0, "format": "png", "backend": "pyvips"},
        config_files=["config/config.yaml"], run_date=run_date(records),
    )  # fmt: skip
    page = render_html(frame, inputs, {})
    assert "<dt>target</dt><dd>8 µm/px, png, backend pyvips</dd>" in page
    assert "<dt>run date</dt><dd>2026-11-30T10:00:00+00:00</dd>" in page
    assert "<dt>config</dt><dd>config/config.yaml</dd>" in page
    assert '<a href="../slides/x.png">image</a> <a href="../slides/b.json">json</a>' in page
    assert '<a href="../../logs/slide/d.log">log</a>' in page
    failures_part = page.split('<ul id="failures">')[1].split("</ul>")[0]
    assert failures_part.count("<li>") == 2  # two reasons, not three slides
    # Alike but for their URLs: grouped, and the first shown as it was said, numbers and all.
    assert "<b>2 x</b> a: s3://b/a.dcm: 3 attempts failed; last: HTTP 503 (and 1 alike)" in failures_part
    assert "running the same snakemake command again retries these" in failures_part
    assert "<b>1 x</b> d: frame 7 cannot be decoded (broken)" in failures_part
    assert "permanent: not tried again unless <code>fetch.redo_failed: true</code>" in failures_part
    # Read first: the failures come before the plots and the table, whose error cells stay one line.
    assert page.index('id="failures"') < page.index('id="plots-title"') < page.index('id="slides"')
    assert '<td class="error" title="d: frame 7 cannot be decoded (broken)">d: frame 7 cannot be decoded' in page


@pytest.mark.slow
def test_thumbnails_are_made_of_an_output_of_any_size(tmp_path: Path) -> None:
    """Observed: a one-level slide at 0.3 µm/px gave an 851 MP output, and the report stopped on it
    (`PIL.Image.DecompressionBombError`). A 360 MP PNG (past Pillow's limit twice over) is shrunk by libvips."""
    import pyvips

    from slidestock.image.thumbnails import thumbnail

    big = tmp_path / "big.png"
    stripes = (pyvips.Image.xyz(20000, 18000)[0] % 256).cast("uchar")
    stripes.bandjoin([stripes, stripes]).copy(interpretation="srgb").pngsave(str(big), compression=1)
    small = thumbnail(big)
    assert small.size == (160, 144)


def test_thumbnails_put_only_transparent_pixels_on_white(tmp_path: Path) -> None:
    """An RGB output is shrunk as it is; an RGBA one's transparent pixels turn white, its opaque ones as RGB's."""
    from PIL import Image

    from slidestock.image.thumbnails import thumbnail
    from slidestock_testkit.tissue import texture_array

    pixels = texture_array((640, 480), seed=3)
    Image.fromarray(pixels).save(tmp_path / "rgb.png")
    alpha = np.full((480, 640), 255, dtype=np.uint8)
    alpha[:, 320:] = 0
    Image.fromarray(np.dstack([pixels, alpha])).save(tmp_path / "rgba.png")
    rgb, rgba = np.asarray(thumbnail(tmp_path / "rgb.png")), np.asarray(thumbnail(tmp_path / "rgba.png"))
    assert rgb.shape == rgba.shape == (120, 160, 3)
    assert rgb.std() > 10  # tissue, not a blank
    assert (rgba[:, 82:] == 255).all()  # the transparent half, white
    assert np.array_equal(rgba[:, :78], rgb[:, :78])  # the opaque half, as the RGB image's
