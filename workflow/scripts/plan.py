"""Rule `plan`: choose one instance per slide and write ``instances.tsv``."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821

from slidestock.cohort import instance_levels, read_lock
from slidestock.config import cohort_connection
from slidestock.levels import target_of
from slidestock.plan import n_batches, plan_frame, write_batch_plans

smk = snakemake  # noqa: F821
logging.basicConfig(filename=smk.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

lock = read_lock(Path(smk.input.lock))
idc = lock[lock["fetch_from"] == "idc"]
version = int(lock["idc_version"].iloc[0]) if len(lock) else 0
# The endpoint is read from the config, not a parameter: changing it re-runs nothing.
config = {"cohort": smk.params.cohort, "fetch": smk.config["fetch"]}
levels = instance_levels(cohort_connection(config, version, Path.cwd()), idc["SeriesInstanceUID"].tolist())
plan = plan_frame(lock, levels, target_of({"target": smk.params.target}), smk.params.prefer)
plan.to_csv(smk.output.plan, sep="\t", index=False, lineterminator="\n")
changed = write_batch_plans(plan, Path(smk.params.batch_plans), smk.params.batch_size)
total = n_batches(len(plan), smk.params.batch_size)
logging.info("%d of %d batch plans written (the others are unchanged)", changed, total)
for row in plan[plan["status"] != "planned"].itertuples():
    logging.warning("%s: %s", row.slide_id, row.reason)
logging.info("planned %d of %d slides", int((plan["status"] == "planned").sum()), len(plan))
