# One job per batch of slides (fetch.batch_size of them): fetch the planned
# levels with one `s5cmd run` into the job's tmpdir, check their sizes,
# downsample them on `threads` threads, write each image and its provenance
# JSON, then the batch's outcome table. Slides finished before, for the same
# plan and settings, are skipped, so a re-run redoes only the unfinished ones.
# The images and JSON files are not declared outputs: Snakemake would delete a
# batch's finished slides before re-running it. Downloads never leave the job.
# The endpoint and s5cmd's workers are read from the config by the script, not
# passed as parameters: where the bytes come from must not re-run anything.


rule batch:
    input:
        unpack(get_batch_plan),
    output:
        table=f"{BATCH_TABLES}/{{batch}}.tsv",
    log:
        "logs/batch/{batch}.log",
    benchmark:
        f"{BENCHMARKS}/batch/{{batch}}.tsv"
    retries: 2
    conda:
        ENV
    threads: get_batch_threads
    resources:
        mem_mb=get_batch_mem_mb,
        runtime=get_batch_runtime,
        disk_mb=get_batch_disk_mb,
    params:
        # Everything the images depend on besides the plan, slidestock's version included.
        settings=RUN_SETTINGS.as_json()["stock"],
        redo_failed=CONFIG["fetch"]["redo_failed"],
        slides=SLIDES,
    script:
        "../scripts/batch.py"
