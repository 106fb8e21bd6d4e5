"""The demo's and the tests' IDC fixture: series under ``s3/``, tables under ``tables/``, built once."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from slidestock_testkit.dicomseries import write_series
from slidestock_testkit.indextables import DICOM_ALL_PREFIX, write_dicom_all, write_tables
from slidestock_testkit.slides import BUILD_VERSION, DEMO_SLIDES, SlideSpec


def build(
    out_dir: Path,
    specs: Sequence[SlideSpec] = DEMO_SLIDES,
    idc_version: int = 25,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Write objects under ``out_dir/s3`` and tables under ``out_dir/tables``.

    A ``manifest.json`` records what was built; a second call with the same
    specification reuses the files. ``progress`` is told of each slide written.
    """
    out_dir = out_dir.resolve()
    stamp = out_dir / "manifest.json"
    wanted = json.dumps([s.__dict__ for s in specs] + [idc_version, BUILD_VERSION], sort_keys=True, default=str)
    if stamp.exists() and json.loads(stamp.read_text())["spec"] == wanted:
        return {k: out_dir / v for k, v in json.loads(stamp.read_text())["paths"].items()}
    records = []
    start = time.monotonic()
    for number, spec in enumerate(specs, 1):
        records.append(write_series(spec, out_dir / "s3"))
        if progress is not None:
            size = sum(level.size_bytes for level in records[-1].instances)
            progress(f"slide {number} of {len(specs)} written: {spec.container_id}, {len(records[-1].instances)} "
                     f"instances, {size:,} bytes ({time.monotonic() - start:.0f} s)")  # fmt: skip
    paths = write_tables(records, out_dir / "tables", idc_version)
    paths["s3_root"] = out_dir / "s3"
    paths["dicom_all"] = write_dicom_all(paths, out_dir / "s3" / DICOM_ALL_PREFIX.format(version=idc_version))
    relative = {k: str(v.relative_to(out_dir)) for k, v in paths.items()}
    stamp.write_text(json.dumps({"spec": wanted, "paths": relative}, indent=1))
    return paths
