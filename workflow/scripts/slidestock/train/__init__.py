"""Planned patches at training time: read again from the archive by range, exactly as the workflow cut them
(:mod:`.reader`), and their coordinates in the layout CLAM and TRIDENT read (:mod:`.layouts`)."""
