"""anatldm.atomic: files and folders are either their previous version or complete."""

from __future__ import annotations

from pathlib import Path

import pytest

from anatldm.atomic import StagedFolder, write_atomic, write_text_atomic


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = write_text_atomic(tmp_path / "out" / "report.json", "{}")  # the folder is created

    def fail(partial: Path) -> None:
        partial.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, fail)
    assert path.read_text() == "{}" and [p.name for p in path.parent.iterdir()] == ["report.json"]


def test_a_staged_folder_appears_complete_or_not_at_all(tmp_path: Path) -> None:
    final = tmp_path / "dataset"
    with pytest.raises(RuntimeError, match="crash"), StagedFolder(final) as staging:
        (staging / "a.txt").write_text("a")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    with StagedFolder(final) as staging:
        (staging / "a.txt").write_text("a")
        assert not final.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"] and (final / "a.txt").read_text() == "a"


def test_replace_swaps_the_folder_and_without_it_an_existing_one_is_an_error(tmp_path: Path) -> None:
    final = tmp_path / "export"
    with StagedFolder(final) as staging:
        (staging / "old.txt").write_text("old")
    with pytest.raises(OSError), StagedFolder(final) as staging:
        (staging / "new.txt").write_text("new")
    with StagedFolder(final, replace=True) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["export"] and [p.name for p in final.iterdir()] == ["new.txt"]


def test_a_complete_copy_written_first_by_another_process_is_kept(tmp_path: Path) -> None:
    final = tmp_path / "cache"
    first, second = (StagedFolder(final, complete=lambda f: (f / "meta.json").is_file()) for _ in range(2))
    for stage, text in ((first, "first"), (second, "second")):
        (stage.open() / "meta.json").write_text(text)
    first.commit()
    second.commit()  # loses the race: its copy is dropped, the complete one stays
    assert (final / "meta.json").read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["cache"]


def test_remove_stale_clears_staging_folders_of_killed_runs(tmp_path: Path) -> None:
    killed = StagedFolder(tmp_path / "Dataset001_X")
    killed.open()
    stage = StagedFolder(tmp_path / "Dataset001_X")
    stage.open()
    stage.remove_stale()
    assert [p.name for p in tmp_path.iterdir()] == [stage.staging.name]
