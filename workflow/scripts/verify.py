"""Rule `verify`: every image and patch against its record, and nothing in the stock's folders but the stock."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821

from slidestock.jobs.common import log_job, run_job

smk = snakemake  # noqa: F821
log_job(smk.log[0])


def main() -> None:
    # Imported here, where Ctrl-C ends the job quietly (run_job), not at its start.
    from slidestock.errors import SlidestockError
    from slidestock.state import Stock
    from slidestock.tell.verify import verify

    try:
        checked = verify(Stock.at(Path(smk.params.results)), Path.cwd())
    except SlidestockError as err:
        sys.exit(f"verify: {err}")
    for check in (*checked.images, *checked.patches, *checked.coordinates):
        logging.info("%s\t%s\t%s", check.slide_id, check.outcome, check.detail)
    for path in checked.strays:
        logging.info("not of this stock: %s", path)
    print(checked.summary(), file=sys.stderr)
    problem = checked.problem()
    if problem:
        logging.error("%s", problem)
        sys.exit(problem)  # one line, not a traceback


run_job("verify", main)
