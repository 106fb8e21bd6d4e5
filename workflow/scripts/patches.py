"""Rule `patches`: cut a batch of slides' patches from the frames they cover, and record them."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))  # noqa: F821

from slidestock.jobs.common import log_job, run_job

smk = snakemake  # noqa: F821
log_job(smk.log[0])


def main() -> None:
    # Imported here, where Ctrl-C ends the job quietly (run_job), not at its start.
    from slidestock.jobs.patches import PatchJob, run_patch_batch, write_patch_table
    from slidestock.jobs.slide import gdc_settings
    from slidestock.plan.rows import read_base_sizes, read_batch_plan
    from slidestock.read.objectstore import RangeClient
    from slidestock.settings import PatchSettings

    # Where bytes come from is read from the config, not a parameter: moving it re-runs nothing.
    fetch, gdc = smk.config["fetch"], gdc_settings(smk.config["gdc"])
    settings = PatchSettings.from_terms(smk.params.settings)
    client = RangeClient(fetch["endpoint"], attempts=fetch["attempts"], parallel=smk.config["patches"]["parallel"])
    # results/patches, where the batch tables, the patches and their records go.
    folder, slides = Path(smk.output.table).parents[1], Path(smk.params.slides)
    bases = read_base_sizes(Path(smk.input.plan))
    jobs = [
        PatchJob(
            plan=plan,
            base_size_px=bases[plan.slide_id][0],
            level_index=bases[plan.slide_id][1],
            image_path=slides / f"{plan.slide_id}.{smk.params.suffix}",
            folder=folder / plan.slide_id,
            json_path=folder / f"{plan.slide_id}.json",
            gdc=gdc,
            attempts=fetch["attempts"],
        )
        for plan in read_batch_plan(Path(smk.input.plan))
    ]
    patch_format = smk.params.settings["patches.format"]
    shard = folder / "shards" / f"{smk.wildcards.batch}.tar" if patch_format == "webdataset" else None
    coordinates = patch_format == "coordinates"
    records = run_patch_batch(jobs, settings, client, shard, smk.wildcards.batch, smk.threads, coordinates)
    failed = [record["slide_id"] for record in records if record["status"] != "done"]
    total = sum(len(record.get("patches", [])) for record in records)
    logging.info("%d slides, %d patches, %d failed: %s", len(records), total, len(failed), " ".join(failed) or "none")
    write_patch_table(records, Path(smk.output.table))


run_job(f"patches {smk.wildcards.batch}", main)
