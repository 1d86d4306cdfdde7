"""The one error type every dataset reader and writer raises for bad input."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset on disk is missing, truncated or inconsistent.

    The message always names the file and, where it applies, the episode, so that a user can find
    and fix (or drop) the offending part without reading a decoder traceback. It subclasses
    ValueError so the command line prints it as a one-line error.
    """
