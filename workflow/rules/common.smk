# Config validation, the cohort's slide list and every input function.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "scripts"))

from slidestock.cohort import read_lock
from slidestock.config import validate_config
from slidestock.errors import ConfigError
from slidestock.downsample import FORMATS
from slidestock.plan import read_slide_plan

try:
    CONFIG = validate_config(
        config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml"
    )
except ConfigError as err:
    raise WorkflowError(str(err)) from None
# Scripts read the validated config, defaults included.
config.update(CONFIG)

IMAGE_SUFFIX = FORMATS[CONFIG["target"]["format"]]
ENV = "../../envs/slidestock.yaml"
SLIDE_PLANS = "results/cohort/plan"


wildcard_constraints:
    slide=r"[A-Za-z0-9][A-Za-z0-9._-]*",


def get_slide_ids():
    """Slide ids of the cohort lock file (after the cohort checkpoint)."""
    return read_lock(Path(checkpoints.cohort.get().output.lock))["slide_id"].tolist()


def get_cohort_inputs(wildcards):
    """Files the cohort is read from: a changed manifest or query re-runs it."""
    cohort = CONFIG["cohort"]
    return {key: cohort[key] for key in ("manifest", "sql") if cohort.get(key)}


def get_slide_records(wildcards):
    return expand("results/slides/{slide}.json", slide=get_slide_ids())


def get_slide_plan(wildcards):
    """The slide's own plan file, written by the plan checkpoint.

    The checkpoint rewrites only plans that changed, so re-planning re-runs
    only those slides. The files are not declared outputs (Snakemake would
    delete them all before re-planning): slide jobs wait for the plan through
    instances.tsv, marked ancient so that a new plan alone re-runs nothing,
    and ask for the checkpoint itself only while their plan file is missing.
    """
    plan = f"{SLIDE_PLANS}/{wildcards.slide}.tsv"
    if not Path(plan).exists():
        checkpoints.plan.get()
    return {"plan": plan, "planned": ancient("results/cohort/instances.tsv")}


def get_slide_disk_mb(wildcards, input, attempt):
    """Scratch space for the download: the chosen instance's size plus headroom."""
    plan = Path(input.plan)
    if plan.parent != Path(SLIDE_PLANS):
        # The plan checkpoint has yet to run: Snakemake stands its output in for the input.
        return 1000 * attempt
    size = read_slide_plan(plan)["instance_size"] or 0
    return (int(int(size) / 1e6 * 1.2) + 50) * attempt
