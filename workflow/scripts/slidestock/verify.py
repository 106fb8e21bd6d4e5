"""Verify: re-hash every output image against the SHA-256 in its provenance record."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from slidestock.provenance import sha256_file


@dataclass(frozen=True)
class Check:
    """The outcome for one slide: ``ok``, ``failed-slide`` (no image expected) or a mismatch."""

    slide_id: str
    outcome: str
    detail: str


def check_record(json_path: Path, root: Path) -> Check:
    record = json.loads(json_path.read_text())
    slide = str(record["slide_id"])
    output = record.get("output")
    if record.get("status") != "done" or not output:
        return Check(slide, "failed-slide", str(record.get("error") or ""))
    image = root / output["path"]
    if not image.is_file():
        return Check(slide, "missing", f"{output['path']} not found")
    size = image.stat().st_size
    if size != output["bytes"]:
        return Check(slide, "mismatch", f"{output['path']}: {size} bytes; provenance says {output['bytes']}")
    digest = sha256_file(image)
    if digest != output["sha256"]:
        return Check(slide, "mismatch", f"{output['path']}: sha256 {digest}; provenance says {output['sha256']}")
    return Check(slide, "ok", output["sha256"])


def verify(json_paths: Iterable[Path], root: Path) -> list[Check]:
    """One check per record, in slide order; ``root`` is the folder paths are relative to."""
    return sorted((check_record(p, root) for p in json_paths), key=lambda c: c.slide_id)
