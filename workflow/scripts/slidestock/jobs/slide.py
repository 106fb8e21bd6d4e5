"""One slide's job: its plan row, the settings it is made with, and where its files go.

The batch driver (:mod:`slidestock.jobs.stock`) hands a :class:`SlideJob` to the slide's source
(:mod:`slidestock.jobs.idc` or :mod:`slidestock.jobs.gdc`); the helpers here say where the slide's
downloads and outputs lie, for both and for the driver's clean-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slidestock.errors import SlidestockError
from slidestock.plan.levels import Target
from slidestock.plan.rows import PlanRow
from slidestock.read.fetch import BatchItem
from slidestock.settings import StockSettings

# Files written beside a slide's image: {slide}.<name>.png
SIDE_FILES = ("mask", "label", "overview")


@dataclass(frozen=True)
class GdcSettings:
    """How to reach the GDC API (``gdc`` in the config); the token is never logged or recorded."""

    api: str
    token: str | None = field(default=None, repr=False)
    mode: str = "range"
    parallel: int = 4


def read_token(path: Path | None) -> str | None:
    """The GDC token in ``path`` (surrounding whitespace removed), or None."""
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except OSError as err:
        raise SlidestockError(f"gdc.token_file: cannot read {str(path)!r}: {err.strerror}") from None
    if not token:
        raise SlidestockError(f"gdc.token_file: {str(path)!r} is empty; expected a GDC token")
    return token


def gdc_settings(gdc: Mapping[str, Any]) -> GdcSettings:
    """The ``gdc:`` config section as settings, the token read from its file (never kept in the config)."""
    token_file = Path(gdc["token_file"]) if gdc.get("token_file") else None
    return GdcSettings(api=gdc["api"], token=read_token(token_file), mode=gdc["mode"], parallel=gdc["parallel"])


@dataclass(frozen=True)
class SlideJob:
    """Everything one slide's job needs, from its plan row and the config."""

    plan: PlanRow
    settings: StockSettings
    endpoint: str
    attempts: int
    image_path: Path
    json_path: Path
    tmpdir: Path
    gdc: GdcSettings | None = None
    log_path: Path | None = None
    threads: int = 1
    redo_failed: bool = False


def side_path(job: SlideJob, name: str) -> Path:
    """``results/slides/{slide}.{name}.png``: a file written beside the slide's image."""
    return job.image_path.with_name(f"{job.image_path.stem}.{name}.png")


def slide_target(job: SlideJob, spacing: tuple[float, float] | None) -> Target:
    """The target the slide is sized by: the configured one, or for a slide without any spacing its fallback."""
    target = job.settings.target
    return target if spacing is not None else target.without_spacing(job.plan.slide_id)


def level_file(job: SlideJob, kind: str = "") -> Path:
    """Where the batch puts a slide's downloaded level (or ``label``/``overview``) in its scratch folder."""
    return job.tmpdir / f"{job.plan.slide_id}{'.' + kind if kind else ''}.dcm"


def level_downloads(job: SlideJob) -> list[BatchItem]:
    """The chosen level's objects and where the batch puts them: each part of a concatenation, or the instance."""
    if job.plan.parts:
        return [BatchItem(url, level_file(job, f"part{k + 1}"), size) for k, (url, size) in enumerate(job.plan.parts)]
    return [BatchItem(job.plan.url, level_file(job), job.plan.instance_size)]
