# slidestock: reproducible stocks of low-resolution whole-slide images from IDC.
# Run: snakemake --cores 16 (config/config.yaml); every config key: config/README.md.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/cohort.smk"
include: "workflow/rules/slides.smk"
include: "workflow/rules/patches.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/lifecycle.smk"


# The batch tables are targets of their own: a batch whose table a run removed (it has slides
# that may pass next time) is re-run by the same command, even while the report stands.
rule all:
    default_target: True
    input:
        get_batch_tables,
        get_patch_outputs,
        f"{REPORT}/slides.csv",
        f"{REPORT}/index.html",
