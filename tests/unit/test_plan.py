"""The plan: one row per slide, per-slide plan files rewritten only when they change."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from slidestock.plan.levels import Level, Target
from slidestock.plan.planner import plan_frame
from slidestock.plan.rows import batch_size_for, n_batches, read_batch_plan, write_batch_plans

LEVELS = [
    Level(
        "l0", "u0", ("ORIGINAL", "PRIMARY", "VOLUME", "NONE"), (8000, 6000), 0.25, "1.2.840.10008.1.2.4.50", 9_000_000
    ),
    Level("l2", "u2", ("DERIVED", "PRIMARY", "VOLUME", "NONE"), (500, 375), 4.0, "1.2.840.10008.1.2.4.50", 30_000),
]
COHORT = pd.DataFrame(
    {
        "slide_id": ["idc_only", "both", "gdc_only"],
        "fetch_from": ["idc", "idc", "gdc"],
        "SeriesInstanceUID": ["1.1", "1.2", ""],
        "crdc_series_uuid": ["s-1", "s-2", ""],
        "aws_bucket": ["idc-open-data", "idc-open-data-two", ""],
        "in_current_index": ["true", "true", ""],
        "idc_version": ["25", "25", "25"],
        "gdc_file_id": ["", "f-2", "f-3"],
        "gdc_filename": ["", "B.svs", "C.svs"],
        "gdc_md5": ["", "a" * 32, "b" * 32],
        "gdc_size": ["", "100", "200"],
    }
)


def test_plan_rows_by_path() -> None:
    levels = {"1.1": LEVELS, "1.2": LEVELS}
    plan = plan_frame(COHORT, levels, Target(mpp=15.0)).set_index("slide_id")
    assert plan.loc["idc_only", "url"] == "s3://idc-open-data/s-1/u2.dcm"
    assert plan.loc["both", "url"] == "s3://idc-open-data-two/s-2/u2.dcm"
    assert plan.loc["gdc_only", "url"] == "gdc:f-3"
    assert plan.loc["gdc_only", "md5"] == "b" * 32
    assert plan.loc["idc_only", "series_size_bytes"] == 9_030_000
    assert (plan.loc["idc_only", "output_columns"], plan.loc["idc_only", "output_rows"]) == (133, 100)


def test_prefer_gdc_sends_every_slide_with_a_file_id_to_the_gdc() -> None:
    levels = {"1.1": LEVELS, "1.2": LEVELS}
    plan = plan_frame(COHORT, levels, Target(mpp=15.0), prefer="gdc").set_index("slide_id")
    assert plan["url"].to_dict() == {
        "idc_only": "s3://idc-open-data/s-1/u2.dcm",
        "both": "gdc:f-2",
        "gdc_only": "gdc:f-3",
    }
    assert plan.loc["both", "instance_size"] == "100"


def test_series_without_instances_is_failed_with_the_reason() -> None:
    plan = plan_frame(COHORT.iloc[:1], {}, Target(mpp=15.0))
    assert plan.loc[0, "status"] == "failed"
    assert plan.loc[0, "reason"] == "idc_only: series 1.1 has no instances in sm_instance_index"


def test_batch_plans_are_rewritten_only_when_they_change(tmp_path: Path) -> None:
    levels = {"1.1": LEVELS, "1.2": LEVELS}
    plan = plan_frame(COHORT, levels, Target(mpp=15.0))
    assert write_batch_plans(plan, tmp_path, 2) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b00000.tsv", "b00001.tsv"]
    assert [row.slide_id for row in read_batch_plan(tmp_path / "b00000.tsv")] == plan["slide_id"].tolist()[:2]
    assert [row.slide_id for row in read_batch_plan(tmp_path / "b00001.tsv")] == plan["slide_id"].tolist()[2:]
    for p in tmp_path.iterdir():
        os.utime(p, ns=(1, 1))
    assert write_batch_plans(plan, tmp_path, 2) == 0
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == {"b00000.tsv": 1, "b00001.tsv": 1}
    coarser = plan_frame(COHORT, levels, Target(mpp=30.0))
    # Which batches change depends on where the GDC slide (whose plan ignores the target) sits.
    gdc_only = [i for i, row in enumerate(coarser.itertuples()) if row.url.startswith("gdc:")]
    assert gdc_only == [2]
    assert write_batch_plans(coarser, tmp_path, 2) == 1
    assert tmp_path.joinpath("b00001.tsv").stat().st_mtime_ns == 1
    both = {row.slide_id: row for row in read_batch_plan(tmp_path / "b00000.tsv")}["both"]
    assert both.output_size_px is not None
    assert both.output_size_px[0] == 67
    # One batch of everything: the stale second batch plan is removed.
    assert write_batch_plans(coarser, tmp_path, 100) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b00000.tsv"]
    assert len(read_batch_plan(tmp_path / "b00000.tsv")) == 3


def test_auto_batch_size_depends_on_the_cohort_alone() -> None:
    """About 20 batches of 500 to 1,000 slides; a number is taken as it is."""
    assert [batch_size_for(n, "auto") for n in (1, 1000, 10_000, 10_001, 20_000, 30_000)] == [
        500, 500, 500, 501, 1000, 1000,
    ]  # fmt: skip
    assert [n_batches(n, batch_size_for(n, "auto")) for n in (6, 1000, 10_000, 30_000)] == [1, 2, 20, 30]
    assert batch_size_for(10_000, 7) == 7
