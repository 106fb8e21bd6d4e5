"""Rule `plan`: choose one instance per slide and write ``instances.tsv``."""

import logging
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821

from slidestock.jobs.common import log_job, run_job

smk = snakemake  # noqa: F821
log_job(smk.log[0])


def main() -> None:
    # Imported here, where Ctrl-C ends the job quietly (run_job), not at its start.
    from typing import NoReturn

    from slidestock.errors import SlidestockError, UnreachableError
    from slidestock.plan.levels import Target, base_size
    from slidestock.plan.planner import plan_frame, pyramid_indices
    from slidestock.plan.rows import batch_name, batch_size_for, n_batches, write_batch_plans
    from slidestock.read.headers import HeaderReader
    from slidestock.records import PATCH_PLAN_COLUMNS
    from slidestock.select.lockfile import read_lock
    from slidestock.select.sources import cohort_connection, instance_levels
    from slidestock.settings import StockSettings
    from slidestock.tidy import move_stale, run_of, stale_beyond_plan

    lock = read_lock(Path(smk.input.lock))
    idc = lock[lock["fetch_from"] == "idc"]
    version = int(lock["idc_version"].iloc[0]) if len(lock) else 0
    # The endpoint is read from the config, not a parameter: changing it re-runs nothing.
    config = {"cohort": smk.params.cohort, "fetch": smk.config["fetch"]}
    target = StockSettings.from_target(smk.params.target).target
    # Headers are read where idc-index's rounded spacings cannot decide the level, and for the output size.
    fetch = smk.config["fetch"]
    reader = HeaderReader(fetch["endpoint"], attempts=fetch["attempts"], timeout_s=min(30.0, fetch["timeout"]))

    def stop(message: str) -> NoReturn:
        """One line in the log and the terminal, not a traceback, as the cohort step says it."""
        logging.error("%s", message)
        sys.exit(message)

    try:
        levels = instance_levels(cohort_connection(config, version, Path.cwd()), idc["SeriesInstanceUID"].tolist())
    except SlidestockError as err:  # the index tables cannot be read (a missing file, a download that fails)
        stop(f"plan: {err}")
    try:
        plan = plan_frame(lock, levels, target, smk.params.prefer, reader)
    except UnreachableError as err:
        bucket = f"plan: cannot read instance headers from the slide bucket: {err}."
        stop(f"{bucket} Check the network or proxy, or fetch.endpoint.")
    logging.info("read %d instance headers by range (%d bytes in all)", reader.requests, reader.bytes_fetched)
    plan.to_csv(smk.output.plan, sep="\t", index=False, lineterminator="\n")
    batch_size = batch_size_for(len(plan), smk.params.batch_size)
    changed = write_batch_plans(plan, Path(smk.params.batch_plans), batch_size)
    total = n_batches(len(plan), batch_size)
    logging.info("%d of %d batch plans written (the others are unchanged)", changed, total)
    if smk.params.patches["enabled"]:
        # Patches: the same rule at the patch spacing, on the same batches; and each slide's base level size.
        patch_plan = plan_frame(lock, levels, Target(mpp=smk.params.patches["mpp"]), smk.params.prefer, reader)
        bases = {series: base_size(found) for series, found in levels.items()}
        sizes = [bases.get(series) for series in patch_plan["SeriesInstanceUID"]]
        patch_plan["base_columns"] = [None if size is None else size[0] for size in sizes]
        patch_plan["base_rows"] = [None if size is None else size[1] for size in sizes]
        patch_plan["level_index"] = pyramid_indices(patch_plan, levels)
        patch_plan.to_csv(smk.params.patch_instances, sep="\t", index=False, lineterminator="\n")
        changed = write_batch_plans(patch_plan, Path(smk.params.patch_plans), batch_size, PATCH_PLAN_COLUMNS)
        logging.info("%d of %d patch plans written at %s µm/px", changed, total, smk.params.patches["mpp"])
    else:
        # Patches off: no patch plan stands any longer (the tidy step moves their patches to results/stale/).
        Path(smk.params.patch_instances).unlink(missing_ok=True)
        shutil.rmtree(smk.params.patch_plans, ignore_errors=True)
    # What no planned slide or batch owns any longer leaves the stock's folders (moved, never deleted).
    results = Path(smk.output.plan).parents[1]
    batches = {batch_name(i) for i in range(total)}
    found = stale_beyond_plan(results, set(plan["slide_id"]), batches, smk.params.patches["enabled"])
    for stale, dest in move_stale(found, results, run_of(results), "plan"):
        logging.info("moved %s to %s: %s", stale.path, dest, stale.why)
    for row in plan[plan["status"] != "planned"].itertuples():
        logging.warning("%s: %s", row.slide_id, row.reason)
    logging.info("planned %d of %d slides", int((plan["status"] == "planned").sum()), len(plan))


run_job("plan", main)
