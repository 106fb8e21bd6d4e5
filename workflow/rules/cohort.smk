# The cohort (lock file) and the level plan. The plan
# is a checkpoint: how many batch jobs there are, and their parameters, depend on what it
# contains; the cohort is a plain rule (the plan reads it as a file). Neither is retried:
# they read tables and headers, and fail the same way a second time (an unreachable
# server, a filter that selects nothing); the message says what to do.


rule cohort:
    input:
        unpack(get_cohort_inputs),
    output:
        lock=report(
            LOCK,
            caption="../report/cohort.rst",
            category="Cohort",
        ),
    log:
        "logs/cohort/cohort.log",
    benchmark:
        f"{BENCHMARKS}/cohort/cohort.tsv"
    conda:
        ENV
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 20 * attempt,
    params:
        cohort=CONFIG["cohort"],
        idc_release=IDC_RELEASE,
    script:
        "../scripts/cohort.py"


checkpoint plan:
    input:
        lock=LOCK,
    output:
        plan=PLAN,
    log:
        "logs/plan/plan.log",
    benchmark:
        f"{BENCHMARKS}/plan/plan.tsv"
    conda:
        ENV
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 20 * attempt,
    params:
        cohort=CONFIG["cohort"],
        target=CONFIG["target"],
        prefer=CONFIG["fetch"]["prefer"],
        batch_plans=BATCH_PLANS,
        batch_size=CONFIG["fetch"]["batch_size"],
        # Only what the patch plan depends on (nothing while patches are off): other patch settings re-run no plan.
        patches=(
            {"enabled": True, "mpp": CONFIG["patches"]["mpp"]}
            if CONFIG["patches"]["enabled"]
            else {"enabled": False}
        ),
        patch_plans=PATCH_PLANS,
        patch_instances=PATCH_INSTANCES,
    script:
        "../scripts/plan.py"
