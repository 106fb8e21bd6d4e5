# The config, validated; the paths every rule names; the input, thread and resource functions.
import os
import shlex
import sys
import time
from functools import lru_cache
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "scripts"))

from slidestock.config import check_input_files, resolve_idc_version, validate_config
from slidestock.errors import ConfigError
from slidestock.plan.rows import batch_name, batch_size_for, n_batches, read_batch_plan
from slidestock.settings import RunSettings

try:
    CONFIG = validate_config(config)  # against workflow/schemas/config.schema.yaml
    check_input_files(CONFIG, Path.cwd())
except ConfigError as err:
    # The message alone: raised, Snakemake would add a line of this file's place to it.
    print(err, file=sys.stderr)
    sys.exit(1)
# Scripts read the validated config, defaults included, and the names of the files it came
# from (for the report; in the config, not a parameter, so that naming them re-runs nothing).
config.update(CONFIG)
config["config_files"] = [str(path) for path in workflow.configfiles]

# The IDC release an IDC cohort is selected from: `current` resolved, so that upgrading
# idc-index-data re-selects the cohort (a changed parameter of the cohort rule).
IDC_RELEASE = (
    resolve_idc_version(CONFIG["cohort"]["idc_version"])
    if CONFIG["cohort"]["source"] in ("idc", "idc_manifest")
    else None
)
# Everything the outputs depend on besides the plan: the stock's and the patches' settings.
RUN_SETTINGS = RunSettings.from_config(CONFIG)
IMAGE_SUFFIX = RUN_SETTINGS.stock.suffix
RUN_STARTED = time.time()
ENV = "../../envs/slidestock.yaml"
# Every path a rule or the run's lifecycle names (config/README.md and README.md describe them).
RESULTS = "results"
LOCK = "results/cohort/cohort.tsv"
PREVIOUS_LOCK = "results/cohort/cohort.previous.tsv"
PLAN = "results/cohort/instances.tsv"
PATCH_INSTANCES = "results/cohort/patch_instances.tsv"
SETTINGS = "results/cohort/settings.json"
BATCH_PLANS = "results/cohort/batches"
PATCH_PLANS = "results/cohort/patches"
BATCH_TABLES = "results/batches"
SLIDES = "results/slides"
PATCHES = "results/patches"
PATCH_TABLES = "results/patches/batches"
REPORT = "results/report"
# Snakemake's benchmark of each job (time, memory, I/O), beside the logs: never among the tracked benchmarks/.
BENCHMARKS = "logs/benchmarks"
# The command that retries what may pass: this one, unless a wrapper (make demo) says its own.
RETRY_COMMAND = os.environ.get("SLIDESTOCK_RETRY_COMMAND") or shlex.join(
    ["snakemake", *sys.argv[1:]]
)


wildcard_constraints:
    batch=r"b[0-9]{5}",


def get_cohort_inputs(wildcards):
    """Files the cohort is read from: a changed manifest, query or table re-runs it.

    As inputs, a missing one stops the run before any job (a dry run too), naming it.
    """
    cohort = CONFIG["cohort"]
    files = {key: cohort[key] for key in ("manifest", "sql") if cohort.get(key)}
    tables = cohort.get("tables") or {}
    files.update({f"table_{name}": path for name, path in tables.items() if path})
    return files


@lru_cache(maxsize=4)
def _n_planned(path, mtime_ns, size):
    """Slides in the plan file, counted once per version of it (every batch job asks)."""
    with open(path) as handle:
        return sum(1 for _ in handle) - 1


def get_batch_ids():
    """``b00000`` ... : the cohort in plan order, ``fetch.batch_size`` slides per batch (see batch_size_for)."""
    planned = Path(checkpoints.plan.get().output.plan)
    stat = planned.stat()
    n_slides = _n_planned(str(planned), stat.st_mtime_ns, stat.st_size)
    return [
        batch_name(i)
        for i in range(
            n_batches(n_slides, batch_size_for(n_slides, CONFIG["fetch"]["batch_size"]))
        )
    ]


