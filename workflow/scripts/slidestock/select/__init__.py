"""Which slides: the cohort selected from IDC's index tables, its Parquet export, a portal manifest, a GDC
manifest or an earlier lock file (:mod:`.sources`, :mod:`.cohort`, :mod:`.manifests`), drawn with a seed, and
written as the lock file ``cohort.tsv`` (:mod:`.lockfile`). Nothing here reads a slide's pixels."""
