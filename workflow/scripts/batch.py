"""Rule `batch`: fetch, check, downsample and record a batch of slides."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821

from slidestock.jobs.common import log_job, run_job

smk = snakemake  # noqa: F821
log_job(smk.log[0])


def main() -> None:
    # Imported here, where Ctrl-C ends the job quietly (run_job), not at its start.
    from slidestock.errors import UnreachableError
    from slidestock.jobs.slide import SlideJob, gdc_settings
    from slidestock.jobs.stock import run_batch, write_batch_table
    from slidestock.plan.rows import read_batch_plan
    from slidestock.settings import StockSettings

    # Where bytes come from (endpoint, GDC API, token) and how many objects move at
    # once are read from the config, not passed as parameters: changing them must
    # not re-run finished batches.
    fetch, gdc = smk.config["fetch"], gdc_settings(smk.config["gdc"])
    settings = StockSettings.from_terms(smk.params.settings)
    slides = Path(smk.params.slides)
    jobs = [
        SlideJob(
            plan=plan,
            settings=settings,
            endpoint=fetch["endpoint"],
            attempts=fetch["attempts"],
            image_path=slides / f"{plan.slide_id}.{settings.suffix}",
            json_path=slides / f"{plan.slide_id}.json",
            tmpdir=Path(smk.resources.tmpdir),
            gdc=gdc,
            log_path=Path(f"logs/slide/{plan.slide_id}.log"),
            redo_failed=smk.params.redo_failed,
        )
        for plan in read_batch_plan(Path(smk.input.plan))
    ]
    try:
        records = run_batch(
            jobs,
            smk.wildcards.batch,
            Path(smk.resources.tmpdir),
            workers=fetch["workers"],
            threads=smk.threads,
            timeout_s=fetch["timeout"],
            retry_count=fetch["retry_count"],
        )
    except UnreachableError as err:
        # No table: the next run redoes this batch (its finished slides are kept).
        sys.exit(str(err))
    failed = [record["slide_id"] for record in records if record["status"] != "done"]
    logging.info("%d slides processed, %d failed: %s", len(records), len(failed), " ".join(failed) or "none")
    if write_batch_table([job.json_path for job in jobs], Path(smk.output.table)):
        logging.info("slides that failed for a reason that may pass are tried again by the next run")


run_job(f"batch {smk.wildcards.batch}", main)
