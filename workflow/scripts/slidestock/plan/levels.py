"""The level rule: which pyramid level of a slide to fetch, and the output size.

Among a slide's VOLUME levels with known (or derivable) pixel spacing, take the
coarsest whose spacing is at most the target spacing, so that we only ever
downsample; with ``max_px``, take the smallest level whose long side is at
least ``max_px``. Never upsample: a level coarser than the target is output at
its own spacing, and the choice says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from slidestock.errors import ConfigError, LevelError

# Output format -> file extension. PNG (pHYs), TIFF (resolution tags), JPEG and WebP (EXIF)
# all carry the resolution.
FORMATS = {"png": "png", "jpeg": "jpg", "tiff": "tiff", "webp": "webp"}

# A level within this relative margin of the target counts as fine enough:
# it absorbs float noise only, never a visible upsampling.
_SPACING_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Level:
    """One DICOM instance of a slide series, as the index describes it; or a page of a slide file.

    ``size_px`` is (columns, rows) of the total pixel matrix; ``spacing_um`` is
    µm per pixel along the columns, ``None`` when the index has no spacing.
    ``spacing_exact`` is False for index values, which idc-index rounds to two
    significant figures (a level of 8.015 µm/px is indexed as 0.008 mm), and
    True for spacings read from the file itself (a DICOM header, an SVS page).
    """

    sop_instance_uid: str
    crdc_instance_uuid: str
    image_type: tuple[str, ...]
    size_px: tuple[int, int]
    spacing_um: float | None
    transfer_syntax: str
    size_bytes: int
    spacing_exact: bool = False
    # For a level read from a slide file's own directory: its page (an SVS page, an OpenSlide level).
    page: int | None = None

    @classmethod
    def of_page(cls, index: int, size_px: tuple[int, int], spacing_um: float | None, transfer_syntax: str) -> Level:
        """Page ``index`` of a slide file (an SVS page, an OpenSlide level) as a level; its spacing is the file's."""
        volume = ("ORIGINAL", "PRIMARY", "VOLUME", "NONE")
        return cls("", "", volume, size_px, spacing_um, transfer_syntax, 0, spacing_exact=True, page=index)

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


# Where a level's spacing came from: the index (maybe rounded), the instance's own header
# (exact), or derived from another level's spacing and the size ratio.
INDEX, HEADER, DERIVED = "index", "header", "derived"
# (column, row) spacing in µm from an instance's header, None when the header has none.
HeaderSpacing = Callable[[Level], tuple[float, float] | None]


@dataclass(frozen=True)
class Spacing:
    """A level's spacing in µm/px along (columns, rows), where it came from, and the interval it truly lies in.

    ``bounds_um`` is the column spacing's interval: the value itself when
    exact, its rounding interval for a rounded index value, and that interval
    scaled by the size ratio for a spacing derived from one.
    """

    xy_um: tuple[float, float]
    source: str
    bounds_um: tuple[float, float]

    @property
    def um(self) -> float:
        return self.xy_um[0]

    @property
    def exact(self) -> bool:
        return self.bounds_um[0] == self.bounds_um[1]


@dataclass(frozen=True)
class LevelChoice:
    """The chosen level, the spacing used for it (None when no level has one), and the planned output size.

    ``spacing_um`` is the column spacing; ``spacing_xy_um`` both, as the output size was computed from them.
    """

    level: Level
    spacing_um: float | None
    spacing_derived: bool
    output_size_px: tuple[int, int]
    reason: str
    spacing_source: str = ""
    spacing_xy_um: tuple[float, float] | None = None

    @property
    def scale(self) -> float:
        """Output columns over level columns (1.0 when the level is output as is)."""
        return self.output_size_px[0] / self.level.size_px[0]

    @property
    def output_spacing_um(self) -> float | None:
        return None if self.spacing_um is None else self.spacing_um / self.scale


def base_size(levels: Iterable[Level]) -> tuple[int, int] | None:
    """The size of the finest VOLUME level (level 0, the one patch positions are given in), None without one."""
    volumes = volume_levels(levels)
    return volumes[0].size_px if volumes else None


