"""Atomic writes of files and folders: a reader (or a crash) never sees a half-written output.

One scheme for every output of anatldm (checkpoints, slice caches, phantom data sets, bundles,
pipeline exports, exported data sets, reports, figures): write under a hidden temporary name
beside the target (so the rename never crosses a file system), flush the data to disk
(``fsync``), rename into place with one ``os.replace``, then flush the folder entry.

- :func:`write_atomic` / :func:`write_text_atomic`: one file.
- :class:`StagedFolder`: a folder, built under ``.<name>.partial-<id>`` and renamed into place.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

__all__ = ["StagedFolder", "fsync_path", "write_atomic", "write_text_atomic"]


def fsync_path(path: str | Path) -> None:
    """Flush file or folder ``path`` to disk (best effort for a folder: some file systems cannot
    open or flush one, and the rename is atomic without it)."""
    path = Path(path)
    folder = path.is_dir()
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        if folder:
            return
        raise
    try:
        os.fsync(descriptor)
    except OSError:
        if not folder:
            raise
    finally:
        os.close(descriptor)


def write_atomic(path: str | Path, write: Callable[[Path], object], suffix: str = "") -> Path:
    """Write ``path`` through ``write(temporary_path)`` in the same folder, then rename it into place.

    The temporary name is hidden and unique to the process (``.<name>.<pid>.partial<suffix>``);
    it is flushed to disk before the rename and removed if ``write`` fails, so a failed write
    leaves the previous file intact.

    Args:
        path: the target file; its folder is created if needed.
        write: writes the complete file to the path it is given.
        suffix: an extension the writer needs on its path (e.g. ``.nii.gz``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial{suffix}")
    try:
        write(partial)
        fsync_path(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    fsync_path(path.parent)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (:func:`write_atomic`)."""
    return write_atomic(path, lambda partial: partial.write_text(text, encoding="utf-8"))


class StagedFolder:
    """A folder written under a hidden sibling name and renamed to ``final`` in one step.

    ``final`` is therefore either absent (or its previous version) or complete. As a context
    manager it yields the staging folder, commits on a clean exit and removes the staging
    folder on an error; :meth:`open`, :meth:`commit` and :meth:`abort` serve writers whose
    work spans several calls (an export written batch by batch).

    Args:
        final: the folder to produce.
        replace: replace an existing ``final`` (moved aside, then removed after the rename);
            without it an existing ``final`` is left as it is.
        complete: says whether an existing ``final`` is a complete copy of the same content
            (another process wrote it first): then this copy is dropped instead of failing.
    """

    def __init__(self, final: str | Path, replace: bool = False,
                 complete: Callable[[Path], bool] | None = None) -> None:
        self.final = Path(final)
        self.replace = replace
        self.complete = complete
        self.staging = self.final.with_name(f".{self.final.name}.partial-{uuid.uuid4().hex[:12]}")

    def remove_stale(self) -> None:
        """Remove staging folders of ``final`` left by killed runs (only for a single writer)."""
        for stale in self.final.parent.glob(f".{self.final.name}.partial-*"):
            if stale != self.staging:
                shutil.rmtree(stale, ignore_errors=True)

    def open(self) -> Path:
        """Create the (empty) staging folder and return it."""
        self.staging.mkdir(parents=True)
        return self.staging

    def commit(self) -> Path:
        """Flush every staged file to disk and rename the staging folder to ``final``."""
        for folder, _, files in os.walk(self.staging):
            for name in files:
                fsync_path(Path(folder) / name)
            fsync_path(folder)
        previous = self.final.with_name(f".{self.final.name}.previous-{uuid.uuid4().hex[:12]}")
        if self.replace and self.final.exists():
            os.replace(self.final, previous)
        try:
            os.replace(self.staging, self.final)
        except OSError:
            if self.complete is None or not self.complete(self.final):
                raise
            self.abort()  # another process finished the same folder first
        finally:
            if previous.exists():
                shutil.rmtree(previous)
        fsync_path(self.final.parent)
        return self.final

    def abort(self) -> None:
        """Remove the staging folder (a failed or interrupted write)."""
        shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self) -> Path:
        return self.open()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if kind is not None:
            self.abort()
            return
        try:
            self.commit()
        except BaseException:
            self.abort()
            raise
