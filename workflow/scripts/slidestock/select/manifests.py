"""Manifests users bring: IDC portal / idc-index s5cmd manifests and GDC manifests.

Every malformed line is reported with its file name and line number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from slidestock.errors import CohortError

# `cp s3://<bucket>/<crdc_series_uuid>/* <destination>`, as the IDC portal and idc-index write it.
_IDC_LINE = re.compile(
    r"^cp\s+[\"']?s3://(?P<bucket>[a-z0-9][a-z0-9.-]+)/"
    r"(?P<uuid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"
    r"/\*[\"']?(\s+\S.*)?$"
)
GDC_COLUMNS = ("id", "filename", "md5", "size", "state")
# A TCGA slide barcode: project-TSS-participant-sample/vial-portion/analyte-slide, e.g.
# TCGA-A1-A0SB-01Z-00-DX1 (diagnostic) or TCGA-2F-A9KO-01A-01-TSA (frozen); GDC file names start with it.
_BARCODE = re.compile(r"^(?P<barcode>[A-Z0-9]+-[A-Z0-9]{2}-[A-Z0-9]{4}-\d{2}[A-Z]-\d{2}-[A-Z]{2}[A-Z0-9]+)")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True)
class GdcFile:
    """One row of a GDC manifest, with the slide barcode read from its file name."""

    file_id: str
    filename: str
    md5: str
    size_bytes: int
    barcode: str | None


def read_idc_manifest(path: Path) -> list[str]:
    """The crdc_series_uuids of an s5cmd manifest, in file order, without repeats.

    Blank lines and ``#`` comments are skipped; any other line must be an s5cmd
    ``cp s3://<bucket>/<crdc_series_uuid>/* <destination>`` line.
    """
    uuids: dict[str, None] = {}
    for number, raw in enumerate(_lines(path), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _IDC_LINE.match(line)
        if match is None:
            raise CohortError(
                f"{path}:{number}: {line[:120]!r} is not a manifest line; expected "
                "'cp s3://<bucket>/<crdc_series_uuid>/* <destination>'"
            )
        uuids[match["uuid"].lower()] = None
    if not uuids:
        raise CohortError(f"{path}: no 'cp s3://...' lines; expected at least one series")
    return list(uuids)


def slide_barcode(filename: str) -> str | None:
    """The TCGA-style slide barcode a GDC file name starts with, or None."""
    match = _BARCODE.match(filename)
    return match["barcode"] if match else None


def read_gdc_manifest(path: Path) -> list[GdcFile]:
    """The rows of a GDC manifest (tab-separated ``id filename md5 size state``)."""
    lines = _lines(path)
    if not lines or tuple(lines[0].rstrip("\r\n").split("\t")[:5]) != GDC_COLUMNS:
        found = lines[0].strip()[:120] if lines else "an empty file"
        raise CohortError(f"{path}:1: header {found!r}; expected the columns {' '.join(GDC_COLUMNS)}")
    files: dict[str, GdcFile] = {}
    for number, raw in enumerate(lines[1:], start=2):
        if not raw.strip():
            continue
        fields = raw.rstrip("\r\n").split("\t")
        if len(fields) < 5:
            raise CohortError(f"{path}:{number}: {len(fields)} columns; expected {len(GDC_COLUMNS)}")
        file_id, filename, md5, size = (f.strip() for f in fields[:4])
        if not _UUID.match(file_id):
            raise CohortError(f"{path}:{number}: id {file_id!r}; expected a GDC file UUID")
        if not re.fullmatch(r"[0-9a-f]{32}", md5):
            raise CohortError(f"{path}:{number}: md5 {md5!r}; expected 32 hex digits")
        if not size.isdigit():
            raise CohortError(f"{path}:{number}: size {size!r}; expected a byte count")
        files.setdefault(file_id, GdcFile(file_id, filename, md5, int(size), slide_barcode(filename)))
    if not files:
        raise CohortError(f"{path}: no rows after the header; expected at least one file")
    return list(files.values())


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise CohortError(f"cohort.manifest: file {str(path)!r} not found") from None
    except UnicodeDecodeError as err:
        raise CohortError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
