"""Rule `cohort`: select the slides and write the lock file ``cohort.tsv``."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821

from slidestock.jobs.common import log_job, run_job

smk = snakemake  # noqa: F821
log_job(smk.log[0])


def main() -> None:
    # Imported here, where Ctrl-C ends the job quietly (run_job), not at its start.
    from slidestock.config import resolve_idc_version
    from slidestock.errors import SlidestockError
    from slidestock.provenance import SLIDESTOCK_VERSION, package_version
    from slidestock.select.cohort import CohortSpec, select_cohort
    from slidestock.select.lockfile import header_of, lock_frame, lock_text
    from slidestock.select.sources import cohort_connection

    # The endpoint is read from the config, not a parameter: changing it re-runs nothing.
    config = {"cohort": smk.params.cohort, "fetch": smk.config["fetch"]}
    try:
        spec = CohortSpec.from_config(smk.params.cohort, Path.cwd())
        version = resolve_idc_version(spec.idc_version)
        selected = select_cohort(cohort_connection(config, version, Path.cwd()), spec, version)
    except SlidestockError as err:
        # One line in the log and the terminal, not a traceback: the message names the key and what to do.
        logging.error("%s", err)
        sys.exit(f"cohort: {err}")
    software = {
        "slidestock": SLIDESTOCK_VERSION,
        "duckdb": package_version("duckdb"),
        "idc-index-data": package_version("idc-index-data"),
    }
    frame = lock_frame(selected, version)
    Path(smk.output.lock).write_text(lock_text(frame, header_of(spec, selected, version, software)))
    logging.info("wrote %s: %d of %d candidates", smk.output.lock, len(frame), selected.n_candidates)


run_job("cohort", main)
