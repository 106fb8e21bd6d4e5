# Config validation, the cohort's slide list and every input function.
import shlex
import shutil
import sys
import time
from functools import lru_cache
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "scripts"))

from slidestock.config import check_input_files, resolve_idc_version, validate_config
from slidestock.levels import FORMATS
from slidestock.errors import ConfigError
from slidestock.planrow import batch_name, batch_size_for, n_batches, read_batch_plan
from slidestock.provenance import SLIDESTOCK_VERSION
from slidestock.status import patch_outcome, read_outcome, redo_notice, tables_to_redo

try:
    CONFIG = validate_config(
        config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml"
    )
    check_input_files(CONFIG, Path.cwd())
except ConfigError as err:
    raise WorkflowError(str(err)) from None
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
IMAGE_SUFFIX = FORMATS[CONFIG["target"]["format"]]
RUN_STARTED = time.time()
ENV = "../../envs/slidestock.yaml"
BATCH_PLANS = "results/cohort/batches"
PATCH_PLANS = "results/cohort/patches"
SLIDES = "results/slides"
PATCHES = "results/patches"

# Before the job list (a dry run's too): slides made before that a run with this config redoes.
if workflow.is_main_process:
    notice = redo_notice(Path(SLIDES), CONFIG["target"], SLIDESTOCK_VERSION)
    if notice:
        print(notice, file=sys.stderr)


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
    return expand("results/batches/{batch}.tsv", batch=get_batch_ids())


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
    return {"plan": plan, "planned": ancient("results/cohort/instances.tsv")}


def get_patch_plan(wildcards):
    """A batch's patch plan (written by the plan checkpoint beside its batch plan), and the batch's slides done."""
    plan = f"{PATCH_PLANS}/{wildcards.batch}.tsv"
    if not Path(plan).exists():
        checkpoints.plan.get()
    return {
        "plan": plan,
        "planned": ancient("results/cohort/instances.tsv"),
        "slides": f"results/batches/{wildcards.batch}.tsv",
    }


def get_patch_tables(wildcards):
    """One patch outcome table per batch."""
    return expand(f"{PATCHES}/batches/{{batch}}.tsv", batch=get_batch_ids())


def get_patch_outputs(wildcards):
    """What patches add to a run: every batch's patch table and patches.parquet; nothing when off."""
    if not CONFIG["patches"]["enabled"]:
        return []
    return [*get_patch_tables(wildcards), f"{PATCHES}/patches.parquet"]


def _planned_slides(input):
    """The batch's plan rows, or None while the plan checkpoint has yet to run."""
    plan = Path(input.plan)
    if plan.parent != Path(BATCH_PLANS) or not plan.exists():
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


def redo_next_time():
    """Remove the outcome tables of batches with slides that may pass next time.

    The next run then re-runs those batches (a missing output), and each redoes
    only its unfinished slides: running the same command again retries them.
    """
    # The tables on disk, not the plan's list: this also runs when a run failed before its plan.
    tables = sorted(Path("results/batches").glob("b*.tsv"))
    tables += sorted(Path(PATCHES, "batches").glob("b*.tsv"))
    for path in tables_to_redo(tables):
        path.unlink()


def summarise_run():
    """The outcome of a run that wrote the report; exits non-zero when slides failed (unless accepted)."""
    table = Path("results/report/slides.csv")
    if not table.exists() or table.stat().st_mtime < RUN_STARTED:
        return  # the report was not written by this run (a dry run, verify, --report)
    tables = [Path(path) for path in get_batch_tables(None)]
    outcome = read_outcome([path for path in tables if path.exists()], table)
    patch_tables = [
        Path(path) for path in get_patch_outputs(None) if path.endswith(".tsv")
    ]
    command = shlex.join(["snakemake", *sys.argv[1:]])
    patches_line, patches_failed = patch_outcome(
        [p for p in patch_tables if p.exists()], command
    )
    redo_next_time()
    for line in outcome.lines(command):
        print(line, file=sys.stderr)
    if patch_tables:
        print(patches_line, file=sys.stderr)
    failed = outcome.failed + (patches_failed if patch_tables else 0)
    if failed and not CONFIG["report"]["accept_failures"]:
        sys.exit(1)


LOCK = Path("results/cohort/cohort.tsv")
PREVIOUS_LOCK = LOCK.with_name("cohort.previous.tsv")


def keep_lock_file():
    """Copy the lock file aside before anything runs: a re-selection that fails must not lose it."""
    if LOCK.is_file():
        shutil.copy2(LOCK, PREVIOUS_LOCK)


def restore_lock_file():
    """Put the lock file back when a failed run took it (Snakemake removes a failed job's outputs)."""
    if not LOCK.exists() and PREVIOUS_LOCK.is_file():
        shutil.copy2(PREVIOUS_LOCK, LOCK)
        print(
            f"slidestock: the cohort step failed; {LOCK} is the previous one again "
            f"(also kept as {PREVIOUS_LOCK})",
            file=sys.stderr,
        )
