"""The workflow's jobs: what every job shares (:mod:`.common`: logging, progress, failure records, outcome
tables, a quiet Ctrl-C), and, side by side on it, the stock's batch driver (:mod:`.stock`, one slide's job in
:mod:`.slide`, its sources :mod:`.idc` and :mod:`.gdc`) and the patches' (:mod:`.patches`, their levels in
:mod:`.patchlevels`). Rule scripts are thin adapters over these."""
