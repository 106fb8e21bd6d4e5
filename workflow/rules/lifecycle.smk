# The run's lifecycle: what is said before the job list, and what happens when the run starts, succeeds or
# fails. The paths are common.smk's.
import shutil
from dataclasses import replace

from slidestock.state import Stock
from slidestock.tell.notice import cohort_change, lock_slide_ids, redo_notice
from slidestock.tell.status import run_lines, tables_to_redo
from slidestock.tidy import moved_line

# This run, as it names itself: what it moves out of the stock goes to results/stale/<RUN>/.
RUN = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime(RUN_STARTED))


def cohort_notice():
    """What a run with this config redoes of what is on disk, counted on the cohort it will have."""
    lock = Path(LOCK)
    release = resolve_idc_version(CONFIG["cohort"]["idc_version"])
    changed = cohort_change(CONFIG["cohort"], release, lock)
    if not lock.is_file():
        changed = "no lock file yet"
    cohort = None if changed else lock_slide_ids(lock)
    return redo_notice(Path(RESULTS), RUN_SETTINGS, cohort, changed or "")


# Before the job list (a dry run's too): what a run with this config redoes of the stock.
if workflow.is_main_process:
    notice = cohort_notice()
    if notice:
        print(notice, file=sys.stderr)


def redo_next_time():
    """Remove the outcome tables of batches with slides that may pass next time.

    The next run then re-runs those batches (a missing output), and each redoes
    only its unfinished slides: running the same command again retries them.
    """
    # The tables on disk, not the plan's list: this also runs when a run failed before its plan.
    tables = sorted(Path(BATCH_TABLES).glob("b*.tsv"))
    tables += sorted(Path(PATCH_TABLES).glob("b*.tsv"))
    for path in tables_to_redo(tables):
        path.unlink()


def summarise_run():
    """The outcome of a run that wrote the report; exits non-zero when slides failed (unless accepted).

    Failures grouped by reason, then what this run did and what the stock holds, each in one line.
    """
    table = Path(REPORT, "slides.csv")
    if not table.exists() or table.stat().st_mtime < RUN_STARTED:
        return  # the report was not written by this run (a dry run, verify, --report)
    lines, failed = run_lines(Stock.at(Path(RESULTS)), RUN_STARTED, RETRY_COMMAND)
    redo_next_time()
    for line in [said_moved(), *lines]:
        if line:
            print(line, file=sys.stderr)
    if failed and not CONFIG["report"]["accept_failures"]:
        sys.exit(1)


def write_settings():
    """The settings of this run, before any job: jobs, status and verify judge the stock against them.

    Not for a run of `verify` alone, which reads what an earlier run left.
    """
    if (
        set(workflow.dag_settings.targets) <= {"verify"}
        and workflow.dag_settings.targets
    ):
        return
    replace(RUN_SETTINGS, run=RUN).write(Path(SETTINGS))


def said_moved():
    """One line: what this run moved out of the stock's folders (None when nothing)."""
    return moved_line(Path(RESULTS), RUN)


def keep_lock_file():
    """Copy the lock file aside before anything runs: a re-selection that fails must not lose it."""
    if Path(LOCK).is_file():
        shutil.copy2(LOCK, PREVIOUS_LOCK)


def restore_lock_file():
    """Put the lock file back when a failed run took it (Snakemake removes a failed job's outputs)."""
    if not Path(LOCK).exists() and Path(PREVIOUS_LOCK).is_file():
        shutil.copy2(PREVIOUS_LOCK, LOCK)
        print(
            f"slidestock: the cohort step failed; {LOCK} is the previous one again "
            f"(also kept as {PREVIOUS_LOCK})",
            file=sys.stderr,
        )


onstart:
    keep_lock_file()
    write_settings()


# At the end of a run that wrote the report: the outcome in one last line (failures grouped by
# reason before it), and a non-zero exit when slides failed, unless report.accept_failures.
onsuccess:
    summarise_run()


# A run stopped by a failed job (a batch whose bucket cannot be reached, say) still leaves
# the batches with slides that may pass to the next run.
onerror:
    redo_next_time()
    restore_lock_file()
    if said_moved():
        print(said_moved(), file=sys.stderr)
