"""What a run tells from its records: slides to redo, failure reasons, the outcome."""

from __future__ import annotations

import json
from pathlib import Path

from slidestock.status import patch_outcome, read_outcome, reason_of, redo_notice

TARGET = {"mpp": 15.0, "max_px": None, "fallback_max_px": None, "format": "png", "backend": "pyvips"}


def write_record(folder: Path, slide_id: str, version: str = "0.3.0", **target: object) -> None:
    made = {"mpp": 15.0, "max_px": None, "fallback_max_px": None, "format": "png", **target}
    record = {"slide_id": slide_id, "target": made, "software": {"slidestock": version}}
    (folder / f"{slide_id}.json").write_text(json.dumps(record))


def test_redo_notice_counts_slides_made_with_other_settings(tmp_path: Path) -> None:
    write_record(tmp_path, "a")
    write_record(tmp_path, "b", mpp=10.0)
    write_record(tmp_path, "c", mpp=10.0, format="jpeg")
    write_record(tmp_path, "d", version="0.2.0")
    (tmp_path / "e.json").write_text("{ half written")  # a record being replaced counts as none
    assert redo_notice(tmp_path, TARGET, "0.3.0") == (
        "slidestock: 3 of the 4 slides made before differ from this config "
        "(target.mpp 10.0 → 15.0, slidestock 0.2.0 → 0.3.0, target.format jpeg → png): a run redoes them"
    )


def test_redo_notice_is_silent_when_nothing_changed_or_nothing_was_made(tmp_path: Path) -> None:
    assert redo_notice(tmp_path, TARGET, "0.3.0") is None
    write_record(tmp_path, "a")
    assert redo_notice(tmp_path, TARGET, "0.3.0") is None


def test_reasons_group_alike_failures() -> None:
    one = reason_of("s1", "s1: download of s3://idc-open-data/1/2.dcm failed after 3 attempts: HTTP 503")
    other = reason_of("s2", "s2: download of s3://idc-open-data/9/8.dcm failed after 3 attempts: HTTP 503")
    assert one == other == "download of <where> failed after # attempts: HTTP #"
    pillow = "frame 3 cannot be decoded: cannot identify image file <_io.BytesIO object at 0x{}>"
    assert reason_of("s1", pillow.format("7fbfc8e75670")) == reason_of("s2", pillow.format("7f00aa112233"))


def test_outcome_splits_failures_that_may_pass(tmp_path: Path) -> None:
    table = tmp_path / "b00000.tsv"
    table.write_text(
        "slide_id\tstatus\tsha256_or_error\tretryable\n"
        "a\tdone\tab12\t\n"
        "b\tfailed\tb: HTTP 503 from /x/y.dcm\ttrue\n"
        "c\tfailed\tc: no level at least as fine as 15 µm/px\tfalse\n"
        "d\tfailed\td: HTTP 503 from /x/z.dcm\ttrue\n"
    )
    report = tmp_path / "slides.csv"
    report.write_text(
        "slide_id,status,bytes_fetched,series_size_bytes\na,done,1000,400000\nb,failed,0,300000\n"
        "c,failed,24000,200000\nd,failed,,100000\n"
    )
    outcome = read_outcome([table], report)
    assert (outcome.done, outcome.failed) == (1, 3)
    assert outcome.retryable == {"HTTP # from <where>": 2}
    assert outcome.permanent == {"no level at least as fine as # µm/px": 1}
    assert outcome.lines("snakemake --cores 2")[-1] == (
        "slidestock: 1 of 4 slides done, 3 failed; fetched 25,000 of 1,000,000 series bytes (2.50 %); "
        "2 may pass: `snakemake --cores 2` again retries them; "
        "1 permanent: fetch.redo_failed: true retries those; report: results/report/index.html"
    )


def test_the_patches_line_counts_patches_and_says_what_a_rerun_retries(tmp_path: Path) -> None:
    table = tmp_path / "b00000.tsv"
    table.write_text(
        "slide_id\tstatus\tn_patches\tbytes_fetched\terror\tretryable\n"
        "A\tdone\t8\t1000\t\t\n"
        "B\tfailed\t0\t20\tB: s3://x/y.dcm: bytes 0-9: Server returned non-2xx status code: 503 (2 attempts)\ttrue\n"
        "C\tfailed\t0\t0\tC: no level for patches: no pixel spacing\tfalse\n"
    )
    line, failed = patch_outcome([table], "snakemake --cores 2")
    assert failed == 2
    assert line.startswith(
        "slidestock: patches: 8 from 1 of 3 slides, 2 failed; fetched 1,020 bytes by range; "
        "1 may pass: `snakemake --cores 2` again retries them; "
    )
    assert "1 x no level for patches: no pixel spacing" in line
