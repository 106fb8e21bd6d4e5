"""Rule `cohort`: select the slides and write the lock file ``cohort.tsv``."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821

from slidestock.cohort import (
    connect,
    idc_index_tables,
    installed_idc_version,
    lock_frame,
    lock_text,
    resolve_idc_version,
    select_cohort,
)
from slidestock.config import tables_of
from slidestock.provenance import SLIDESTOCK_VERSION, package_version

smk = snakemake  # noqa: F821
logging.basicConfig(filename=smk.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

cohort = smk.params.cohort
tables = tables_of({"cohort": cohort}, Path.cwd()) or idc_index_tables()
version = resolve_idc_version(cohort["idc_version"])
selected = select_cohort(connect(tables), cohort["filter"], cohort["n"], cohort["seed"])
frame = lock_frame(selected, version)
header = {
    "slidestock cohort lock": f"{len(frame)} slides",
    "source": cohort["source"],
    "idc_version": version,
    "idc_index_data_version": installed_idc_version(),
    "filter": cohort["filter"],
    "n": cohort["n"],
    "seed": cohort["seed"],
    "candidates": selected.n_candidates,
    "software": {
        "slidestock": SLIDESTOCK_VERSION,
        "duckdb": package_version("duckdb"),
        "idc-index-data": package_version("idc-index-data"),
    },
    "query": selected.query,
}
Path(smk.output.lock).write_text(lock_text(frame, header))
logging.info("wrote %s: %d of %d candidates", smk.output.lock, len(frame), selected.n_candidates)
