"""How far a stock is: ``python workflow/scripts/status.py [RESULTS]`` from the run's working directory.

Reads the plan, the run's settings and the per-slide records under RESULTS
(default ``results``); locks and changes nothing, so it can be run at any
time, also while the workflow runs (from a cluster's login node, say). A
slide counts as done only when its record was made for the current plan and
settings; others are to do.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from slidestock.errors import SlidestockError
from slidestock.state import Stock
from slidestock.tell.status import format_status, patch_status_lines, status_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="?", default="results", type=Path, help="the run's results folder")
    args = parser.parse_args()
    try:
        stock = Stock.at(args.results)
        states = stock.slide_states()
        lines = [format_status(status_of(stock, states), args.results), *patch_status_lines(stock, states)]
    except SlidestockError as err:
        sys.exit(f"status: {err}")
    print("\n".join(lines))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
