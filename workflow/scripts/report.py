"""Rule `report`: tables, plots, contact sheet and the self-contained ``index.html``."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821

from slidestock.jobs.common import log_job, run_job

smk = snakemake  # noqa: F821
log_job(smk.log[0])


def main() -> None:
    # Imported here, where Ctrl-C ends the job quietly (run_job), not at its start.
    from concurrent.futures import ThreadPoolExecutor

    from slidestock.image.thumbnails import contact_sheet, sheet_records, thumbnails
    from slidestock.records import as_patch_record
    from slidestock.select.lockfile import read_lock, read_lock_header
    from slidestock.state import DONE, FAILED, Stock
    from slidestock.tell.patchreport import patches_html
    from slidestock.tell.report import ReportInputs, render_html
    from slidestock.tell.slidetable import (
        current_records,
        plot_svgs,
        report_frame,
        run_date,
        summary,
        wall_time_s,
        write_tables,
    )

    lock_path = Path(smk.input.lock)
    lock = read_lock(lock_path)
    # Every slide of the plan, judged against the run's settings: a record of other settings is not shown as done.
    stock = Stock.at(Path(smk.output.csv).parents[1])  # results/report/slides.csv: results/
    states = stock.slide_states()
    records = current_records(states)
    frame = report_frame(records, lock, [s for s in states if s.state not in (DONE, FAILED)])
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
    software = next((rec["software"] for rec in records if "software" in rec), {})
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
    if stock.settings.patches is not None:
        patch_records = [
            as_patch_record(s.record) for s in stock.patch_states(states) if s.record and s.state in (DONE, FAILED)
        ]
        images = {str(row["slide_id"]): Path(str(row["output_path"])) for row in frame.to_dict("records")}
        sections.append(patches_html(patch_records, Path(smk.params.patches), images))
    Path(smk.output.html).write_text(render_html(frame, inputs, svgs, made, sections))
    sheet.result()
    background.shutdown()
    logging.info("report: %s", summary(frame))


run_job("report", main)