def pyramid_index(levels: Iterable[Level], size_px: tuple[int, int] | None) -> int:
    """Where a level of this size sits among the distinct sizes of the VOLUME levels, finest 0 (OpenSlide's
    level number of the slide); -1 when none has that size."""
    sizes = list(dict.fromkeys(level.size_px for level in volume_levels(levels)))
    return sizes.index(size_px) if size_px in sizes else -1


def volume_levels(levels: Iterable[Level]) -> list[Level]:
    """The VOLUME levels, finest first; LABEL, OVERVIEW and THUMBNAIL never qualify."""
    volumes = [lv for lv in levels if lv.flavor == "VOLUME"]
    # Ties (two volumes of one size) break on the UID, so the choice is stable.
    return sorted(volumes, key=lambda lv: (-lv.size_px[0], -lv.size_px[1], lv.sop_instance_uid))


def rounding_interval(spacing_um: float, figures: int = 2) -> tuple[float, float]:
    """Where a spacing published rounded to ``figures`` significant figures may truly lie.

    idc-index rounds ``PixelSpacing_0`` so: 0.008 mm stands for anything in
    [7.95, 8.05] µm. A value with more significant figures than that was not
    rounded, and is its own interval.
    """
    if not spacing_um > 0 or not math.isfinite(spacing_um):
        return (spacing_um, spacing_um)
    unit = 10.0 ** (math.floor(math.log10(spacing_um)) - figures + 1)
    steps = spacing_um / unit
    if abs(steps - round(steps)) > 1e-6 * steps:
        return (spacing_um, spacing_um)
    return (spacing_um - unit / 2, spacing_um + unit / 2)


def level_spacings(volumes: Sequence[Level], headers: Mapping[int, Spacing] | None = None) -> list[Spacing | None]:
    """Each level's spacing: its header's where read, else the index's, else derived.

    A missing spacing is derived from the finest level that has one and the
    ratio of their sizes, since levels of one volume cover the same area; it is
    as exact as the spacing it comes from. ``None`` for all when no level has one.
    """
    headers = headers or {}
    own: list[Spacing | None] = []
    for i, lv in enumerate(volumes):
        if i in headers:
            own.append(headers[i])
        elif lv.spacing_um is not None:
            bounds = (lv.spacing_um, lv.spacing_um) if lv.spacing_exact else rounding_interval(lv.spacing_um)
            own.append(Spacing((lv.spacing_um, lv.spacing_um), INDEX, bounds))
        else:
            own.append(None)
    known = [i for i, sp in enumerate(own) if sp is not None]
    if not known:
        return own
    ref, ref_spacing = volumes[known[0]], own[known[0]]
    assert ref_spacing is not None
    (ref_x, ref_y), (ref_w, ref_h) = ref_spacing.xy_um, ref.size_px
    (low, high) = ref_spacing.bounds_um
    derived: list[Spacing | None] = []
    for lv, sp in zip(volumes, own, strict=True):
        ratio = ref_w / lv.size_px[0]
        xy = (ref_x * ratio, ref_y * ref_h / lv.size_px[1])
        derived.append(sp if sp is not None else Spacing(xy, DERIVED, (low * ratio, high * ratio)))
    return derived


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


def choose_level(
    levels: Iterable[Level], target: Target, slide: str = "slide", header_spacing: HeaderSpacing | None = None
) -> LevelChoice:
    """Apply the level rule (this module's docstring) to one slide's instances.

    The rule is about each level's true spacing. Where an index value cannot
    decide (the target lies inside its rounding interval), ``header_spacing``
    reads that instance's own header; the chosen level's header is read too, so
    that the planned output size is the one the batch will produce. Without a
    reader, an undecided level counts as too coarse: never a level coarser than
    the target.
    """
    volumes = volume_levels(levels)
    if not volumes:
        raise LevelError(
            f"{slide}: no VOLUME instance among its levels; expected at least one "
            "(LABEL, OVERVIEW and THUMBNAIL images are never used)"
        )
    if target.mpp is None:
        return _choose_by_size(volumes, level_spacings(volumes), target)
    headers = _resolve_undecided(volumes, target.mpp, header_spacing)
    spacings = level_spacings(volumes, headers)
    if all(sp is None for sp in spacings):
        choice = _choose_by_size(volumes, spacings, target.without_spacing(slide))
        note = f"none of its {len(volumes)} VOLUME levels has a pixel spacing: sized by target.fallback_max_px; "
        return replace(choice, reason=note + choice.reason)
    choice, i = _choose_by_spacing(volumes, spacings, target)
    if header_spacing is None or i in headers:
        return choice
    chosen = _read_headers(volumes, [i], header_spacing)
    if not chosen:
        return choice
    # An exact spacing within its rounding interval never changes the choice; it sizes the output.
    choice, _ = _choose_by_spacing(volumes, level_spacings(volumes, {**headers, **chosen}), target)
    return choice


