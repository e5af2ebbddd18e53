"""Atomic, weights-only checkpoint files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anatldm.checkpointing import AtomicCheckpointIO


class Unpicklable:
    """torch.save fails on it after part of the file is written (a crash during a save)."""

    def __reduce__(self):
        raise OSError("disk full (simulated by a real pickling failure)")


def test_failed_save_keeps_previous_checkpoint_and_leaves_no_temp_file(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)
    before = path.read_bytes()
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}, "broken": Unpicklable()}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    assert io.load_checkpoint(path)["global_step"] == 1


def test_loading_never_unpickles_arbitrary_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Path("/etc/passwd")}, path)  # any class outside the allow-list
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        AtomicCheckpointIO().load_checkpoint(path)
