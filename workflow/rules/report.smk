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
            "results/report/slides.csv",
            caption="../report/slides.rst",
            category="Tables",
        ),
        parquet="results/report/slides.parquet",
        html="results/report/index.html",
        plot_bytes=report(
            "results/report/plots/bytes.svg",
            caption="../report/plot_bytes.rst",
            category="Plots",
        ),
        plot_spacing=report(
            "results/report/plots/spacing.svg",
            caption="../report/plot_spacing.rst",
            category="Plots",
        ),
        plot_size=report(
            "results/report/plots/size.svg",
            caption="../report/plot_size.rst",
            category="Plots",
        ),
        plot_collections=report(
            "results/report/plots/collections.svg",
            caption="../report/plot_collections.rst",
            category="Plots",
        ),
        sheet=report(
            "results/report/contact_sheet.png",
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
        results="results",
    script:
        "../scripts/verify.py"


# At the end of a run that wrote the report: the outcome in one last line (failures grouped by
# reason before it), and a non-zero exit when slides failed, unless report.accept_failures.
onsuccess:
    summarise_run()


# A run stopped by a failed job (a batch whose bucket cannot be reached, say) still leaves
# the batches with slides that may pass to the next run.
onerror:
    redo_next_time()
    restore_lock_file()
    if said_moved():
        print(said_moved(), file=sys.stderr)


onstart:
    keep_lock_file()
    write_settings()
