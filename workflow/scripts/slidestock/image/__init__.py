"""Pixels: a level reduced to the exact output size (:mod:`.reduce`), the files written with their resolution
and ICC profile (:mod:`.output`), thumbnails (:mod:`.thumbnails`), and patches placed on tissue and cut from
their frames (:mod:`.patches`)."""
