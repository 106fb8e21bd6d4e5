"""How far a run is: ``python workflow/scripts/status.py [RESULTS]`` from the run's working directory.

Reads the plan and the per-slide records under RESULTS (default ``results``);
locks and changes nothing, so it can be run at any time, also while the
workflow runs (from a cluster's login node, say).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from slidestock.errors import SlidestockError
from slidestock.status import format_status, patch_status_lines, read_status

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("results", nargs="?", default="results", type=Path, help="the run's results folder")
args = parser.parse_args()
try:
    print("\n".join([format_status(read_status(args.results), args.results), *patch_status_lines(args.results)]))
except SlidestockError as err:
    sys.exit(f"status: {err}")
