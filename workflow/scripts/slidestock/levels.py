"""The level rule: which pyramid level of a slide to fetch, and the output size.

Among a slide's VOLUME levels with known (or derivable) pixel spacing, take the
coarsest whose spacing is at most the target spacing, so that we only ever
downsample; with ``max_px``, take the smallest level whose long side is at
least ``max_px``. Never upsample: a level coarser than the target is output at
its own spacing, and the choice says so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from slidestock.errors import ConfigError, LevelError

# A level within this relative margin of the target counts as fine enough:
# it absorbs float noise only, never a visible upsampling.
_SPACING_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Level:
    """One DICOM instance of a slide series, as the index describes it.

    ``size_px`` is (columns, rows) of the total pixel matrix; ``spacing_um`` is
    µm per pixel along the columns, ``None`` when the index has no spacing.
    """

    sop_instance_uid: str
    crdc_instance_uuid: str
    image_type: tuple[str, ...]
    size_px: tuple[int, int]
    spacing_um: float | None
    transfer_syntax: str
    size_bytes: int

    @property
    def flavor(self) -> str:
        """The third value of ImageType: VOLUME, LABEL, OVERVIEW or THUMBNAIL."""
        return self.image_type[2] if len(self.image_type) > 2 else ""

    @property
    def long_side_px(self) -> int:
        return max(self.size_px)


@dataclass(frozen=True)
class Target:
    """The requested output: a spacing in µm per pixel, or a long side in pixels.

    ``fallback_max_px`` (with ``mpp`` only) is the long side of slides that have
    no pixel spacing on any level; without it such slides are skipped with the reason.
    """

    mpp: float | None = None
    max_px: int | None = None
    fallback_max_px: int | None = None

    def __post_init__(self) -> None:
        if (self.mpp is None) == (self.max_px is None):
            raise ConfigError(
                f"target: got mpp={self.mpp!r} and max_px={self.max_px!r}; expected exactly one of them to be set"
            )
        if self.mpp is not None and not self.mpp > 0:
            raise ConfigError(f"target.mpp: got {self.mpp!r}; expected a number > 0 (µm per pixel)")
        if self.max_px is not None and self.max_px < 1:
            raise ConfigError(f"target.max_px: got {self.max_px!r}; expected an integer >= 1")
        if self.fallback_max_px is not None and (self.mpp is None or self.fallback_max_px < 1):
            raise ConfigError(
                f"target.fallback_max_px: got {self.fallback_max_px!r} with mpp={self.mpp!r}; expected null, "
                "or an integer >= 1 together with mpp (max_px sizes every slide already)"
            )

    def describe(self) -> str:
        return f"{self.mpp:g} µm/px" if self.mpp is not None else f"long side {self.max_px} px"

    def without_spacing(self, slide: str) -> Target:
        """The target of a slide with no pixel spacing on any level: ``max_px`` targets need none.

        An ``mpp`` target falls back to ``fallback_max_px``, or the slide fails with the reason.
        """
        if self.mpp is None:
            return self
        if self.fallback_max_px is None:
            raise LevelError(
                f"{slide}: no pixel spacing on any of its levels; expected one to reach {self.describe()} "
                "(or set target.fallback_max_px to size such slides by their long side)"
            )
        return Target(max_px=self.fallback_max_px)


@dataclass(frozen=True)
class LevelChoice:
    """The chosen level, the spacing used for it (None when no level has one), and the planned output size."""

    level: Level
    spacing_um: float | None
    spacing_derived: bool
    output_size_px: tuple[int, int]
    reason: str

    @property
    def scale(self) -> float:
        """Output columns over level columns (1.0 when the level is output as is)."""
        return self.output_size_px[0] / self.level.size_px[0]

    @property
    def output_spacing_um(self) -> float | None:
        return None if self.spacing_um is None else self.spacing_um / self.scale


def volume_levels(levels: Iterable[Level]) -> list[Level]:
    """The VOLUME levels, finest first; LABEL, OVERVIEW and THUMBNAIL never qualify."""
    volumes = [lv for lv in levels if lv.flavor == "VOLUME"]
    # Ties (two volumes of one size) break on the UID, so the choice is stable.
    return sorted(volumes, key=lambda lv: (-lv.size_px[0], -lv.size_px[1], lv.sop_instance_uid))


def spacings_um(volumes: Sequence[Level]) -> list[tuple[float, bool]]:
    """Spacing of each level and whether it was derived.

    A missing spacing is derived from the finest level that has one and the
    ratio of their column counts, since levels of one volume cover the same
    area.
    """
    known = [lv for lv in volumes if lv.spacing_um is not None]
    if not known:
        return []
    ref = known[0]
    assert ref.spacing_um is not None
    result = []
    for lv in volumes:
        if lv.spacing_um is not None:
            result.append((lv.spacing_um, False))
        else:
            result.append((ref.spacing_um * ref.size_px[0] / lv.size_px[0], True))
    return result


def output_size_px(
    size_px: tuple[int, int], spacing_xy_um: tuple[float, float] | None, target: Target
) -> tuple[int, int]:
    """Output (columns, rows) for a level of ``size_px`` at (column, row) spacing; never larger.

    Each axis is scaled by its own spacing, so a level with non-square pixels
    comes out square at the target spacing. A ``max_px`` target needs no spacing.
    """
    width, height = size_px
    if target.mpp is not None:
        if spacing_xy_um is None:
            raise LevelError(f"a {target.describe()} target needs the level's spacing; expected one")
        limit = target.mpp * (1 + _SPACING_TOLERANCE)
        if max(spacing_xy_um) > limit:
            return size_px
        return (_scaled(width, spacing_xy_um[0] / target.mpp), _scaled(height, spacing_xy_um[1] / target.mpp))
    assert target.max_px is not None
    long_side = max(width, height)
    if long_side <= target.max_px:
        return size_px
    scale = target.max_px / long_side
    return (_scaled(width, scale), _scaled(height, scale))


def _scaled(length_px: int, scale: float) -> int:
    # Round half up, not to even: the size must not depend on float formatting.
    return max(1, math.floor(length_px * scale + 0.5))


def choose_level(levels: Iterable[Level], target: Target, slide: str = "slide") -> LevelChoice:
    """Apply the level rule of DESIGN.md to one slide's instances."""
    volumes = volume_levels(levels)
    if not volumes:
        raise LevelError(
            f"{slide}: no VOLUME instance among its levels; expected at least one "
            "(LABEL, OVERVIEW and THUMBNAIL images are never used)"
        )
    spacings = spacings_um(volumes)
    if not spacings and target.mpp is not None:
        choice = _choose_by_size(volumes, spacings, target.without_spacing(slide))
        note = f"none of its {len(volumes)} VOLUME levels has a pixel spacing: sized by target.fallback_max_px; "
        return replace(choice, reason=note + choice.reason)
    if target.mpp is not None:
        return _choose_by_spacing(volumes, spacings, target)
    return _choose_by_size(volumes, spacings, target)


