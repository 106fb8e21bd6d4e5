"""Config validation: each message names the key, the value and what was expected."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from slidestock.config import validate_config
from slidestock.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def base() -> dict[str, Any]:
    loaded = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def with_change(path: str, value: Any) -> dict[str, Any]:
    config = copy.deepcopy(base())
    *parents, last = path.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return config


@pytest.mark.parametrize("name", ["config.yaml", "demo.yaml"])
def test_shipped_configs_are_valid(name: str) -> None:
    config = yaml.safe_load((REPO / "config" / name).read_text())
    assert validate_config(config, SCHEMA)["target"]["mpp"] == 15.0


def test_defaults_are_filled_in() -> None:
    checked = validate_config({"cohort": {"n": 5}, "target": {"mpp": 10}, "fetch": {}}, SCHEMA)
    assert checked["cohort"] == {
        "n": 5,
        "source": "idc",
        "idc_version": "current",
        "filter": {"Modality": ["SM"]},
        "sql": None,
        "sql_params": {},
        "manifest": None,
        "seed": 42,
        "stratify_by": None,
        "one_per_patient": False,
        "parquet": {"url": None, "mode": "in_place", "cache": "resources/idc_parquet"},
        "tables": None,
    }
    assert checked["fetch"] == {
        "endpoint": "aws",
        "attempts": 3,
        "prefer": "idc",
        "batch_size": "auto",
        "workers": 16,
        "timeout": 1800,
        "retry_count": 10,
        "redo_failed": False,
    }
    assert checked["gdc"] == {"api": "https://api.gdc.cancer.gov", "token_file": None, "mode": "range", "parallel": 4}
    assert checked["report"] == {"contact_sheet_max": 1000, "accept_failures": False}
    assert checked["target"] == {
        "mpp": 10,
        "max_px": None,
        "fallback_max_px": None,
        "format": "png",
        "quality": 90,
        "pyramid": False,
        "backend": "pyvips",
        "associated": [],
        "tissue_mask": False,
    }


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("cohort.n", 0, "config key cohort.n: got 0; expected an integer >= 1 (or null for all)"),
        ("cohort.n", "ten", "config key cohort.n: got 'ten'; expected an integer >= 1"),
        ("cohort.seed", 4.5, "config key cohort.seed: got 4.5; expected an integer"),
        ("cohort.seed", "42", "config key cohort.seed: got '42'; expected an integer"),
        ("fetch.batch_size", 0, "config key fetch.batch_size: got 0; expected auto, or an integer from 1 to 100000"),
        ("fetch.batch_size", "autox", "config key fetch.batch_size: got 'autox'; expected auto, or an integer"),
        (
            "cohort.idc_version",
            "latest",
            "config key cohort.idc_version: got 'latest'; expected 'current' or",
        ),
        ("cohort.filter", {"collection_id": []}, "config key cohort.filter.collection_id: got []"),
        ("target.format", "bmp", "config key target.format: got 'bmp'; expected png, jpeg, tiff or webp"),
        ("target.quality", 0, "config key target.quality: got 0; expected an integer from 1 to 100"),
        ("cohort.source", "tcia", "config key cohort.source: got 'tcia'; expected one of idc, idc_parquet,"),
        (
            "cohort.one_per_patient",
            "yes",
            "config key cohort.one_per_patient: got 'yes'; expected true or false",
        ),
        (
            "cohort.parquet",
            {"mode": "stream"},
            "config key cohort.parquet.mode: got 'stream'; expected in_place",
        ),
        ("target.mpp", -1, "config key target.mpp: got -1; expected a number > 0"),
        ("target.fallback_max_px", 0, "config key target.fallback_max_px: got 0; expected null (skip slides"),
        ("fetch.endpoint", "ftp://x", "config key fetch.endpoint: got 'ftp://x'; expected aws, gcs or"),
        ("cohort.colection_id", ["x"], "config key cohort.colection_id: not a known key; expected one of:"),
        ("extra", 1, "config key extra: not a known key; expected one of: cohort, fetch, gdc, patches, report, target"),
        ("patches.mode", "tiles", "config key patches.mode: got 'tiles'; expected random (n_per_slide patches"),
        ("patches.min_tissue", 1.5, "config key patches.min_tissue: got 1.5; expected a number from 0 to 1"),
        ("patches.size_px", 8, "config key patches.size_px: got 8; expected an integer from 16 to 4096"),
        ("patches.format", "zarr", "config key patches.format: got 'zarr'; expected png (one file per patch)"),
        ("patches.mpp", 0, "config key patches.mpp: got 0; expected a number > 0"),
        (
            "patches.sizepx",
            256,
            "config key patches.sizepx: not a known key (did you mean patches.size_px?); "
            "expected one of: enabled, format",
        ),
        (
            "report.contact_sheet_max",
            -1,
            "config key report.contact_sheet_max: got -1; expected null (every finished slide), or a whole number",
        ),
        ("report.contact_sheet_max", "all", "config key report.contact_sheet_max: got 'all'; expected null"),
    ],
)
def test_bad_values_name_key_value_and_expectation(path: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config(with_change(path, value), SCHEMA)
    assert message in str(info.value)


def test_fallback_max_px_with_max_px_is_rejected() -> None:
    config = with_change("target.max_px", 2048)
    config["target"].update(mpp=None, fallback_max_px=512)
    with pytest.raises(ConfigError, match=r"target.fallback_max_px: got 512 with mpp=None; expected null"):
        validate_config(config, SCHEMA)


def test_both_mpp_and_max_px_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"got mpp=15.0 and max_px=2048; expected exactly one"):
        validate_config(with_change("target.max_px", 2048), SCHEMA)


def test_every_error_is_reported_at_once() -> None:
    config = with_change("cohort.n", 0)
    config["cohort"]["seed"] = "x"
    with pytest.raises(ConfigError) as info:
        validate_config(config, SCHEMA)
    assert "cohort.n" in str(info.value)
    assert "cohort.seed" in str(info.value)


@pytest.mark.parametrize("path", sorted((REPO / "config" / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_are_valid(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    checked = validate_config(config, SCHEMA)
    sources = {"gdc": "gdc_manifest", "idc_stratified": "idc", "idc_sql": "idc"}
    assert checked["cohort"]["source"] == sources.get(path.stem, path.stem)
    for key in ("manifest", "sql"):
        if checked["cohort"][key] and not checked["cohort"][key].startswith(
            ("config/examples/colleague", "resources/")
        ):
            assert (REPO / checked["cohort"][key]).is_file()


def test_a_release_newer_than_the_installed_index_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"cohort.idc_version: got 99; the installed idc-index-data holds IDC v25"):
        validate_config(with_change("cohort.idc_version", 99), SCHEMA)


def test_a_missing_manifest_or_sql_file_is_a_config_error(tmp_path: Path) -> None:
    from slidestock.config import check_input_files

    config = validate_config(with_change("cohort.manifest", "manifests/cohort.tsv"), SCHEMA)
    config["cohort"]["sql"] = "query.sql"
    with pytest.raises(ConfigError) as info:
        check_input_files(config, tmp_path)
    assert f"config key cohort.manifest: 'manifests/cohort.tsv' does not exist (in {tmp_path})" in str(info.value)
    assert "config key cohort.sql: 'query.sql' does not exist" in str(info.value)
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "cohort.tsv").write_text("id\tfilename\tmd5\tsize\tstate\n")
    (tmp_path / "query.sql").write_text("SELECT 1")
    check_input_files(config, tmp_path)
