"""Errors caused by a user's input: the CLI prints them as one line and exits non-zero."""

from __future__ import annotations

__all__ = ["AnatLDMInputError", "ConfigError", "DataInputError"]


class AnatLDMInputError(ValueError):
    """A mistake in a user's files or settings, reported without a traceback by the CLI.

    The message must name the offending file or key and say what is wrong with it.
    """


class DataInputError(AnatLDMInputError):
    """A data set on disk that cannot be used as it is (missing pair, corrupt file, ...)."""


class ConfigError(AnatLDMInputError):
    """A setting with a value that cannot work; the message names the key."""
