"""Rule `slide`: fetch, check, downsample and record one slide."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821

from slidestock.config import target_of
from slidestock.pipeline import SlideJob, run_slide
from slidestock.plan import read_slide_plan

smk = snakemake  # noqa: F821
logging.basicConfig(filename=smk.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

job = SlideJob(
    plan=read_slide_plan(Path(smk.input.plan)),
    target=target_of({"target": smk.params.target}),
    fmt=smk.params.target["format"],
    endpoint=smk.config["fetch"]["endpoint"],
    attempts=smk.params.attempts,
    image_path=Path(smk.params.image),
    json_path=Path(smk.output.record),
    tmpdir=Path(smk.resources.tmpdir),
)
record = run_slide(job)
logging.info("%s: %s", record["slide_id"], record["status"])