def get_batch_tables(wildcards):
    """One outcome table per batch: the report and verify wait for every batch."""
    return expand(f"{BATCH_TABLES}/{{batch}}.tsv", batch=get_batch_ids())


def get_batch_plan(wildcards):
    """The batch's own plan file, written by the plan checkpoint.

    The checkpoint rewrites only plans that changed, so re-planning re-runs
    only those batches (and inside them only slides whose plan changed). The
    files are not declared outputs (Snakemake would delete them all before
    re-planning): batch jobs wait for the plan through instances.tsv, marked
    ancient so that a new plan alone re-runs nothing, and ask for the
    checkpoint itself only while their plan file is missing.
    """
    plan = f"{BATCH_PLANS}/{wildcards.batch}.tsv"
    if not Path(plan).exists():
        checkpoints.plan.get()
    return {"plan": plan, "planned": ancient(PLAN)}


def get_patch_plan(wildcards):
    """A batch's patch plan (written by the plan checkpoint beside its batch plan), and the batch's slides done."""
    plan = f"{PATCH_PLANS}/{wildcards.batch}.tsv"
    if not Path(plan).exists():
        checkpoints.plan.get()
    return {
        "plan": plan,
        "planned": ancient(PLAN),
        "slides": f"{BATCH_TABLES}/{wildcards.batch}.tsv",
    }


def get_patch_tables(wildcards):
    """One patch outcome table per batch."""
    return expand(f"{PATCH_TABLES}/{{batch}}.tsv", batch=get_batch_ids())


def get_patch_outputs(wildcards):
    """What patches add to a run: every batch's patch table and patches.parquet; nothing when off."""
    if not CONFIG["patches"]["enabled"]:
        return []
    return [*get_patch_tables(wildcards), f"{PATCHES}/patches.parquet"]


def _planned_slides(input):
    """The batch's plan rows (its stock plan or its patch plan), or None while the plan checkpoint has yet to run."""
    plan = Path(input.plan)
    if plan.parent not in (Path(BATCH_PLANS), Path(PATCH_PLANS)) or not plan.exists():
        return None
    return read_batch_plan(plan)


def get_batch_disk_mb(wildcards, input, attempt):
    """Scratch space for the batch's downloads: the planned instances' sizes plus headroom."""
    rows = _planned_slides(input)
    if rows is None:
        return 1000 * attempt
    size = sum(row.instance_size for row in rows)
    return (int(size / 1e6 * 1.2) + 50) * attempt


def get_batch_runtime(wildcards, input, attempt):
    """Minutes: 10 plus 6 s per slide, more on each attempt."""
    rows = _planned_slides(input)
    # Before the plan: the largest batch the setting can make (auto: AUTO_BATCH_SIZE's upper bound).
    n_slides = (
        batch_size_for(100_000, CONFIG["fetch"]["batch_size"])
        if rows is None
        else len(rows)
    )
    return (10 + -(-n_slides // 10)) * attempt


def get_batch_threads(wildcards):
    """Locally, the batches share the cores: each gets cores // batches threads, at least one.

    A large cohort then runs one single-threaded batch per core (separate
    processes, so Python's lock on the interpreter never serialises them);
    a small one spreads its few batches over every core. Without a core count
    (a cluster executor) it is 4; the cluster profile sets it (set-threads).
    """
    cores = workflow.resource_settings.cores
    if not cores:
        return 4
    return max(1, cores // len(get_batch_ids()))


def get_report_threads(wildcards):
    """The report runs last, alone: its thumbnails are made on every local core (4 without a count)."""
    return workflow.resource_settings.cores or 4


def get_batch_mem_mb(wildcards, threads, attempt):
    """1 GB plus 1.5 GB per slide decoded at once, more on each attempt."""
    return (1000 + 1500 * threads) * attempt
