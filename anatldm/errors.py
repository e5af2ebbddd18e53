"""Errors caused by a user's input: the CLI prints them as one line and exits non-zero."""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["AnatLDMInputError", "CheckpointMismatchError", "ConfigError", "DataInputError", "TrainingDivergedError",
           "check_checkpoint_file", "check_output_folder", "read_json", "read_json_object"]


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
def check_output_folder(path: str | os.PathLike, key: str) -> None:
    """Raise :class:`ConfigError` (naming ``key``) if folder ``path`` could not be created or written.

    Creates nothing: it finds the nearest existing ancestor and checks that it is a writable
    folder, so a run fails before it starts rather than after hours of work.
    """
    folder = Path(path).absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}: {folder} cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: {folder} cannot be written: no write permission on {existing}")


def check_checkpoint_file(path: str | os.PathLike, key: str) -> None:
    """Raise :class:`ConfigError` (naming ``key``) unless ``path`` is a complete ``torch.save`` archive.

    torch's own errors for a missing, empty, truncated or random file are long and misleading
    (they suggest ``weights_only=False``).
    """
    if not Path(path).is_file():
        raise ConfigError(f"{key}: checkpoint {path} not found")
    if not zipfile.is_zipfile(path):
        raise ConfigError(f"{key}: {path} is not a readable checkpoint (corrupt or truncated: "
                          f"not a complete archive written by torch.save)")


def read_json(path: str | os.PathLike, error: type[AnatLDMInputError] = ConfigError, key: str = "") -> Any:
    """The JSON value in file ``path``: the one JSON reader of anatldm's inputs.

    A missing or unreadable file and invalid JSON are one-line ``error`` naming the file (after
    ``key``, the setting that named it, when given).
    """
    where = f"{key}: {path}" if key else str(path)
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{where}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{where}: not valid JSON ({err})") from None
    except OSError as err:
        raise error(f"{where}: cannot be read ({err.strerror or err})") from None


def read_json_object(path: Path, error: type[AnatLDMInputError] = ConfigError, required: Sequence[str] = (),
                     name_type: bool = True, key: str = "") -> dict[str, Any]:
    """The JSON object in file ``path`` (a metadata file next to weights, a data set's JSON);
    invalid JSON, another JSON type or a missing ``required`` field is one-line ``error``
    naming the file (``name_type``: the message names the type found; ``key``: the setting
    that named the file, as in :func:`read_json`)."""
    value = read_json(path, error, key)
    where = f"{key}: {path}" if key else str(path)
    if not isinstance(value, dict):
        raise error(f"{where}: expected a JSON object" + (f", got {type(value).__name__}" if name_type else ""))
    if missing := [name for name in required if name not in value]:
        raise error(f"{where}: missing field(s) {', '.join(map(repr, missing))}")
    return value