def _choose_by_spacing(volumes: Sequence[Level], spacings: Sequence[tuple[float, bool]], target: Target) -> LevelChoice:
    assert target.mpp is not None
    limit = target.mpp * (1 + _SPACING_TOLERANCE)
    fine_enough = [i for i, (sp, _) in enumerate(spacings) if sp <= limit]
    if fine_enough:
        i = max(fine_enough, key=lambda j: (spacings[j][0], -j))
        spacing, derived = spacings[i]
        reason = (
            f"coarsest of {len(volumes)} VOLUME levels with spacing <= {target.mpp:g} µm/px "
            f"({spacing:.4g} µm/px{', derived from size ratio' if derived else ''})"
        )
    else:
        i = min(range(len(spacings)), key=lambda j: (spacings[j][0], j))
        spacing, derived = spacings[i]
        reason = (
            f"finest level is {spacing:.4g} µm/px, coarser than the target {target.mpp:g} µm/px: "
            "output at the level's own spacing (never upsample)"
        )
    level = volumes[i]
    reason += _tie_note(volumes, level)
    return LevelChoice(level, spacing, derived, output_size_px(level.size_px, (spacing, spacing), target), reason)


def _choose_by_size(volumes: Sequence[Level], spacings: Sequence[tuple[float, bool]], target: Target) -> LevelChoice:
    assert target.max_px is not None
    large_enough = [i for i, lv in enumerate(volumes) if lv.long_side_px >= target.max_px]
    if large_enough:
        i = large_enough[-1]
        reason = (
            f"smallest of {len(volumes)} VOLUME levels with long side >= {target.max_px} px "
            f"({volumes[i].long_side_px} px)"
        )
    else:
        i = 0
        reason = (
            f"largest level's long side is {volumes[0].long_side_px} px, below {target.max_px} px: "
            "output as is (never upsample)"
        )
    level = volumes[i]
    spacing, derived = spacings[i] if spacings else (None, False)
    reason += _tie_note(volumes, level)
    return LevelChoice(level, spacing, derived, output_size_px(level.size_px, None, target), reason)


def _tie_note(volumes: Sequence[Level], chosen: Level) -> str:
    """Say so when several volumes (ORIGINAL and RESAMPLED, say) share the chosen size."""
    twins = sorted(lv.sop_instance_uid for lv in volumes if lv.size_px == chosen.size_px)
    if len(twins) < 2:
        return ""
    return f"; {len(twins)} VOLUME instances of this size, took the first by SOPInstanceUID"


def target_of(config: Mapping[str, Any]) -> Target:
    """The output target; exactly one of ``target.mpp`` and ``target.max_px``."""
    target = config["target"]
    return Target(mpp=target.get("mpp"), max_px=target.get("max_px"), fallback_max_px=target.get("fallback_max_px"))
