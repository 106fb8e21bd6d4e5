"""Configuration: validation against the JSON schema, defaults, and the IDC release asked for.

Nothing heavier than jsonschema and YAML: every Snakefile parse runs it.

Messages name the key, the value found and what was expected, e.g.
``config key cohort.n: got 0; expected an integer >= 1 (or null for all)``.
"""

from __future__ import annotations

import copy
import difflib
import functools
import importlib.metadata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from slidestock.errors import ConfigError
from slidestock.plan.levels import target_of

# The schema: every key, its type, what a wrong value is told, and its default (the only place defaults are given).
SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


@functools.cache
def load_schema(path: Path = SCHEMA) -> dict[str, Any]:
    """The schema at ``path``, read once per process (every job and every Snakefile parse reads it): not to be
    changed by its callers. libyaml's loader where PyYAML has it, five times faster."""
    schema = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert isinstance(schema, dict)
    return schema


def _key(path: Any) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _expected(schema: Mapping[str, Any]) -> str:
    return str(schema.get("expected") or schema.get("description") or schema)


def describe_error(error: jsonschema.ValidationError) -> str:
    """One line: the key, the value found and what the schema expects there."""
    key = _key(error.absolute_path)
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    if error.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        extra = sorted(set(error.instance if isinstance(error.instance, dict) else ()) - set(allowed))
        where = f"{key}." if error.absolute_path else ""
        near = difflib.get_close_matches(extra[0], allowed, n=1) if len(extra) == 1 else []
        return (
            f"config key {where}{extra[0]}: not a known key"
            + (f" (did you mean {where}{near[0]}?)" if near else "")
            + f"; expected one of: {', '.join(allowed)}"
            if len(extra) == 1
            else f"config keys {', '.join(where + e for e in extra)}: not known; expected one of: {', '.join(allowed)}"
        )
    if error.validator == "required":
        return f"config key {key}: {error.message}"
    return f"config key {key}: got {error.instance!r}; expected {_expected(schema)}"


def _fill_defaults(config: dict[str, Any], schema: Mapping[str, Any], every_section: bool = False) -> None:
    """The schema's defaults put where ``config`` has no value; ``every_section``: required sections too."""
    for name, sub in schema.get("properties", {}).items():
        if name not in config and "default" in sub:
            config[name] = copy.deepcopy(sub["default"])
        if name not in config and every_section and sub.get("type") == "object":
            config[name] = {}
        if isinstance(config.get(name), dict) and sub.get("type") == "object":
            _fill_defaults(config[name], sub, every_section)


@functools.cache
def _defaults() -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    _fill_defaults(defaults, load_schema(), every_section=True)
    return defaults


def with_defaults(section: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """A config section (``target``, ``cohort.parquet``) with the schema's defaults where ``values`` has no key:
    for sections read from elsewhere than the validated config (settings.json, a record), or in part."""
    defaults = _defaults()
    for name in section.split("."):
        defaults = defaults.get(name) or {}
    return {**copy.deepcopy(defaults), **values}


def validate_config(config: Mapping[str, Any], schema_path: Path = SCHEMA) -> dict[str, Any]:
    """A validated copy of ``config`` with defaults filled in; raises :class:`ConfigError`."""
    schema = load_schema(schema_path)
    checked = copy.deepcopy(dict(config))
    _fill_defaults(checked, schema)
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(checked), key=lambda e: _key(e.absolute_path))
    if errors:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  {describe_error(e)}" for e in errors))
    target_of(checked)
    resolve_idc_version(checked["cohort"]["idc_version"])
    return checked


def check_input_files(config: Mapping[str, Any], base: Path) -> None:
    """The files the cohort is read from exist (relative to ``base``, the working directory).

    Checked when the workflow is parsed, so that a dry run says so too, and a
    missing manifest can never leave an old cohort standing in its place.
    """
    cohort = config["cohort"]
    missing = [
        f"config key cohort.{key}: {cohort[key]!r} does not exist (in {base}); expected a {what} file"
        for key, what in (("manifest", "manifest"), ("sql", "SQL"))
        if cohort.get(key) and not (base / cohort[key]).is_file()
    ]
    if missing:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  {line}" for line in missing))


def installed_idc_version() -> int:
    """The IDC release of the installed idc-index-data wheel (its major version), from its metadata."""
    return int(importlib.metadata.version("idc-index-data").split(".")[0])


def resolve_idc_version(requested: int | str) -> int:
    """The IDC release number for ``cohort.idc_version`` (``current`` or an integer)."""
    installed = installed_idc_version()
    if requested == "current":
        return installed
    if not isinstance(requested, int) or requested < 1:
        raise ConfigError(f"cohort.idc_version: got {requested!r}; expected 'current' or a release number")
    if requested > installed:
        raise ConfigError(
            f"cohort.idc_version: got {requested}; the installed idc-index-data holds IDC "
            f"v{installed}. Upgrade it (pip install --upgrade idc-index-data, or pin "
            f"idc-index-data=={requested}.* in requirements.txt) or use idc_version: current"
        )
    return requested
