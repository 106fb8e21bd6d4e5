"""Rule `slide`: fetch, check, downsample and record one slide."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821

from slidestock.config import target_of
from slidestock.pipeline import GdcSettings, SlideJob, read_token, run_slide
from slidestock.plan import read_slide_plan

smk = snakemake  # noqa: F821
logging.basicConfig(filename=smk.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

# Where bytes come from (endpoint, GDC API, token) is read from the config, not
# passed as parameters: changing it must not re-run finished slides.
gdc = smk.config["gdc"]
token_file = Path(gdc["token_file"]) if gdc.get("token_file") else None
job = SlideJob(
    plan=read_slide_plan(Path(smk.input.plan)),
    target=target_of({"target": smk.params.target}),
    fmt=smk.params.target["format"],
    quality=smk.params.target["quality"],
    pyramid=smk.params.target["pyramid"],
    tissue_mask=smk.params.target["tissue_mask"],
    backend=smk.params.target["backend"],
    associated=tuple(smk.params.target["associated"]),
    endpoint=smk.config["fetch"]["endpoint"],
    attempts=smk.params.attempts,
    image_path=Path(smk.params.image),
    json_path=Path(smk.output.record),
    tmpdir=Path(smk.resources.tmpdir),
    gdc=GdcSettings(api=gdc["api"], token=read_token(token_file), mode=gdc["mode"], parallel=gdc["parallel"]),
)
record = run_slide(job)
logging.info("%s: %s", record["slide_id"], record["status"])
