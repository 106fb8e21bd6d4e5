# The run report: one CSV row and one HTML table row per slide.


localrules:
    report,


rule report:
    input:
        records=get_slide_records,
        lock="results/cohort/cohort.tsv",
    output:
        csv=report(
            "results/report/slides.csv",
            caption="../report/slides.rst",
            category="Report",
        ),
        html="results/report/index.html",
    log:
        "logs/report/report.log",
    conda:
        ENV
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        cohort=CONFIG["cohort"],
        target=CONFIG["target"],
    script:
        "../scripts/report.py"
