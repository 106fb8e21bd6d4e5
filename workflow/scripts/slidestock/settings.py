"""What the outputs depend on: one typed value for the stock's images, one for the patches, written once per run.

:class:`StockSettings` is everything a slide's output depends on besides its
plan row (target, format, quality, pyramid, tissue mask, backend, associated
images, slidestock's version); :class:`PatchSettings` the same for its
patches. Both are built once from the config, and the plan, the batch digest,
the records, the redo notice, status, verify and the report all use them.
Each speaks the config's own terms (``target.mpp``, ``null``) when it says
what changed. The run's settings are written to
``results/cohort/settings.json`` when a run starts (not by a dry run), so
that tools reading a stock (status, verify, the jobs) judge it against the
config of the run that made it.

Light on imports: every Snakefile parse reads this module.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slidestock import __version__
from slidestock.config import with_defaults
from slidestock.errors import SlidestockError
from slidestock.plan.levels import FORMATS, Target

if TYPE_CHECKING:
    from slidestock.plan.rows import PlanRow

SLIDESTOCK_VERSION = __version__
# The name a record's settings give slidestock's own version.
VERSION_KEY = "slidestock"


def config_text(value: Any) -> str:
    """A value as the config file would spell it: ``null``, ``true``, ``15.0``, ``[label, overview]``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(config_text(v) for v in value) + "]"
    return str(value)


@dataclass(frozen=True)
class StockSettings:
    """Everything a slide's image, side files and record depend on besides its plan row."""

    target: Target
    format: str = "png"
    quality: int = 90
    pyramid: bool = False
    tissue_mask: bool = False
    backend: str = "pyvips"
    associated: tuple[str, ...] = ()
    version: str = SLIDESTOCK_VERSION

    @classmethod
    def from_target(cls, section: Mapping[str, Any], version: str = SLIDESTOCK_VERSION) -> StockSettings:
        """From the config's ``target`` section (the schema's defaults where a key is missing)."""
        target = with_defaults("target", section)
        return cls(
            target=Target(target["mpp"], target["max_px"], target["fallback_max_px"]),
            format=str(target["format"]),
            quality=int(target["quality"]),
            pyramid=bool(target["pyramid"]),
            tissue_mask=bool(target["tissue_mask"]),
            backend=str(target["backend"]),
            associated=tuple(target["associated"] or ()),
            version=version,
        )

    @classmethod
    def from_terms(cls, terms: Mapping[str, Any]) -> StockSettings:
        """From :meth:`terms` as written in settings.json."""
        section = {key.removeprefix("target."): value for key, value in terms.items() if key.startswith("target.")}
        return cls.from_target(section, str(terms[VERSION_KEY]))

    def terms(self) -> dict[str, Any]:
        """The settings in the config's terms (``target.<key>``), and slidestock's version."""
        return {
            "target.mpp": self.target.mpp,
            "target.max_px": self.target.max_px,
            "target.fallback_max_px": self.target.fallback_max_px,
            "target.format": self.format,
            "target.quality": self.quality,
            "target.pyramid": self.pyramid,
            "target.tissue_mask": self.tissue_mask,
            "target.backend": self.backend,
            "target.associated": list(self.associated),
            VERSION_KEY: self.version,
        }

    @property
    def suffix(self) -> str:
        """The image's file extension (``jpg`` for ``jpeg``)."""
        return FORMATS[self.format]

    def digest(self, plan: PlanRow) -> str:
        """What a slide's output depends on: its plan row, these settings and slidestock's version.

        Not the endpoint, the batch or the machine: moving where bytes come from, or
        how slides are grouped into jobs, redoes nothing. (The same text as 0.3.0 took.)
        """
        from slidestock.plan.rows import slide_plan_text

        settings = {
            "target": [self.target.mpp, self.target.max_px, self.target.fallback_max_px],
            "format": [self.format, self.quality, self.pyramid],
            "tissue_mask": self.tissue_mask,
            "backend": self.backend,
            "associated": list(self.associated),
            "slidestock": self.version,
        }
        return _sha256(slide_plan_text(plan) + json.dumps(settings, sort_keys=True))


