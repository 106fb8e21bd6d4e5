"""Which level of each slide: the level rule (:mod:`.levels`), the plan step that applies it to the cohort with
the instance headers it needs (:mod:`.planner`), and the plan's rows and files (:mod:`.rows`)."""
