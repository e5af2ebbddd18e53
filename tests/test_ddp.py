"""Every stage under 2-process CPU DDP (gloo) gives the numbers of a 1-process run.

Each test runs the real ``anatldm`` command once in-process (1 process) and once through the
console script with ``--trainer.devices 2 --trainer.strategy ddp`` (2 processes), and compares
what was logged (CSV logger), exported (the autoencoder's scale factor) or reported
(``report.json``). The validation and test splits hold 7 slices, so the 2 ranks get uneven
shards (4 and 3): a padded sampler (repeated slices) or a mean of per-rank means would show.

Both runs use the same weights: the autoencoder trains with learning rates 0, the other stages
are validated at their (seeded) initialisation or loaded from the same checkpoints. So the only
allowed difference is floating-point summation order (per-rank partial sums, other batch
compositions): relative 1e-5 for logged metrics, 1e-6 for the float64 scale factor, and 1e-4
for the evaluation, whose samples come from batches of another composition (seeds split over
the ranks) and whose FID is a matrix square root of summed covariances.

Run alone with ``pytest -m ddp``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from anatldm.cli import main
from anatldm.models.autoencoder_bundle import BUNDLE_CONFIG
from tests.conf import TINY_DATA, VAE_DATA, VAE_MODEL, ldm_args

pytestmark = pytest.mark.ddp

ANATLDM = str(Path(sys.executable).parent / "anatldm")
TWO_PROCESSES = ["--trainer.accelerator", "cpu", "--trainer.devices", "2"]
#: 4 subjects x 7 slices, split 2/1/1 by subject: 7 validation and 7 test slices (shards of 4 and 3)
UNEVEN = {"num_slices": 7, "min_foreground": 0.0, "split_fractions": [0.5, 0.25, 0.25], "augment": False}
METRICS_RTOL = 1e-5


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("ddp-cache"))


def write_config(path: Path, model: dict, data: dict, **trainer: object) -> Path:
    path.write_text(yaml.safe_dump({
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "enable_model_summary": False,
                    "default_root_dir": str(path.parent), "enable_checkpointing": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(path.parent), "name": "csv", "version": 0}},
                    **trainer},
        "model": model,
        "data": {"class_path": "AnatomyDataModule", "init_args": data},
    }))
    return path


def run_two_processes(*args: str, strategy: str = "ddp") -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two ranks on a small CPU: no thread oversubscription
    result = subprocess.run([ANATLDM, *args, *TWO_PROCESSES, "--trainer.strategy", strategy], capture_output=True, encoding="utf-8",
                            errors="replace", timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]


def logged(run: Path) -> dict[str, float]:
    """The last value of every column of the run's CSV log."""
    values: dict[str, float] = {}
    with (run / "csv" / "version_0" / "metrics.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            values.update({key: float(value) for key, value in row.items() if value not in ("", None)})
    return values


def assert_same_metrics(single: dict[str, float], double: dict[str, float], names: list[str],
                        rtol: float = METRICS_RTOL) -> None:
    for name in names:
        assert name in single and name in double, (name, sorted(single), sorted(double))
        assert math.isfinite(single[name]), name
        assert double[name] == pytest.approx(single[name], rel=rtol, abs=1e-7), name


def test_autoencoder(tmp_path: Path, cache_dir: str) -> None:
    """Learning rates 0: both runs keep the seeded weights; same per-process batch of 3, so the
    scale factor is measured on the same 9 slices (split 5 + 4 over the ranks)."""
    model = {"class_path": "AutoencoderTask", "init_args": {**VAE_MODEL, "generator_lr": 0.0, "discriminator_lr": 0.0}}
    data = {**VAE_DATA, **UNEVEN, "cache_dir": cache_dir}
    runs = {}
    for processes in (1, 2):
        run = tmp_path / f"p{processes}"
        run.mkdir()
        config = write_config(run / "vae.yaml", {**model, "init_args": {**model["init_args"],
                                                                          "export_dir": str(run / "export")}},
                              data, max_epochs=1, limit_train_batches=2, log_every_n_steps=1)
        if processes == 1:
            main(["fit", "--config", str(config)])
        else:  # the discriminator idles in the warm-up step: DDP must allow unused parameters
            run_two_processes("fit", "--config", str(config), strategy="ddp_find_unused_parameters_true")
        runs[processes] = run
    assert_same_metrics(logged(runs[1]), logged(runs[2]), ["val/psnr", "val/ssim", "val/l1"])
    single, double = (json.loads((runs[n] / "export" / BUNDLE_CONFIG).read_text())["scale_factor"] for n in (1, 2))
    assert double == pytest.approx(single, rel=1e-6)


def validate_on_one_and_two_processes(tmp_path: Path, cache_dir: str, model: dict) -> dict[int, dict]:
    """``validate`` with batch 4 on 1 process and 2 x 2 on 2 processes; the logged metrics of each."""
    runs = {}
    for processes, batch_size in ((1, 4), (2, 2)):
        run = tmp_path / f"p{processes}"
        run.mkdir()
        config = write_config(run / "config.yaml", model, {**TINY_DATA, **UNEVEN, "batch_size": batch_size,
                                                           "cache_dir": cache_dir})
        if processes == 1:
            main(["validate", "--config", str(config)])
        else:
            run_two_processes("validate", "--config", str(config))
        runs[processes] = logged(run)
    return runs


def test_segmenter(tmp_path: Path, cache_dir: str) -> None:
    """Validation of the seeded initial network: batch 4 on 1 process, 2 x 2 on 2 processes."""
    model = {"class_path": "SegmenterTask", "init_args": {"num_classes": 6, "channels": [8, 16, 32], "strides": [2, 2]}}
    runs = validate_on_one_and_two_processes(tmp_path, cache_dir, model)
    assert_same_metrics(runs[1], runs[2], ["val/loss", "val/dice_mean", "val/dice_liver", "val/dice_bone"])


def test_latent_diffusion(tmp_path: Path, cache_dir: str, tiny_bundle: Path) -> None:
    """Validation of the seeded initial denoiser: noise and timesteps are drawn per slice."""
    model = {"class_path": "AnatomicalLDMTask", "init_args": {"autoencoder": str(tiny_bundle), **ldm_args(
        denoiser__registers__num_registers=4, training__preview_every_n_epochs=0)}}
    runs = validate_on_one_and_two_processes(tmp_path, cache_dir, model)
    assert_same_metrics(runs[1], runs[2], ["val/diffusion_loss", "val/anatomy_loss", "val/anatomy_dice"])


def test_evaluation(tmp_path: Path, cache_dir: str, stage_checkpoints: dict[str, Path]) -> None:
    """``anatldm test`` with 5 samples per generator (seeds 3 + 2 over the ranks), 7 test slices.

    KID and pairwise MS-SSIM draw random subsets / pairs by position in the gathered sample
    list, whose order depends on the ranks, so only their being finite is compared; every other
    point value must agree.
    """
    reports = {}
    for processes in (1, 2):
        run = tmp_path / f"p{processes}"
        run.mkdir()
        model = {"class_path": "EvaluationTask", "init_args": {
            "generators": {"register": str(stage_checkpoints["register"]),
                           "baseline": str(stage_checkpoints["baseline"])},
            "segmenter": str(stage_checkpoints["segmenter"]), "baseline": "baseline", "num_samples": 5,
            "num_inference_steps": 2, "sample_batch_size": 4, "num_bootstrap": 20, "output_dir": str(run / "eval")}}
        config = write_config(run / "eval.yaml", model, {**TINY_DATA, **UNEVEN, "cache_dir": cache_dir},
                              logger=False)
        if processes == 1:
            main(["test", "--config", str(config)])
        else:
            run_two_processes("test", "--config", str(config))
        reports[processes] = json.loads((run / "eval" / "report.json").read_text())
    single, double = reports[1], reports[2]
    assert single["num_real_test_slices"] == double["num_real_test_slices"] == 7
    assert double["real_test"]["segmenter_dice"] == pytest.approx(single["real_test"]["segmenter_dice"], rel=1e-4)
    assert double["real_test"]["plausibility_rate"]["value"] == \
        pytest.approx(single["real_test"]["plausibility_rate"]["value"], rel=1e-4)
    for name in ("register", "baseline"):
        exact = ["plausibility_rate", "fsd", "area_w1", "fid", "memorisation_rmse"]
        exact += ["self_consistency_dice"] if name == "register" else []
        for metric in exact:
            assert double["results"][name][metric]["n"] == single["results"][name][metric]["n"], (name, metric)
            assert double["results"][name][metric]["value"] == \
                pytest.approx(single["results"][name][metric]["value"], rel=1e-4, abs=1e-6), (name, metric)
        for metric in ("kid", "diversity_msssim"):
            assert math.isfinite(double["results"][name][metric]["value"]), (name, metric)
