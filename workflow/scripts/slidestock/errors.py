"""Exceptions raised by slidestock.

Every message names the item (a config key, a slide, a file), the value that
was found and what was expected, so that a user can act on it without reading
the code.
"""

from __future__ import annotations


class SlidestockError(Exception):
    """Base class of every error slidestock raises on purpose."""


class ConfigError(SlidestockError):
    """The configuration does not satisfy the schema or its cross-key rules."""


class CohortError(SlidestockError):
    """The cohort query cannot be built or gives no usable slides."""


class LevelError(SlidestockError):
    """No pyramid level of a slide can serve the requested target."""


class FetchError(SlidestockError):
    """A download failed or produced a file of the wrong size."""


class DecodeError(SlidestockError):
    """A downloaded level cannot be read as the DICOM WSI it should be."""


class UnreachableError(FetchError):
    """A server could not be reached at all (name resolution, refused, timed out): the same for every slide."""
