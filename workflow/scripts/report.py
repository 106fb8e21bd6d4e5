"""Rule `report`: ``slides.csv`` and the self-contained ``index.html``."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821

from slidestock.cohort import read_lock
from slidestock.report import render_html, report_frame, summary, write_csv

smk = snakemake  # noqa: F821
logging.basicConfig(filename=smk.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

lock = read_lock(Path(smk.input.lock))
frame = report_frame([Path(p) for p in smk.input.records], lock)
write_csv(frame, Path(smk.output.csv))
cohort, target = smk.params.cohort, smk.params.target
meta = {
    "IDC version": lock["idc_version"].iloc[0] if len(lock) else "",
    "cohort filter": cohort["filter"],
    "n, seed": f"{cohort['n']}, {cohort['seed']}",
    "target": f"{target['mpp']} µm/px" if target["mpp"] else f"long side {target['max_px']} px",
}
Path(smk.output.html).write_text(render_html(frame, meta))
stats = summary(frame)
logging.info("report: %s", stats)
print(
    f"slidestock: {stats['done']}/{stats['slides']} slides done, {stats['failed']} failed; "
    f"fetched {stats['bytes_fetched']:,} of {stats['series_bytes']:,} series bytes "
    f"({100 * stats['fraction_fetched']:.2f} %); report: {smk.output.html}",
    file=sys.stderr,
)
