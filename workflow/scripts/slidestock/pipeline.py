"""One slide from plan to output: fetch the chosen level, downsample, record provenance.

A slide that fails for a reason slidestock understands (a wrong size, a
corrupt file, no usable level) is recorded as failed in its JSON with the
reason, and leaves no image; the other slides go on. Anything else is a bug
and propagates, failing the job.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from slidestock.dicomlevel import read_level
from slidestock.downsample import resize_exact, write_image
from slidestock.errors import SlidestockError
from slidestock.fetch import fetch_object, s5cmd_binary
from slidestock.levels import Target, output_size_px
from slidestock.provenance import sha256_file, software_versions, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlideJob:
    """Everything one slide's job needs, from its plan row and the config."""

    plan: Mapping[str, str]
    target: Target
    fmt: str
    endpoint: str
    attempts: int
    image_path: Path
    json_path: Path
    tmpdir: Path


def _base_record(job: SlideJob) -> dict[str, Any]:
    plan = job.plan
    return {
        "slide_id": plan["slide_id"],
        "status": "failed",
        "error": None,
        "source": {
            "SeriesInstanceUID": plan["SeriesInstanceUID"],
            "SOPInstanceUID": plan["SOPInstanceUID"] or None,
            "url": plan["url"] or None,
            "endpoint": job.endpoint,
        },
        "series_size_bytes": int(plan["series_size_bytes"] or 0),
        "bytes_fetched": 0,
        "level": {
            "reason": plan["reason"],
            "n_levels": int(plan["n_levels"] or 0),
            "transfer_syntax": plan["transfer_syntax"] or None,
            "size_px": [int(plan["level_columns"]), int(plan["level_rows"])] if plan["level_columns"] else None,
            "index_spacing_um": float(plan["level_spacing_um"]) if plan["level_spacing_um"] else None,
            "spacing_derived": plan["spacing_derived"] == "true",
        },
        "target": {"mpp": job.target.mpp, "max_px": job.target.max_px, "format": job.fmt},
        "output": None,
    }


def _plan_spacing(plan: Mapping[str, str]) -> tuple[float, float] | None:
    if not plan["level_spacing_um"]:
        return None
    spacing = float(plan["level_spacing_um"])
    return (spacing, spacing)


def run_slide(job: SlideJob) -> dict[str, Any]:
    """Process one slide and write its JSON record; returns the record."""
    start = time.monotonic()
    record = _base_record(job)
    record["started_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    s5cmd = s5cmd_binary()
    record["software"] = software_versions(s5cmd)
    try:
        if job.plan["status"] != "planned":
            raise SlidestockError(job.plan["reason"])
        _fetch_and_downsample(job, record)
        record["status"] = "done"
    except SlidestockError as err:
        log.error("%s failed: %s", job.plan["slide_id"], err)
        record["error"] = str(err)
        record["output"] = None
        job.image_path.unlink(missing_ok=True)
    record.setdefault("timings_s", {})["total"] = round(time.monotonic() - start, 3)
    write_json(job.json_path, record)
    return record


def _fetch_and_downsample(job: SlideJob, record: dict[str, Any]) -> None:
    plan = job.plan
    job.tmpdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="slidestock-", dir=job.tmpdir) as scratch:
        local = Path(scratch) / f"{plan['slide_id']}.dcm"
        fetched = fetch_object(plan["url"], local, int(plan["instance_size"]), job.endpoint, attempts=job.attempts)
        record["bytes_fetched"] = fetched.bytes_fetched
        record["fetch_attempts"] = fetched.attempts
        t0 = time.monotonic()
        level = read_level(local, item=f"{plan['slide_id']} ({plan['url']})")
        # The header's full-precision spacing beats the index's two significant figures.
        spacing = level.spacing_xy_um or _plan_spacing(plan)
        record["level"]["header_spacing_um"] = level.spacing_xy_um and list(level.spacing_xy_um)
        record["level"]["photometric"] = level.photometric
        if spacing is None:
            raise SlidestockError(
                f"{plan['slide_id']}: the level has no pixel spacing in header or index; "
                "expected one to size the output and write its resolution"
            )
        size = output_size_px(level.size_px, spacing, job.target)
        output = resize_exact(level.image, size)
        out_spacing = (spacing[0] * level.size_px[0] / size[0], spacing[1] * level.size_px[1] / size[1])
        write_image(output, job.image_path, out_spacing, job.fmt)
        record["timings_s"] = {
            "fetch": round(fetched.seconds, 3),
            "downsample": round(time.monotonic() - t0, 3),
        }
    record["scale"] = [size[0] / level.size_px[0], size[1] / level.size_px[1]]
    record["output"] = {
        "path": str(job.image_path),
        "format": job.fmt,
        "size_px": list(size),
        "spacing_um": list(out_spacing),
        "bytes": job.image_path.stat().st_size,
        "sha256": sha256_file(job.image_path),
    }