def _limit(mpp: float) -> float:
    return mpp * (1 + _SPACING_TOLERANCE)


def _read_headers(volumes: Sequence[Level], indices: Iterable[int], read: HeaderSpacing) -> dict[int, Spacing]:
    """The header spacings of these levels, for those whose header has one."""
    found = {}
    for i in indices:
        xy = read(volumes[i])
        if xy is not None:
            found[i] = Spacing(xy, HEADER, (xy[0], xy[0]))
    return found


def _resolve_undecided(volumes: Sequence[Level], mpp: float, read: HeaderSpacing | None) -> dict[int, Spacing]:
    """Header spacings of the levels whose rounded index value straddles the target.

    Reading one level's header can make spacings derived from it exact, so
    this repeats until every level is decided or has been read.
    """
    headers: dict[int, Spacing] = {}
    if read is None:
        return headers
    asked: set[int] = set()
    while True:
        spacings = level_spacings(volumes, headers)
        undecided = [
            i
            for i, sp in enumerate(spacings)
            if sp is not None and i not in asked and sp.bounds_um[0] <= _limit(mpp) < sp.bounds_um[1]
        ]
        if not undecided:
            return headers
        asked.update(undecided)
        headers.update(_read_headers(volumes, undecided, read))


def _choose_by_spacing(
    volumes: Sequence[Level], spacings: Sequence[Spacing | None], target: Target
) -> tuple[LevelChoice, int]:
    assert target.mpp is not None
    known = [(i, sp) for i, sp in enumerate(spacings) if sp is not None]
    # Fine enough for sure: even the top of a rounded value's interval is within the target.
    fine_enough = [(i, sp) for i, sp in known if sp.bounds_um[1] <= _limit(target.mpp)]
    if fine_enough:
        i, spacing = max(fine_enough, key=lambda pair: (pair[1].um, -pair[0]))
        reason = (
            f"coarsest of {len(volumes)} VOLUME levels with spacing <= {target.mpp:g} µm/px "
            f"({spacing.um:.6g} µm/px, {_source_text(spacing)})"
        )
    else:
        i, spacing = min(known, key=lambda pair: (pair[1].um, pair[0]))
        reason = (
            f"finest level is {spacing.um:.6g} µm/px ({_source_text(spacing)}), coarser than the target "
            f"{target.mpp:g} µm/px: output at the level's own spacing (never upsample)"
        )
    level = volumes[i]
    reason += _tie_note(volumes, level)
    size = output_size_px(level.size_px, spacing.xy_um, target)
    choice = LevelChoice(level, spacing.um, spacing.source == DERIVED, size, reason, spacing.source, spacing.xy_um)
    return choice, i


def _source_text(spacing: Spacing) -> str:
    if spacing.source == HEADER:
        return "from its header"
    if spacing.source == DERIVED:
        return "derived from size ratio"
    return "from the index" if spacing.exact else "from the index, rounded to 2 significant figures"


def _choose_by_size(volumes: Sequence[Level], spacings: Sequence[Spacing | None], target: Target) -> LevelChoice:
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
    spacing = spacings[i] if spacings else None
    reason += _tie_note(volumes, level)
    size = output_size_px(level.size_px, None, target)
    if spacing is None:
        return LevelChoice(level, None, False, size, reason)
    return LevelChoice(level, spacing.um, spacing.source == DERIVED, size, reason, spacing.source, spacing.xy_um)


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
