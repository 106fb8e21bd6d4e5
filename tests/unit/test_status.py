"""What the tool says of a stock and what it leaves: judged against the current plan and settings, never older ones.

Each test builds a results folder as a run leaves it (plan files, settings.json, records, images) with the
library's own writers, then changes what the config would change.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from slidestock.plan.levels import Target
from slidestock.plan.rows import PLAN_COLUMNS, PlanRow, plan_line
from slidestock.provenance import sha256_file, write_json
from slidestock.settings import PatchSettings, RunSettings, StockSettings, describe_changes
from slidestock.state import DONE, FAILED, TO_DO, TO_REDO, Stock
from slidestock.tell.notice import cohort_change, redo_notice
from slidestock.tell.status import group_failures, read_status, reason_of, run_lines
from slidestock.tell.verify import verify
from slidestock.tidy import move_stale, moved_line, stale_beyond_plan, stale_patch_files, stale_slide_files, strays

NOW = StockSettings(Target(mpp=15.0))


def plan_row(slide_id: str, columns: int = 512) -> dict[str, Any]:
    row = dict.fromkeys(PLAN_COLUMNS, "")
    row.update(slide_id=slide_id, status="planned", reason="coarsest level", SeriesInstanceUID=f"1.2.{slide_id}",
               url=f"s3://idc-open-data/{slide_id}/l.dcm", instance_size=1000, series_size_bytes=100_000,
               level_columns=columns, level_rows=384, level_spacing_um=4.0)  # fmt: skip
    return row


def write_plan(results: Path, slide_ids: list[str], folder: str = "batches") -> list[PlanRow]:
    rows = [plan_row(s) for s in slide_ids]
    plans = results / "cohort" / folder
    plans.mkdir(parents=True, exist_ok=True)
    (plans / "b00000.tsv").write_text("\t".join(PLAN_COLUMNS) + "\n" + "".join(plan_line(r) for r in rows))
    (results / "cohort" / "instances.tsv").write_text("slide_id\n" + "".join(f"{s}\n" for s in slide_ids))
    return [PlanRow.from_columns(r) for r in rows]


def make_slide(results: Path, plan: PlanRow, settings: StockSettings, status: str = "done", **extra: Any) -> None:
    """A slide as a batch leaves it: the image (and mask) and its record, for ``settings``."""
    slides = results / "slides"
    slides.mkdir(parents=True, exist_ok=True)
    image = slides / f"{plan.slide_id}.{settings.suffix}"
    record: dict[str, Any] = {
        "slide_id": plan.slide_id,
        "status": status,
        "output_digest": settings.digest(plan),
        "settings": settings.terms(),
        "bytes_fetched": 1000,
        "series_size_bytes": 100_000,
        "output": None,
        "error": None,
    }
    if status == "done":
        image.write_bytes(f"pixels of {plan.slide_id} at {settings.target.describe()}".encode())
        output = {"path": f"results/slides/{image.name}", "bytes": image.stat().st_size, "sha256": sha256_file(image)}
        if settings.tissue_mask:
            mask = slides / f"{plan.slide_id}.mask.png"
            mask.write_bytes(b"mask")
            output["mask_path"] = f"results/slides/{mask.name}"
        record["output"] = output
    record.update(extra)
    write_json(slides / f"{plan.slide_id}.json", record)


def stock_at(results: Path, now: StockSettings = NOW, patches: PatchSettings | None = None, fmt: str = "png") -> Stock:
    RunSettings(now, patches, fmt).write(results / "cohort" / "settings.json")
    return Stock.at(results)


def test_records_of_another_target_are_to_redo_not_done(tmp_path: Path) -> None:
    """Observed: status said done 6, finished, while two records were made for the previous target.mpp."""
    plans = write_plan(tmp_path, ["a", "b", "c"])
    for plan in plans:
        make_slide(tmp_path, plan, StockSettings(Target(mpp=20.0)) if plan.slide_id != "a" else NOW)
    stock = stock_at(tmp_path)
    assert [s.state for s in stock.slide_states()] == [DONE, TO_REDO, TO_REDO]
    status = read_status(tmp_path, now=0.0)
    assert (status.done, status.failed, status.to_redo, status.to_do) == (1, 0, 2, 0)
    assert status.bytes_fetched == 1000  # the current record's alone


def test_a_changed_plan_row_makes_its_record_to_redo(tmp_path: Path) -> None:
    [plan] = write_plan(tmp_path, ["a"])
    make_slide(tmp_path, plan, NOW)
    # Re-planned: the same slide now at another level.
    plans = tmp_path / "cohort" / "batches" / "b00000.tsv"
    plans.write_text("\t".join(PLAN_COLUMNS) + "\n" + plan_line(plan_row("a", columns=256)))
    assert [s.state for s in stock_at(tmp_path).slide_states()] == [TO_REDO]


def test_every_output_setting_is_in_the_digest() -> None:
    """Observed: tissue_mask, quality and backend redid every slide but the notice said nothing of them."""
    [plan] = [PlanRow.from_columns(plan_row("a"))]
    changes = [
        {"target": Target(mpp=20.0)}, {"target": Target(max_px=2048)}, {"format": "webp"}, {"quality": 80},
        {"pyramid": True}, {"tissue_mask": True}, {"backend": "openslide"}, {"associated": ("label",)},
        {"version": "9.9.9"},
    ]  # fmt: skip
    digests = {NOW.digest(plan)} | {replace(NOW, **change).digest(plan) for change in changes}
    assert len(digests) == len(changes) + 1
    for change in changes:
        terms = replace(NOW, **change).terms()
        assert {k for k in terms if terms[k] != NOW.terms()[k]}  # each one named by a config key
    assert StockSettings.from_terms(replace(NOW, quality=80, associated=("label",)).terms()) == replace(
        NOW, quality=80, associated=("label",)
    )


def test_tidy_moves_what_is_not_the_stock_and_deletes_nothing(tmp_path: Path) -> None:
    """Observed: after png → webp → png and tissue_mask on → off, results/slides held 6 .webp and 4 .mask.png
    files of earlier runs, and slides dropped from the cohort kept their images and records."""
    a, c = write_plan(tmp_path, ["a", "c"])
    make_slide(tmp_path, a, replace(NOW, format="webp", tissue_mask=True))  # an earlier config's a
    make_slide(tmp_path, a, NOW)  # now's a: png, no mask
    make_slide(tmp_path, c, replace(NOW, target=Target(mpp=20.0)))  # c made for another target
    make_slide(tmp_path, PlanRow.from_columns(plan_row("b")), NOW)  # b has left the cohort
    (tmp_path / "slides" / ".a.png.partial").write_bytes(b"half")
    (tmp_path / "batches").mkdir()
    for name in ("b00000.tsv", "b00001.tsv"):
        (tmp_path / "batches" / name).write_text("slide_id\n")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    stock = stock_at(tmp_path)
    slides = stock.slide_states()
    assert [str(p.relative_to(tmp_path)) for p in strays(stock, slides, [])] == [
        "batches/b00001.tsv", "slides/.a.png.partial", "slides/a.mask.png", "slides/a.webp", "slides/b.json",
        "slides/b.png", "slides/c.json", "slides/c.png",
    ]  # fmt: skip
    run = "2026-12-06T074110Z"
    # The plan moves what no planned slide or batch owns; each batch job its own slides' old files.
    move_stale(stale_beyond_plan(tmp_path, {"a", "c"}, {"b00000"}, patches=False), tmp_path, run, "plan")
    move_stale(stale_slide_files(tmp_path / "slides", slides), tmp_path, run, "batch-b00000")
    assert sorted(p.name for p in (tmp_path / "slides").iterdir()) == ["a.json", "a.png"]
    assert sorted(p.name for p in (tmp_path / "batches").iterdir()) == ["b00000.tsv"]
    stale = tmp_path / "stale" / "2026-12-06T074110Z"
    assert sorted(str(p.relative_to(stale)) for p in stale.rglob("*") if p.is_file() and p.parent != stale) == [
        "batches/b00001.tsv", "slides/.a.png.partial", "slides/a.mask.png", "slides/a.webp", "slides/b.json",
        "slides/b.png", "slides/c.json", "slides/c.png",
    ]  # fmt: skip
    assert sorted(p.name for p in stale.glob("moved-*.tsv")) == ["moved-batch-b00000.tsv", "moved-plan.tsv"]
    # Nothing deleted: every file is where it was or under stale/, with the same bytes.
    after = {p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "cohort" not in p.parts}
    after -= {p.read_bytes() for p in stale.glob("moved-*.tsv")}
    assert {v for p, v in before.items() if "cohort" not in p.parts} == after
    assert moved_line(tmp_path, run) == (
        f"slidestock: moved 8 files that are not this stock's to {stale}/: "
        "2 made for other settings or an earlier plan, "
        "2 not made by this config (another format; a mask, an associated image or a patch format turned off), "
        "2 of slides no longer in the cohort, 1 of batches the plan no longer has, "
        "1 partly written by an interrupted run"
    )
    again = stock.slide_states()
    assert strays(stock, again, []) == []  # nothing left to move
    assert [s.state for s in again] == [DONE, TO_DO]  # c's old record moved: to do, not done
    assert [line.split("\t")[2] for line in (stale / "moved-plan.tsv").read_text().splitlines()] == [
        "why", "of slides no longer in the cohort", "of slides no longer in the cohort",
        "of batches the plan no longer has",
    ]  # fmt: skip


def test_patches_of_other_settings_or_of_a_config_without_them_move_out(tmp_path: Path) -> None:
    [a] = write_plan(tmp_path, ["a"])
    write_plan(tmp_path, ["a"], "patches")
    make_slide(tmp_path, a, NOW)
    patches = PatchSettings(mpp=0.5, size_px=256, n_per_slide=4, mode="random", min_tissue=0.5, seed=42)
    folder = tmp_path / "patches" / "a"
    folder.mkdir(parents=True)
    rows = []
    for k in range(2):
        (folder / f"a_{k:05d}.png").write_bytes(b"patch")
        sha = sha256_file(folder / "a_00000.png")
        rows.append({"patch_id": f"a_{k:05d}", "path": f"a/a_{k:05d}.png", "sha256": sha, "shard": "", "member": ""})
    image = sha256_file(tmp_path / "slides" / "a.png")
    record = {"slide_id": "a", "status": "done", "digest": patches.digest(a, image), "patches": rows,
              "settings": {"mpp": 0.5, "size_px": 256, "n_per_slide": 4, "mode": "random", "min_tissue": 0.5,
                           "seed": 42}, "bytes_fetched": 500}  # fmt: skip
    write_json(tmp_path / "patches" / "a.json", record)
    (folder / "a_00007.png").write_bytes(b"an older patch")
    stock = stock_at(tmp_path, patches=patches)
    slides = stock.slide_states()
    assert [s.state for s in stock.patch_states(slides)] == [DONE]

    def stale(stock: Stock, fmt: str = "png") -> list[str]:
        found = stale_patch_files(tmp_path / "patches", stock.patch_states(slides), fmt)
        return sorted(str(s.path.relative_to(tmp_path)) for s in found)

    assert stale(stock) == ["patches/a/a_00007.png"]
    bigger = replace(patches, size_px=512)
    stock = stock_at(tmp_path, patches=bigger)
    assert [s.state for s in stock.patch_states(slides)] == [TO_REDO]
    assert stale(stock) == ["patches/a", "patches/a.json"]
    assert redo_notice(tmp_path, RunSettings(NOW, bigger), ["a"]) == (
        "slidestock: the patches of 1 slides differ (patches.size_px 256 → 512): a run redoes them; "
        "the files no longer of the stock move to results/stale/"
    )
    off = stale_beyond_plan(tmp_path, {"a"}, {"b00000"}, patches=False)
    assert sorted(str(s.path.relative_to(tmp_path)) for s in off) == ["patches/a", "patches/a.json"]
    # PNG → webdataset: a done slide's PNG files stay until its job packs them into the shard.
    assert stale(stock_at(tmp_path, patches=patches, fmt="webdataset"), "webdataset") == ["patches/a/a_00007.png"]


def test_redo_notice_names_each_changed_key_once_in_the_configs_terms(tmp_path: Path) -> None:
    """Observed: `target.mpp 0.45 → None, target.mpp 15.0 → None`, and nothing said of tissue_mask or backend."""
    plans = write_plan(tmp_path, ["a", "b", "c", "d"])
    make_slide(tmp_path, plans[0], replace(NOW, target=Target(mpp=0.45)))
    make_slide(tmp_path, plans[1], NOW)
    make_slide(tmp_path, plans[2], replace(NOW, tissue_mask=True, backend="openslide"))
    now = RunSettings(StockSettings(Target(max_px=2048)))
    assert redo_notice(tmp_path, now, ["a", "b", "c", "d"]) == (
        "slidestock: 3 of the 3 slides in the cohort made before differ from this config ("
        "target.backend openslide → pyvips, target.max_px null → 2048, target.mpp 0.45 or 15.0 → null, "
        "target.tissue_mask true → false): a run redoes them; the files no longer of the stock move to results/stale/"
    )
    assert redo_notice(tmp_path, RunSettings(NOW), ["a", "b", "c", "d"]) == (
        "slidestock: 2 of the 3 slides in the cohort made before differ from this config ("
        "target.backend openslide → pyvips, target.mpp 0.45 → 15.0, target.tissue_mask true → false): "
        "a run redoes them; the files no longer of the stock move to results/stale/"
    )


def test_redo_notice_counts_only_the_cohort_it_will_have(tmp_path: Path) -> None:
    """Observed: after n 6 → 3 it said "6 of the 6 slides ... redoes them" though 3 were redone."""
    plans = write_plan(tmp_path, list("abcdef"))
    for plan in plans:
        make_slide(tmp_path, plan, replace(NOW, target=Target(mpp=20.0)))
    assert redo_notice(tmp_path, RunSettings(NOW), ["a", "b", "c"]) == (
        "slidestock: 3 of the 3 slides in the cohort made before differ from this config (target.mpp 20.0 → 15.0): "
        "a run redoes them; 3 slides made before are no longer in the cohort; "
        "the files no longer of the stock move to results/stale/"
    )
    assert redo_notice(tmp_path, RunSettings(NOW), None, "cohort.n null → 3") == (
        "slidestock: the cohort is drawn again (cohort.n null → 3); 6 of the 6 slides made before differ from this "
        "config (target.mpp 20.0 → 15.0): a run redoes those still in it; "
        "the files no longer of the stock move to results/stale/"
    )
    assert redo_notice(tmp_path, RunSettings(replace(NOW, target=Target(mpp=20.0))), list("abcdef")) is None


def test_records_of_slidestock_0_3_are_judged_by_their_digest(tmp_path: Path) -> None:
    """0.3 records name only their target and version: a notice must not guess at the rest."""
    [plan] = write_plan(tmp_path, ["a"])
    old = replace(NOW, version="0.3.0")
    record = {"slide_id": "a", "status": "done", "output_digest": old.digest(plan), "software": {"slidestock": "0.3.0"},
              "target": {"mpp": 15.0, "max_px": None, "fallback_max_px": None, "format": "png"}}  # fmt: skip
    (tmp_path / "slides").mkdir()
    (tmp_path / "slides" / "a.json").write_text(json.dumps(record))
    (tmp_path / "slides" / "e.json").write_text("{ half written")  # a record being replaced counts as none
    assert redo_notice(tmp_path, RunSettings(old), ["a"]) is None  # the same digest: kept
    assert redo_notice(tmp_path, RunSettings(replace(NOW, version="0.4.0")), ["a"]) == (
        "slidestock: 1 of the 1 slides in the cohort made before differ from this config (slidestock 0.3.0 → 0.4.0): "
        "a run redoes them; the files no longer of the stock move to results/stale/"
    )
    assert redo_notice(tmp_path, RunSettings(replace(old, quality=80)), ["a"]) == (
        "slidestock: 1 of the 1 slides in the cohort made before differ from this config (an earlier plan or "
        "settings its record does not name): "
        "a run redoes them; the files no longer of the stock move to results/stale/"
    )


def test_cohort_change_reads_the_lock_header(tmp_path: Path) -> None:
    lock = tmp_path / "cohort.tsv"
    lock.write_text(
        '# source: idc\n# idc_version: 25\n# filter: {"collection_id": ["demo_brca"]}\n# n: null\n# seed: 42\n'
        "# stratify_by: null\n# one_per_patient: false\nslide_id\tx\na\t1\n"
    )
    cohort = {"source": "idc", "filter": {"collection_id": ["demo_brca"]}, "n": None, "seed": 42,
              "stratify_by": None, "one_per_patient": False}  # fmt: skip
    assert cohort_change(cohort, 25, lock) is None
    assert cohort_change({**cohort, "n": 3, "seed": 7}, 25, lock) == "cohort.n null → 3, cohort.seed 42 → 7"
    assert cohort_change(cohort, 26, lock) == "cohort.idc_version 25 → 26"
    assert cohort_change(cohort, 25, tmp_path / "none.tsv") is None


def test_describe_changes_says_config_values() -> None:
    now = {"target.mpp": None, "target.associated": ["label", "overview"]}
    said = describe_changes({"target.associated": [[]], "target.mpp": [15.0]}, now)
    assert said == "target.associated [] → [label, overview], target.mpp 15.0 → null"


def test_alike_failures_group_and_the_first_is_shown_as_said() -> None:
    """Observed: every number masked: `pixel data item at byte # is not a complete item of # bytes ...`."""
    one = "s1: pixel data item at byte 51200 is not a complete item of 4096 bytes in a 60000 byte file"
    two = "s2: pixel data item at byte 800 is not a complete item of 96 bytes in a 1000 byte file"
    assert reason_of("s1", one) == reason_of("s2", two)
    [group] = group_failures([("s1", one, False), ("s2", two, False)])
    assert group.line() == f"       2 x {one}  (permanent; and 1 alike)"
    assert group.slides == ("s1", "s2")
    pillow = "frame 3 cannot be decoded: cannot identify image file <_io.BytesIO object at 0x{}>"
    assert reason_of("s1", pillow.format("7fbfc8e75670")) == reason_of("s2", pillow.format("7f00aa112233"))


def test_end_lines_say_this_run_and_the_stock_apart(tmp_path: Path) -> None:
    """Observed: a no-op re-run said `fetched 274,702`: the whole stock's bytes, as if this run's."""
    plans = write_plan(tmp_path, ["a", "b", "c", "d"])
    make_slide(tmp_path, plans[0], NOW)
    make_slide(tmp_path, plans[1], NOW)
    make_slide(tmp_path, plans[2], NOW, status="failed", retryable=True, error="c: HTTP 503 after 3 attempts")
    make_slide(tmp_path, plans[3], NOW, status="failed", retryable=False, error="d: frame 3 cannot be decoded")
    started = 2_000_000.0
    for name, when in (("a", started - 100), ("b", started + 5), ("c", started + 6), ("d", started - 50)):
        os.utime(tmp_path / "slides" / f"{name}.json", (when, when))
    stock = stock_at(tmp_path)
    for planned in ("instances.tsv", "settings.json"):
        os.utime(tmp_path / "cohort" / planned, (started - 200, started - 200))
    report = tmp_path / "report" / "index.html"
    report.parent.mkdir()
    report.write_text("<html></html>")
    os.utime(report, (started + 10, started + 10))  # made by this run, after every record
    lines, failed = run_lines(stock, started, "snakemake --cores 2")
    assert failed == 2
    assert lines == [
        "       1 x c: HTTP 503 after 3 attempts  (may pass on a re-run)",
        "       1 x d: frame 3 cannot be decoded  (permanent)",
        "slidestock: this run: 1 slide made, 1 failed, 2 kept from before; fetched 2,000 bytes for them",
        "slidestock: the stock: 2 of 4 slides done, 2 failed; 4,000 of 400,000 series bytes fetched for it (1.00 %); "
        "1 may pass: `snakemake --cores 2` again retries them; 1 permanent: fetch.redo_failed: true retries those; "
        "report: results/report/index.html",
    ]
    lines, _ = run_lines(stock, started + 100, "snakemake")
    assert lines[2] == "slidestock: this run: 0 slides made, 0 failed, 4 kept from before; fetched 0 bytes for them"
    assert lines[3].endswith("; report: results/report/index.html")  # a re-run that made nothing: still current
    # Observed: a run stopped after planning a new config pointed to the report of the stock before, as if current.
    os.utime(tmp_path / "cohort" / "settings.json", (started + 200, started + 200))
    lines, _ = run_lines(stock, started + 150, "snakemake")
    assert lines[3].endswith(
        "; results/report/index.html is of the stock before this run (which stopped before its report)"
    )


def test_a_stock_with_nothing_made_says_so_not_zero_of_zero_bytes(tmp_path: Path) -> None:
    """Observed: `0 of 0 series bytes fetched for it` after a run that stopped at the plan, the series 94 MB."""
    write_plan(tmp_path, ["a", "b"])
    lines, failed = run_lines(stock_at(tmp_path), 2_000_000.0, "snakemake")
    assert failed == 0
    assert lines[-1] == (
        "slidestock: the stock: 0 of 2 slides done, 0 failed, 2 not made; nothing of it made yet; "
        "no report yet (this run stopped before its report)"
    )


def test_verify_names_a_mismatch_a_record_of_other_settings_and_strays(tmp_path: Path) -> None:
    a, b, c = write_plan(tmp_path, ["a", "b", "c"])
    for plan in (a, b):
        make_slide(tmp_path, plan, NOW)
    make_slide(tmp_path, c, replace(NOW, format="webp"))
    stock = stock_at(tmp_path)
    checked = verify(stock, tmp_path.parent)
    assert checked.summary() == (
        "verify: 0 images match their records, 3 do not; 2 files in the stock's folders are not of it"
    )  # records name results/slides/...: relative to the run's folder, which this one is not
    (tmp_path.parent / "results").symlink_to(tmp_path)
    (tmp_path / "slides" / "b.png").write_bytes(b"changed")
    checked = verify(stock, tmp_path.parent)
    assert [(c.slide_id, c.outcome) for c in checked.images] == [("a", "ok"), ("b", "mismatch"), ("c", "not made")]
    # Observed (a newcomer's trial): "1 do not; 1 files ... are not of it".
    assert checked.summary() == (
        "verify: 1 image matches its record, 2 do not; 2 files in the stock's folders are not of it"
    )
    (tmp_path / "slides" / "c.json").unlink()
    assert verify(stock, tmp_path.parent).summary().endswith(", 2 do not; 1 file in the stock's folders is not of it")
    problem = checked.problem()
    assert problem is not None
    assert re.fullmatch(
        r"verify: b: results/slides/b\.png: 7 bytes; its record says \d+; "
        r"c: not made for the current plan and settings; "
        r"2 paths not of this stock \(e\.g\. .*/slides/c\.json\): a run moves them to results/stale/",
        problem,
    )


def test_settings_round_trip_through_their_file(tmp_path: Path) -> None:
    patches = PatchSettings(mpp=0.5, size_px=256, n_per_slide=0, mode="grid", min_tissue=0.5, seed=3)
    run = RunSettings(replace(NOW, associated=("label", "overview"), quality=70), patches, "webdataset")
    run.write(tmp_path / "settings.json")
    assert RunSettings.read(tmp_path / "settings.json") == run
    assert json.loads((tmp_path / "settings.json").read_text())["patches"]["patches.n_per_slide"] is None
    with pytest.raises(Exception, match=r"none\.json: not found; expected the settings a run of slidestock 0\.4"):
        RunSettings.read(tmp_path / "none.json")


def test_a_failed_record_of_the_current_settings_counts_as_failed(tmp_path: Path) -> None:
    [a] = write_plan(tmp_path, ["a"])
    make_slide(tmp_path, a, NOW, status="failed", retryable=False, error="a: no level")
    [state] = stock_at(tmp_path).slide_states()
    assert (state.state, state.may_pass) == (FAILED, False)
