"""Parsing IDC and GDC manifests: good lines, and bad ones named by line number."""

from __future__ import annotations

from pathlib import Path

import pytest

from slidestock.config import resolve_idc_version
from slidestock.errors import CohortError, ConfigError
from slidestock.select.manifests import read_gdc_manifest, read_idc_manifest, slide_barcode

UUID_A = "68c0f13e-4607-4e55-aef1-6df1ac3a78f5"
UUID_B = "EA64BE3F-70CD-419F-92DE-7423460DD9D5"


def write(tmp_path: Path, text: str, name: str = "m.txt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_idc_manifest_lines_comments_blanks_and_repeats(tmp_path: Path) -> None:
    text = f"# portal\n\ncp s3://idc-open-data/{UUID_A}/* .\n  cp 's3://idc-open-data-two/{UUID_B}/*' /data/x \n"
    text += f"cp s3://idc-open-data/{UUID_A}/* .\n"
    assert read_idc_manifest(write(tmp_path, text)) == [UUID_A, UUID_B.lower()]


@pytest.mark.parametrize(
    ("line", "number"),
    [
        ("cp s3://idc-open-data/not-a-uuid/* .", 2),
        (f"sync s3://idc-open-data/{UUID_A}/* .", 2),
        (f"cp s3://idc-open-data/{UUID_A}/file.dcm .", 2),
    ],
)
def test_idc_manifest_bad_line_is_named_with_its_number(tmp_path: Path, line: str, number: int) -> None:
    path = write(tmp_path, f"# header\n{line}\n")
    with pytest.raises(CohortError, match=rf"m.txt:{number}: .* is not a manifest line"):
        read_idc_manifest(path)


def test_idc_manifest_without_series_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CohortError, match=r"no 'cp s3://\.\.\.' lines"):
        read_idc_manifest(write(tmp_path, "# nothing\n\n"))


GDC_HEADER = "id\tfilename\tmd5\tsize\tstate\n"
GDC_ROW = (
    "4f1a2b3c-1d2e-4f5a-8b9c-0d1e2f3a4b5c\tTCGA-A1-A0SB-01Z-00-DX1.6ED4F5B9-3A44.svs\t" + "c" * 32 + "\t123\treleased\n"
)


def test_gdc_manifest_rows_and_barcodes(tmp_path: Path) -> None:
    files = read_gdc_manifest(write(tmp_path, GDC_HEADER + GDC_ROW + "\n"))
    assert len(files) == 1
    assert files[0].barcode == "TCGA-A1-A0SB-01Z-00-DX1"
    assert files[0].size_bytes == 123


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file_id\tname\n" + GDC_ROW, r"m.txt:1: header 'file_id\\tname'"),
        (GDC_HEADER + GDC_ROW.replace("4f1a2b3c", "XYZ"), r"m.txt:2: id 'XYZ-1d2e"),
        (GDC_HEADER + GDC_ROW.replace("c" * 32, "c" * 31), r"m.txt:2: md5 'c{31}'; expected 32 hex digits"),
        (
            GDC_HEADER + GDC_ROW + GDC_ROW.replace("\t123\t", "\t12x\t"),
            r"m.txt:3: size '12x'; expected a byte count",
        ),
        (GDC_HEADER + "only\ttwo\n", r"m.txt:2: 2 columns; expected 5"),
        (GDC_HEADER, r"no rows after the header"),
    ],
)
def test_gdc_manifest_errors_name_line_and_value(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(CohortError, match=message):
        read_gdc_manifest(write(tmp_path, text))


@pytest.mark.parametrize(
    ("filename", "barcode"),
    [
        ("TCGA-A1-A0SB-01Z-00-DX1.6ED4F5B9-3A44-4FD4-9F39.svs", "TCGA-A1-A0SB-01Z-00-DX1"),
        ("TCGA-2F-A9KO-01A-01-TSA.5A9B.svs", "TCGA-2F-A9KO-01A-01-TSA"),
        ("TCGA-2F-A9KO-01A-01-BS1.5A9B.svs", "TCGA-2F-A9KO-01A-01-BS1"),
        ("notes.txt", None),
    ],
)
def test_slide_barcode(filename: str, barcode: str | None) -> None:
    assert slide_barcode(filename) == barcode


def test_missing_manifest_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(CohortError, match=r"cohort.manifest: file '.*nope.tsv' not found"):
        read_gdc_manifest(tmp_path / "nope.tsv")


def test_newer_release_than_installed_names_installed_and_upgrade() -> None:
    with pytest.raises(ConfigError, match=r"got 99; the installed idc-index-data holds IDC v25\. Upgrade it"):
        resolve_idc_version(99)
    assert resolve_idc_version("current") == 25
    assert resolve_idc_version(20) == 20
