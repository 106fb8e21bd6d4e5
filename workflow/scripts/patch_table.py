"""Rule `patch_table`: every finished slide's patches, one row each, in ``patches.parquet``."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821

from slidestock.jobs.common import log_job, run_job

smk = snakemake  # noqa: F821
log_job(smk.log[0])


def main() -> None:
    # Imported here, where Ctrl-C ends the job quietly (run_job), not at its start.
    from slidestock.jobs.patches import patch_rows, read_patch_records

    records = read_patch_records([Path(path) for path in smk.input], Path(smk.output.parquet).parent)
    table = patch_rows(records)
    partial = Path(smk.output.parquet).with_suffix(".partial")
    table.to_parquet(partial, index=False)
    partial.replace(smk.output.parquet)
    logging.info("%d patches of %d slides in %s", len(table), table["slide_id"].nunique(), smk.output.parquet)


run_job("patch table", main)
