# The run report: tables, plots and a contact sheet (also for `snakemake --report`),
# the self-contained index.html, and `verify`, which re-hashes every image.


localrules:
    report,
    verify,


rule report:
    input:
        batches=get_batch_tables,
        lock=LOCK,
        patches=get_patch_outputs,
    output:
        csv=report(
            f"{REPORT}/slides.csv",
            caption="../report/slides.rst",
            category="Tables",
        ),
        parquet=f"{REPORT}/slides.parquet",
        html=f"{REPORT}/index.html",
        plot_bytes=report(
            f"{REPORT}/plots/bytes.svg",
            caption="../report/plot_bytes.rst",
            category="Plots",
        ),
        plot_spacing=report(
            f"{REPORT}/plots/spacing.svg",
            caption="../report/plot_spacing.rst",
            category="Plots",
        ),
        plot_size=report(
            f"{REPORT}/plots/size.svg",
            caption="../report/plot_size.rst",
            category="Plots",
        ),
        plot_collections=report(
            f"{REPORT}/plots/collections.svg",
            caption="../report/plot_collections.rst",
            category="Plots",
        ),
        sheet=report(
            f"{REPORT}/contact_sheet.png",
            caption="../report/contact_sheet.rst",
            category="Images",
        ),
    log:
        "logs/report/report.log",
    conda:
        ENV
    threads: get_report_threads
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        slides=SLIDES,
        sheet_max=CONFIG["report"]["contact_sheet_max"],
        target=CONFIG["target"],
        patches=PATCHES,
    script:
        "../scripts/report.py"


# No output: `snakemake verify` runs it every time it is asked for. No input either: it
# reads what a run left, whichever config made it, and never makes anything run first.
rule verify:
    log:
        "logs/verify/verify.log",
    conda:
        ENV
    params:
        results=RESULTS,
    script:
        "../scripts/verify.py"
