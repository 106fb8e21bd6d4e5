"""Bytes in, and what they are.

Ranged reads go through one layer (:mod:`.ranges`: one merge, one fan-out, one retry policy, one header-prefix
reader) over obstore for the buckets (:mod:`.objectstore`) and HTTP for the GDC (:mod:`.gdcapi`) and the plan's
headers (:mod:`.headers`); whole levels come with s5cmd (:mod:`.fetch`). A DICOM level is described by its header
(:mod:`.dicom`), its frames found by one of the ways of :mod:`.frames`, in a downloaded file (:mod:`.local`) or by
range (:mod:`.remote`), and decoded (:mod:`.codestreams`); an SVS file is its TIFF directory (:mod:`.tiff`) and
pyramid pages (:mod:`.svs`).
"""
