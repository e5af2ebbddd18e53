"""Errors caused by a user's input: the CLI prints them as one line and exits non-zero."""

from __future__ import annotations

__all__ = ["AnatLDMInputError", "CheckpointMismatchError", "ConfigError", "DataInputError", "TrainingDivergedError"]


class AnatLDMInputError(ValueError):
    """A mistake in a user's files or settings, reported without a traceback by the CLI.

    The message must name the offending file or key and say what is wrong with it.
    """


class DataInputError(AnatLDMInputError):
    """A data set on disk that cannot be used as it is (missing pair, corrupt file, ...)."""


class ConfigError(AnatLDMInputError):
    """A setting with a value that cannot work; the message names the key."""


class CheckpointMismatchError(AnatLDMInputError):
    """A checkpoint or bundle whose tensors do not fit the model built from the config; the
    message names the file and the first differing tensors."""


class TrainingDivergedError(AnatLDMInputError):
    """Too many consecutive training steps with a non-finite loss; the message names the
    setting that bounds them and the last good checkpoint."""
