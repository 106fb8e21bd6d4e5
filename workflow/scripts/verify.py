"""Rule `verify`: re-hash every image against its provenance; fail on any mismatch."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821

from slidestock.errors import SlidestockError
from slidestock.lockfile import read_lock
from slidestock.verify import verify

smk = snakemake  # noqa: F821
logging.basicConfig(filename=smk.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

lock = Path(smk.params.lock)
if not lock.is_file():
    sys.exit(f"verify: {lock} not found; expected a run's results here (run the workflow first)")
slides = read_lock(lock)["slide_id"]
checks = verify([Path(f"{smk.params.slides}/{slide}.json") for slide in slides], Path.cwd())
for check in checks:
    logging.info("%s\t%s\t%s", check.slide_id, check.outcome, check.detail)
bad = [c for c in checks if c.outcome in ("missing", "mismatch")]
ok = sum(c.outcome == "ok" for c in checks)
print(f"verify: {ok} images match their provenance, {len(bad)} do not", file=sys.stderr)
if bad:
    raise SlidestockError("verify: " + "; ".join(f"{c.slide_id}: {c.detail}" for c in bad))
