from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from anatldm.cli import main
from anatldm.errors import ConfigError
from anatldm.models.networks import bottleneck_module
from anatldm.trainers import SegmenterTask

TINY_DATA = {"num_subjects": 4, "num_slices": 8, "image_size": 32, "batch_size": 4, "num_workers": 0,
             "split_fractions": [0.5, 0.25, 0.25], "min_foreground": 0.0}


def config(tmp_path: Path, num_classes: int = 6) -> Path:
    path = tmp_path / "seg.yaml"
    path.write_text(yaml.safe_dump({
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False, "default_root_dir": str(tmp_path)},
        "model": {"class_path": "SegmenterTask",
                  "init_args": {"num_classes": num_classes, "channels": [8, 16, 32], "strides": [2, 2]}},
        "data": {"class_path": "AnatomyDataModule", "init_args": {**TINY_DATA, "cache_dir": str(tmp_path / "c")}},
    }))
    return path


def test_fit_and_test_through_the_cli(tmp_path: Path) -> None:
    main(["fit", "--config", str(config(tmp_path)), "--trainer.fast_dev_run", "1"])
    main(["test", "--config", str(config(tmp_path)), "--trainer.fast_dev_run", "1"])


def test_class_count_must_match_the_data(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config(tmp_path, num_classes=4)), "--trainer.fast_dev_run", "1"])
    assert exit_info.value.code == 2
    assert "model.num_classes is 4 but the data has 6 classes" in capsys.readouterr().err


def test_bottleneck_is_the_deepest_stage() -> None:
    task = SegmenterTask(num_classes=3, channels=(8, 16, 32), strides=(2, 2))
    captured = []
    bottleneck_module(task.network).register_forward_hook(lambda m, i, o: captured.append(o))
    task(torch.randn(2, 1, 32, 32))
    assert captured[0].shape == (2, task.feature_channels, 8, 8)


def test_bad_strides() -> None:
    with pytest.raises(ConfigError, match="model.strides needs 2 entries"):
        SegmenterTask(num_classes=3, channels=(8, 16, 32), strides=(2,))
