"""Rule `cohort`: select the slides and write the lock file ``cohort.tsv``."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821

from slidestock.cohort import (
    CohortSpec,
    file_sha256,
    installed_idc_version,
    lock_frame,
    lock_text,
    resolve_idc_version,
    select_cohort,
)
from slidestock.config import cohort_connection
from slidestock.errors import SlidestockError
from slidestock.provenance import SLIDESTOCK_VERSION, package_version

smk = snakemake  # noqa: F821
logging.basicConfig(filename=smk.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

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
frame = lock_frame(selected, version)
header = {
    "slidestock cohort lock": f"{len(frame)} slides",
    "source": spec.source,
    "idc_version": version,
    "idc_index_data_version": installed_idc_version(),
    "filter": dict(spec.filters),
    "n": spec.n,
    "seed": spec.seed,
    "stratify_by": spec.stratify_by,
    "one_per_patient": spec.one_per_patient,
    "candidates": selected.n_candidates,
}
if spec.manifest is not None:
    header["manifest"] = f"{spec.manifest.name} sha256:{file_sha256(spec.manifest)}"
if selected.strata:
    header["strata"] = selected.strata
if spec.source == "gdc_manifest":
    header["gdc_unmatched"] = selected.unmatched
header["software"] = {
    "slidestock": SLIDESTOCK_VERSION,
    "duckdb": package_version("duckdb"),
    "idc-index-data": package_version("idc-index-data"),
}
header["query"] = selected.query
Path(smk.output.lock).write_text(lock_text(frame, header))
logging.info("wrote %s: %d of %d candidates", smk.output.lock, len(frame), selected.n_candidates)
