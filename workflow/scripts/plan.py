"""Rule `plan`: choose one instance per slide and write ``instances.tsv``."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821

from slidestock.cohort import connect, idc_index_tables, instance_levels, read_lock
from slidestock.config import tables_of, target_of
from slidestock.plan import plan_frame, write_slide_plans

smk = snakemake  # noqa: F821
logging.basicConfig(filename=smk.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

lock = read_lock(Path(smk.input.lock))
tables = tables_of({"cohort": {"tables": smk.params.tables}}, Path.cwd()) or idc_index_tables()
levels = instance_levels(connect(tables), lock["SeriesInstanceUID"].tolist())
plan = plan_frame(lock, levels, target_of({"target": smk.params.target}))
plan.to_csv(smk.output.plan, sep="\t", index=False, lineterminator="\n")
changed = write_slide_plans(plan, Path(smk.params.slide_plans))
logging.info("%d of %d slide plans written (the others are unchanged)", changed, len(plan))
for row in plan[plan["status"] != "planned"].itertuples():
    logging.warning("%s: %s", row.slide_id, row.reason)
logging.info("planned %d of %d slides", int((plan["status"] == "planned").sum()), len(plan))
