"""Atomic file writes: a reader (or a crash) never sees a half-written output."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_atomic", "write_text_atomic"]


def write_atomic(path: str | Path, write: Callable[[Path], object], suffix: str = "") -> Path:
    """Write ``path`` through ``write(temporary_path)`` in the same folder, then rename it into place.

    The temporary name is hidden and unique to the process (``.<name>.<pid>.partial<suffix>``;
    ``suffix`` keeps an extension a writer needs, e.g. ``.nii.gz``); it is removed if ``write`` fails.
    """
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial{suffix}")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` under a temporary name in the same folder, then rename it to ``path``."""
    return write_atomic(path, lambda partial: partial.write_text(text, encoding="utf-8"))
