"""Exceptions raised by slidestock.

Every message names the item (a config key, a slide, a file), the value that
was found and what was expected, so that a user can act on it without reading
the code.
"""

from __future__ import annotations


class SlidestockError(Exception):
    """Base class of every error slidestock raises on purpose."""

    #: Whether a later run may get past it. Only network and server troubles may: a missing
    #: object, a wrong size seen twice, a level or file that is wrong fail the same way again.
    retryable = False


class ConfigError(SlidestockError):
    """The configuration does not satisfy the schema or its cross-key rules."""


class CohortError(SlidestockError):
    """The cohort query cannot be built or gives no usable slides."""


class LevelError(SlidestockError):
    """No pyramid level of a slide can serve the requested target."""


class FetchError(SlidestockError):
    """A download failed (the network, the server, a timeout): a later run may get past it."""

    retryable = True


class MissingObjectError(FetchError):
    """The object the plan names is not at the endpoint (HTTP 404, NoSuchKey): the same on every run."""

    retryable = False


class WrongSizeError(FetchError):
    """An object arrived twice with the same wrong size: the object is not what the index says, on every run."""

    retryable = False


class RangeNotSupportedError(FetchError):
    """The server answered a ranged GET with the whole object, where only the range would do."""


class DecodeError(SlidestockError):
    """A downloaded level cannot be read as the DICOM WSI it should be."""


class UnreachableError(FetchError):
    """A server could not be reached at all (name resolution, refused, timed out): the same for every slide."""
