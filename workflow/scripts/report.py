"""Rule `report`: tables, plots, contact sheet and the self-contained ``index.html``."""

import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821

from slidestock.lockfile import read_lock, read_lock_header
from slidestock.patchbatch import read_patch_records
from slidestock.patchreport import patches_html
from slidestock.report import (
    ReportInputs,
    load_records,
    plot_svgs,
    render_html,
    report_frame,
    run_date,
    summary,
    wall_time_s,
    write_tables,
)
from slidestock.thumbnails import contact_sheet, sheet_records, thumbnails

smk = snakemake  # noqa: F821
logging.basicConfig(filename=smk.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

lock_path = Path(smk.input.lock)
lock = read_lock(lock_path)
records = load_records(Path(f"{smk.params.slides}/{slide}.json") for slide in lock["slide_id"])
frame = report_frame(records, lock)
shown = [Path(str(row["output_path"])) for row in sheet_records(frame, smk.params.sheet_max)]
made = thumbnails(shown, threads=smk.threads)  # once, for the sheet and the page
# The sheet (a large PNG to compress) is written while the rest is made.
background = ThreadPoolExecutor(max_workers=1)
sheet = background.submit(contact_sheet, shown, Path(smk.output.sheet), made=made)
write_tables(frame, Path(smk.output.csv), Path(smk.output.parquet))
svgs = plot_svgs(frame)
for name, svg in svgs.items():
    Path(getattr(smk.output, f"plot_{name}")).write_text(svg)
header = read_lock_header(lock_path)
software = next((rec["software"] for rec in records if rec.get("software")), {})
inputs = ReportInputs(
    idc_version=header.get("idc_version", ""),
    query=header.get("query", ""),
    cohort_header=header,
    software=software,
    wall_time_s=wall_time_s(records),
    sheet_max=smk.params.sheet_max,
    target=smk.params.target,
    config_files=smk.config.get("config_files", []),
    run_date=run_date(records),
)
sections = []
patch_tables = [Path(path) for path in smk.input.patches if path.endswith(".tsv")]
if patch_tables:  # patches.enabled
    patch_records = read_patch_records(patch_tables, Path(smk.params.patches))
    images = {str(row["slide_id"]): Path(str(row["output_path"])) for row in frame.to_dict("records")}
    sections.append(patches_html(patch_records, Path(smk.params.patches), images))
Path(smk.output.html).write_text(render_html(frame, inputs, svgs, made, sections))
sheet.result()
background.shutdown()
logging.info("report: %s", summary(frame))
