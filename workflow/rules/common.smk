# Config validation, the cohort's slide list and every input function.
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "scripts"))

from slidestock.cohort import read_lock
from slidestock.config import validate_config
from slidestock.errors import ConfigError

try:
    CONFIG = validate_config(
        config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml"
    )
except ConfigError as err:
    raise WorkflowError(str(err)) from None
# Scripts read the validated config, defaults included.
config.update(CONFIG)

IMAGE_FORMAT = CONFIG["target"]["format"]
ENV = "../../envs/slidestock.yaml"


wildcard_constraints:
    slide=r"[A-Za-z0-9][A-Za-z0-9._-]*",


def get_slide_ids():
    """Slide ids of the cohort lock file (after the cohort checkpoint)."""
    return read_lock(checkpoints.cohort.get().output.lock)["slide_id"].tolist()


def get_slide_records(wildcards):
    return expand("results/slides/{slide}.json", slide=get_slide_ids())


_PLANS = {}


def get_plan_row(wildcards):
    """The slide's row of instances.tsv; a changed row re-runs only that slide."""
    path = checkpoints.plan.get().output.plan
    mtime = Path(path).stat().st_mtime_ns
    if _PLANS.get("key") != (path, mtime):
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        _PLANS.update(key=(path, mtime), frame=frame.set_index("slide_id", drop=False))
    return dict(_PLANS["frame"].loc[wildcards.slide])


def get_slide_disk_mb(wildcards, attempt):
    """Scratch space: the chosen instance's size plus headroom."""
    size = get_plan_row(wildcards)["instance_size"]
    return int(int(size or 0) / 1e6 * 1.2 + 50) * attempt
