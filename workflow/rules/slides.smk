# One job per slide: fetch the planned level with s5cmd into the job's tmpdir,
# check its size, downsample it, write the image and its provenance JSON.
# The download never leaves the job: it is deleted when the job ends.
# The endpoint is read from the config by the script, not passed as a
# parameter: where the bytes come from must not re-run finished slides.


rule slide:
    input:
        unpack(get_slide_plan),
    output:
        record="results/slides/{slide}.json",
    log:
        "logs/slide/{slide}.log",
    benchmark:
        "benchmarks/slide/{slide}.tsv"
    retries: 2
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 1500 * attempt,
        runtime=lambda wildcards, attempt: 30 * attempt,
        disk_mb=get_slide_disk_mb,
    params:
        image=lambda wildcards: f"results/slides/{wildcards.slide}.{IMAGE_SUFFIX}",
        target=CONFIG["target"],
        attempts=CONFIG["fetch"]["attempts"],
    script:
        "../scripts/slide.py"
