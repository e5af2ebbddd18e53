"""The real ``anatldm`` entry point, as a user runs it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from anatldm import __version__
from anatldm.cli import main

ANATLDM = str(Path(sys.executable).parent / "anatldm")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ANATLDM, *args], capture_output=True, encoding="utf-8", errors="replace", timeout=300)


def test_help_through_console_script() -> None:
    result = run("--help")
    assert result.returncode == 0
    for subcommand in ("fit", "validate", "test", "predict"):
        assert subcommand in result.stdout


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0 and __version__ in result.stdout


def test_fit_help_lists_data_options(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--data" in out and "--model" in out and "AnatomyDataModule" in out
    with pytest.raises(SystemExit):
        main(["fit", "--data", "AnatomyDataModule", "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    for key in ("source", "phantom_family", "image_size", "preset", "spacing", "slice_axis",
                "min_foreground", "label_map", "split_fractions", "cache_dir", "augment"):
        assert key in config["data"]["init_args"]


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump({"data": {"class_path": "AnatomyDataModule", "init_args": data}}))
    return path


def test_inspect_folder_dataset(volume_folder: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", {"source": "folder", "root": str(volume_folder), "preset": "ct",
                                                 "image_size": 16, "cache_dir": str(tmp_path / "cache"),
                                                 "split_fractions": [0.5, 0.25, 0.25]})
    result = run("inspect", "--config", str(config), "--out", str(tmp_path / "preview.png"))
    assert result.returncode == 0, result.stderr
    assert "split  subjects  slices  disc  square" in result.stdout
    assert re.search(r"^content hash: [0-9a-f]{16}$", result.stdout, re.MULTILINE), result.stdout
    assert (tmp_path / "preview.png").stat().st_size > 1000


def test_bad_data_is_one_line_error(volume_folder: Path, tmp_path: Path) -> None:
    (volume_folder / "labels" / "case1.nii.gz").unlink()
    config = write_config(tmp_path / "c.yaml", {"source": "folder", "root": str(volume_folder), "preset": "ct",
                                                 "cache_dir": str(tmp_path / "cache")})
    result = run("inspect", "--config", str(config), "--out", str(tmp_path / "preview.png"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("anatldm: error: ")
    assert "case1.nii.gz: image without label" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "preview.png").exists() and not (tmp_path / "cache").exists()


def test_unknown_config_key(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", {"source": "phantom", "imag_size": 32})
    result = run("fit", "--config", str(config))
    assert result.returncode != 0
    assert "data: Option 'imag_size' is not accepted" in result.stderr and "Traceback" not in result.stderr


def test_unknown_preset_value(volume_folder: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", {"source": "folder", "root": str(volume_folder), "preset": "pet"})
    result = run("fit", "--config", str(config))
    assert result.returncode != 0
    assert "data.preset: Expected" in result.stderr and "(given: pet)" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["fit", "--config", "/nonexistent/config.yaml"], "config: File does not exist: '/nonexistent/config.yaml'"),
    (["fit", "--trainer.max_epochs", "abc"], "trainer.max_epochs: Expected a <class 'int'> (given: abc)"),
    (["fly"], "invalid choice: 'fly'"),
])
def test_parse_errors_are_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("anatldm: error: ") and message in err[-1]


CONFIGS = sorted(str(p) for p in Path(__file__).parents[1].glob("configs/**/*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.split("configs/")[1])
def test_shipped_configs_parse(config: str, capsys: pytest.CaptureFixture) -> None:
    subcommand = "predict" if "sample" in config or "synthesize" in config else "test" if "eval" in config else "fit"
    with pytest.raises(SystemExit) as exit_info:
        main([subcommand, "--config", config, "--print_config"])
    assert exit_info.value.code == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["class_path"].startswith("anatldm.trainers.")


FULL_SIZE_LDM_CONFIGS = [c for c in CONFIGS if c.split("configs/")[1] in ("ldm.yaml", "ldm_baseline.yaml")]


@pytest.mark.parametrize("config", FULL_SIZE_LDM_CONFIGS, ids=lambda c: c.split("configs/")[1])
def test_full_size_ema_forgets_the_initialisation(config: str) -> None:
    """The EMA of a full-size run starts after a warm-up and keeps < 1 % of its starting weights at
    the end, even if only half of the slices pass the foreground filter (0.9999 without warm-up
    kept 10 % of the random initialisation over ~22.5k steps)."""
    import math

    settings = yaml.safe_load(Path(config).read_text())
    trainer, data = settings["trainer"], settings["data"]["init_args"]
    ema = next(c["init_args"] for c in trainer["callbacks"] if c["class_path"].endswith("EMAWeightAveraging"))
    slices = data["num_subjects"] * data["num_slices"] * data["split_fractions"][0] * 0.5
    steps = trainer["max_epochs"] * math.ceil(slices / (data["batch_size"] * trainer.get("devices", 1)))
    start = ema.get("update_starting_at_step") or 0
    assert 0.01 * steps <= start <= 0.1 * steps, (start, steps)
    assert ema["decay"] ** (steps - start) < 0.01


def test_the_ldm_task_takes_typed_groups_documented_in_its_own_docstring() -> None:
    """At most 12 arguments, each in the task's docstring; no ``*_DOC`` constant stands in for one."""
    import inspect
    import re

    import anatldm
    from anatldm.trainers import AnatomicalLDMTask

    parameters = [name for name in inspect.signature(AnatomicalLDMTask.__init__).parameters if name != "self"]
    assert len(parameters) <= 12
    args = AnatomicalLDMTask.__doc__.split("Args:", 1)[1]
    assert all(re.search(rf"^\s+{name}:", args, re.MULTILINE) for name in parameters)
    sources = Path(anatldm.__file__).parent.rglob("*.py")
    offenders = [str(p) for p in sources if re.search(r"^\w+_DOC\s*=|__doc__\s*=", p.read_text(encoding="utf-8"), re.M)]
    assert not offenders


def test_print_config_shows_the_nested_ldm_groups(capsys) -> None:
    root = Path(__file__).parents[1]
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(root / "configs" / "ldm.yaml"), "--print_config"])
    assert not done.value.code
    model = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
    assert set(model) == {"autoencoder", "denoiser", "anatomy_loss", "noise_schedule", "lr", "weight_decay",
                          "training", "sampling"}
    assert model["denoiser"]["registers"]["num_registers"] == 16 and model["denoiser"]["head"]["channels"] == 64
