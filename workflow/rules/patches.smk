# Patches at high resolution (patches.enabled): one job per batch, after the batch's slides.
# Each slide's patches are placed on its low-resolution image's tissue, and only the frames
# they cover are fetched, by range, from the level the patch plan chose at patches.mpp. As
# for the stock, the patch files and records are not declared outputs: a batch re-run redoes
# only its unfinished slides. patches.parquet gathers every patch's row.


localrules:
    patch_table,


rule patches:
    input:
        unpack(get_patch_plan),
    output:
        table=f"{PATCH_TABLES}/{{batch}}.tsv",
    log:
        "logs/patches/{batch}.log",
    benchmark:
        f"{BENCHMARKS}/patches/{{batch}}.tsv"
    retries: 2
    conda:
        ENV
    threads: get_batch_threads
    resources:
        mem_mb=get_batch_mem_mb,
        runtime=get_batch_runtime,
    params:
        # Not patches.parallel, read from the config by the script: how fast bytes come re-runs nothing.
        settings=RUN_SETTINGS.as_json()["patches"],
        version=RUN_SETTINGS.stock.version,
        slides=SLIDES,
        suffix=IMAGE_SUFFIX,
    script:
        "../scripts/patches.py"


rule patch_table:
    input:
        get_patch_tables,
    output:
        parquet=f"{PATCHES}/patches.parquet",
    log:
        "logs/patch_table/patch_table.log",
    conda:
        ENV
    resources:
        mem_mb=2000,
        runtime=30,
    script:
        "../scripts/patch_table.py"