@dataclass(frozen=True)
class PatchSettings:
    """The ``patches:`` config section as its patches depend on it, and the cohort's seed."""

    mpp: float
    size_px: int
    n_per_slide: int
    mode: str
    min_tissue: float
    seed: int

    @classmethod
    def from_config(cls, patches: Mapping[str, Any], seed: int) -> PatchSettings:
        """The settings; ``n_per_slide`` is 0 in grid mode, which takes every cell (so changing it redoes nothing)."""
        return cls(
            mpp=float(patches["mpp"]),
            size_px=int(patches["size_px"]),
            n_per_slide=int(patches["n_per_slide"]) if patches["mode"] == "random" else 0,
            mode=str(patches["mode"]),
            min_tissue=float(patches["min_tissue"]),
            seed=int(seed),
        )

    @classmethod
    def from_terms(cls, terms: Mapping[str, Any]) -> PatchSettings:
        """From :meth:`terms` as written in settings.json (``patches.format`` there too, ignored here)."""
        section = {key.removeprefix("patches."): value for key, value in terms.items() if key.startswith("patches.")}
        section["n_per_slide"] = section.get("n_per_slide") or 0
        return cls.from_config(section, terms["cohort.seed"])

    def terms(self) -> dict[str, Any]:
        """In the config's terms; ``patches.n_per_slide`` is null in grid mode, which ignores it."""
        return {
            "patches.mpp": self.mpp,
            "patches.size_px": self.size_px,
            "patches.n_per_slide": self.n_per_slide if self.mode == "random" else None,
            "patches.mode": self.mode,
            "patches.min_tissue": self.min_tissue,
            "cohort.seed": self.seed,
        }

    def digest(self, plan: PlanRow, image_sha256: str, version: str = SLIDESTOCK_VERSION) -> str:
        """What a slide's patches depend on: its patch plan row, these settings, its image's bytes and the version."""
        from slidestock.plan.rows import slide_plan_text

        return _sha256(slide_plan_text(plan) + json.dumps([asdict(self), image_sha256, version], sort_keys=True))


@dataclass(frozen=True)
class RunSettings:
    """A run's settings: the stock's, and the patches' (None when off) with their file format.

    ``run`` names the run that wrote them (its start, ``2026-12-06T074110Z``): what it moves out of
    the stock goes to ``results/stale/<run>/``.
    """

    stock: StockSettings
    patches: PatchSettings | None = None
    patch_format: str = "png"
    run: str = field(default="", compare=False)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], version: str = SLIDESTOCK_VERSION) -> RunSettings:
        """From the validated config."""
        patches = with_defaults("patches", config.get("patches") or {})
        enabled = bool(patches["enabled"])
        return cls(
            stock=StockSettings.from_target(config["target"], version),
            patches=PatchSettings.from_config(patches, config["cohort"]["seed"]) if enabled else None,
            patch_format=str(patches["format"]) if enabled else "png",
        )

    def as_json(self) -> dict[str, Any]:
        """What ``settings.json`` holds: the stock's and the patches' settings in the config's terms, and the run."""
        patches = None if self.patches is None else {**self.patches.terms(), "patches.format": self.patch_format}
        return {"stock": self.stock.terms(), "patches": patches, "run": self.run}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunSettings:
        stock = StockSettings.from_terms(data["stock"])
        terms = data.get("patches")
        run = str(data.get("run") or "")
        if not terms:
            return cls(stock, run=run)
        return cls(stock, PatchSettings.from_terms(terms), str(terms["patches.format"]), run)

    def write(self, path: Path) -> None:
        from slidestock.provenance import write_json

        write_json(path, self.as_json())

    @classmethod
    def read(cls, path: Path) -> RunSettings:
        """The settings a run wrote; a clear error when there are none (a run of slidestock before 0.4)."""
        try:
            return cls.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            raise SlidestockError(
                f"{path}: not found; expected the settings a run of slidestock 0.4 or later writes when it starts "
                "(run `snakemake --until plan` once to write them)"
            ) from None
        except (ValueError, KeyError, TypeError) as err:
            raise SlidestockError(f"{path}: cannot be read ({err}); expected a slidestock settings file") from None


def changed_terms(made: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, Any]:
    """The keys whose value differs, each with its value before (keys only in ``now`` count as unknown before)."""
    return {key: made.get(key, "unknown") for key, value in now.items() if made.get(key, "unknown") != value}


def describe_changes(before: Mapping[str, Sequence[Any]], now: Mapping[str, Any]) -> str:
    """``target.mpp 0.45 or 15.0 → null, target.max_px null → 2048``: each changed key once, in the config's terms.

    ``before`` maps each changed key to the values it had (in any order; said sorted and once each).
    """
    parts = []
    for key in sorted(before, key=_key_order):
        olds = sorted({config_text(v) for v in before[key]})
        parts.append(f"{key} {' or '.join(olds)} → {config_text(now.get(key))}")
    return ", ".join(parts)


def _key_order(key: str) -> tuple[int, str]:
    """The target's keys first, then the patches', then the version."""
    return (2 if key == VERSION_KEY else 1 if key.startswith(("patches.", "cohort.")) else 0, key)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
