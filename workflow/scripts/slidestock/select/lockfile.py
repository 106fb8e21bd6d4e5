"""The lock file ``cohort.tsv``: its columns, its ``# key: value`` header, writing and reading, in one place.

Same input, same bytes: no timestamps. The header says how the cohort was selected (source,
release, filter, n, seed, manifest digest, query); the rows are one slide each, sorted by id.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from slidestock.config import installed_idc_version
from slidestock.errors import CohortError
from slidestock.provenance import sha256_file

if TYPE_CHECKING:
    from slidestock.select.cohort import Cohort, CohortSpec

LOCK_COLUMNS = (
    "slide_id",
    "fetch_from",
    "collection_id",
    "PatientID",
    "ContainerIdentifier",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "crdc_series_uuid",
    "aws_bucket",
    "series_size_MB",
    "source_DOI",
    "license_short_name",
    "idc_version",
    "in_current_index",
    "gdc_file_id",
    "gdc_filename",
    "gdc_md5",
    "gdc_size",
    "stratum",
)


_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def slide_id(container_id: str | None, patient_id: str | None, unique: str) -> str:
    """A file-name-safe, unique slide id: the slide barcode and 8 hex digits of a UUID."""
    stem = container_id or patient_id or "series"
    stem = _UNSAFE_ID_CHARS.sub("_", stem).strip("._-") or "series"
    return f"{stem}_{unique.replace('-', '')[:8]}"


def _none_if_missing(value: Any) -> Any:
    """None for every flavour of missing pandas hands out (None, NaN, NA)."""
    return None if value is None or (not isinstance(value, (list, tuple)) and pd.isna(value)) else value


def lock_frame(cohort: Cohort, idc_version: int) -> pd.DataFrame:
    """The lock file's rows: one per slide, sorted by slide id."""
    frame = cohort.slides.copy()
    for column in LOCK_COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    ids = []
    for row in frame.to_dict("records"):
        unique = _none_if_missing(row["crdc_series_uuid"]) or _none_if_missing(row["gdc_file_id"]) or ""
        stem = _none_if_missing(row["ContainerIdentifier"]) or _none_if_missing(row["gdc_filename"])
        ids.append(slide_id(stem, _none_if_missing(row["PatientID"]), unique))
    frame["slide_id"] = ids
    duplicated = frame["slide_id"][frame["slide_id"].duplicated()]
    if not duplicated.empty:
        raise CohortError(f"cohort: slide ids {sorted(set(duplicated))} are not unique; expected one per series")
    frame["idc_version"] = idc_version
    frame["gdc_size"] = frame["gdc_size"].map(lambda v: "" if _none_if_missing(v) is None else str(int(v)))
    frame["in_current_index"] = frame["in_current_index"].map(
        lambda v: "" if _none_if_missing(v) is None else str(bool(v)).lower()
    )
    return frame.loc[:, list(LOCK_COLUMNS)].sort_values("slide_id").reset_index(drop=True)


def read_lock_header(path: Path) -> dict[str, str]:
    """The ``# key: value`` header of a lock file, continuation lines joined."""
    header: dict[str, str] = {}
    key = ""
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("#   ") and key:
            header[key] += "\n" + line[4:]
        else:
            key, _, value = line[2:].partition(": ")
            header[key] = value
    return header


def lock_text(frame: pd.DataFrame, header: Mapping[str, Any]) -> str:
    """The lock file: ``# key: value`` header lines, then the TSV (no timestamps: same input, same bytes)."""
    lines = []
    for key, value in header.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        for i, part in enumerate(text.splitlines() or [""]):
            lines.append(f"# {key}: {part}" if i == 0 else f"#   {part}")
    body = frame.to_csv(sep="\t", index=False, lineterminator="\n", float_format="%.6f")
    return "\n".join(lines) + "\n" + body


def read_lock(path: Path) -> pd.DataFrame:
    """Read a ``cohort.tsv`` written by :func:`lock_text` (every value as text)."""
    if not path.is_file():
        raise CohortError(f"{path}: lock file not found")
    frame = pd.read_csv(path, sep="\t", comment="#", dtype=str, keep_default_na=False)
    missing = set(LOCK_COLUMNS) - set(frame.columns)
    if missing:
        raise CohortError(f"{path}: columns {sorted(missing)} missing; expected a slidestock cohort.tsv")
    return frame


def header_of(spec: CohortSpec, cohort: Cohort, version: int, software: Mapping[str, str]) -> dict[str, Any]:
    """The lock file's header: how the cohort was selected, so that the same config gives the same bytes."""
    header: dict[str, Any] = {
        "slidestock cohort lock": f"{len(cohort.slides)} slides",
        "source": spec.source,
        "idc_version": version,
        "idc_index_data_version": installed_idc_version(),
        "filter": dict(spec.filters),
        "n": spec.n,
        "seed": spec.seed,
        "stratify_by": spec.stratify_by,
        "one_per_patient": spec.one_per_patient,
        "candidates": cohort.n_candidates,
    }
    if spec.manifest is not None:
        header["manifest"] = f"{spec.manifest.name} sha256:{sha256_file(spec.manifest)}"
    if cohort.strata:
        header["strata"] = cohort.strata
    if spec.source == "gdc_manifest":
        header["gdc_unmatched"] = cohort.unmatched
    header["software"] = dict(software)
    header["query"] = cohort.query
    return header
