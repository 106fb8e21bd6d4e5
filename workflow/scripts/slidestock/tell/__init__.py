"""What the tool says: a stock's status and a run's end lines (:mod:`.status`), the notice before a run
(:mod:`.notice`), the report page, its plots and its Patches section (:mod:`.report`, :mod:`.plots`,
:mod:`.patchreport`), and verify (:mod:`.verify`)."""
