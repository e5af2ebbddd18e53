"""``anatldm predict`` with ``DatasetWriter`` on tiny trained models, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from anatldm.cli import main
from anatldm.export import check_dataset


def predict_config(tmp_path: Path, checkpoint: Path, bundle: Path, writer: dict | None = None,
                   num_samples: int = 6) -> Path:
    config = {
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False, "default_root_dir": str(tmp_path / "run"),
                    "enable_progress_bar": False,
                    "callbacks": [{"class_path": "DatasetWriter", "init_args": {
                        "output_dir": str(tmp_path / "out"), "dataset_id": 42, "dataset_name": "Tiny", **(writer or {})}}]},
        "model": {"class_path": "AnatomicalLDMTask",
                  "init_args": {"autoencoder": str(bundle), "sampling": {"sampler": "ddim", "num_inference_steps": 2}}},
        "data": {"class_path": "SampleSeeds", "init_args": {"num_samples": num_samples, "batch_size": 4, "seed": 3}},
        "ckpt_path": str(checkpoint),
    }
    path = tmp_path / "synthesize.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def models(tiny_bundle: Path, stage_checkpoints: dict[str, Path]) -> dict[str, Path]:
    return {**stage_checkpoints, "bundle": tiny_bundle}


def test_predict_exports_an_nnunet_dataset_with_a_data_card(models: dict, tmp_path: Path) -> None:
    from monai.data import load_decathlon_datalist

    config = predict_config(tmp_path, models["register"], models["bundle"], {"include_real": True})
    main(["predict", "--config", str(config)])
    folder = tmp_path / "out" / "Dataset042_Tiny"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["Dataset042_Tiny"]  # no staging left
    summary = check_dataset(folder)
    card = json.loads((folder / "datacard.json").read_text())
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"} and meta["labels"]["background"] == 0
    assert meta["numSynthetic"] == 6 and summary["cases"] == 6 + meta["numReal"] and meta["numReal"] > 0
    assert card["generation"]["seeds"] == {"first": 3, "last": 8, "count": 6, "all": [3, 4, 5, 6, 7, 8]}
    assert card["generation"]["sampler"] == "ddim" and card["generation"]["num_inference_steps"] == 2
    assert card["generation"]["guidance"] == {"kind": "none", "weight": 2.0, "guide": None}
    assert len(card["model"]["sha256"]) == 64 and "4 anatomical registers and an anatomy head" in card["model"]["description"]
    assert sum(c["pixels"] for c in card["classes"]) == summary["cases"] * 32 * 32
    audit = card["memorisation"]
    assert audit["num_samples"] == 6 and audit["num_held_out_slices"] > 0 and audit["threshold"] > 0
    low, high = audit["flagged_fraction_interval"]
    assert low <= audit["flagged_fraction"] <= high
    assert "licence terms may apply" in card["licence"] and "Memorisation audit" in (folder / "DATACARD.md").read_text()
    entries = load_decathlon_datalist(str(folder / "datalist.json"), is_segmentation=True)
    assert {e["source"] for e in entries} == {"synthetic", "real"}
    image = nib.load(folder / "imagesTr" / "synth_000003_0000.nii.gz")
    assert image.shape == (32, 32, 1) and -160 <= np.asarray(image.dataobj).min()
    assert (folder / "preview.png").is_file()
    with pytest.raises(SystemExit):  # a second export into the same, now non-empty, folder
        main(["predict", "--config", str(config)])
    main(["predict", "--config", str(config), "--trainer.callbacks.init_args.overwrite", "true",
          "--trainer.callbacks.init_args.include_real", "false"])
    assert check_dataset(folder)["cases"] == 6


def test_drop_memorised_removes_flagged_samples(models: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from anatldm.export.memorisation import MemorisationReference

    nearest = MemorisationReference.nearest

    def every_other_sample_copies(self, images):  # samples 0, 2, 4 of each batch sit on a training slice
        distance, index = nearest(self, images)
        distance[::2] = 0.0
        return distance, index

    monkeypatch.setattr(MemorisationReference, "nearest", every_other_sample_copies)
    config = predict_config(tmp_path, models["register"], models["bundle"], {"drop_memorised": True})
    main(["predict", "--config", str(config)])
    folder = tmp_path / "out" / "Dataset042_Tiny"
    card = json.loads((folder / "datacard.json").read_text())
    flagged = [f["case"] for f in card["memorisation"]["flagged"]]
    assert flagged == ["synth_000003", "synth_000005", "synth_000007"] and card["dropped_flagged"] and card["dataset"]["dropped_memorised_cases"] == flagged
    assert check_dataset(folder)["cases"] == 6 - len(flagged)
    assert not any((folder / "labelsTr" / f"{case}.nii.gz").exists() for case in flagged)
    assert (folder / "memorisation_flagged.png").is_file()


def test_baseline_with_segmenter_pseudo_labels(models: dict, tmp_path: Path) -> None:
    config = predict_config(tmp_path, models["baseline"], models["bundle"],
                            {"labels": "segmenter", "segmenter": str(models["segmenter"]),
                             "memorisation_audit": False}, num_samples=2)
    main(["predict", "--config", str(config)])
    folder = tmp_path / "out" / "Dataset042_Tiny"
    card = json.loads((folder / "datacard.json").read_text())
    assert check_dataset(folder)["cases"] == 2 and card["memorisation"] is None
    assert card["generation"]["labels"].startswith("pseudo-labels of the segmenter")
    assert "0 anatomical registers and no anatomy head" in card["model"]["description"]



def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def test_quality_filter_drops_samples_and_the_card_says_which(models: dict, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    segmenter = str(models["segmenter"])
    config = predict_config(tmp_path, models["register"], models["bundle"],
                            {"quality_filter": {"segmenter": segmenter, "min_dice": 0.0}})
    main(["predict", "--config", str(config)])
    folder = tmp_path / "out" / "Dataset042_Tiny"
    section = json.loads((folder / "datacard.json").read_text())["quality_filter"]
    assert section["num_generated"] == section["num_kept"] == 6 and section["dropped"] == []  # Dice >= 0 always
    assert check_dataset(folder)["cases"] == 6 and section["settings"]["segmenter"] == segmenter

    median = section["kept_dice_median"]  # a threshold some samples miss and some reach
    main(["predict", "--config", str(config), "--trainer.callbacks.init_args.overwrite", "true",
          "--trainer.callbacks.init_args.quality_filter.min_dice", str(median)])
    card = json.loads((folder / "datacard.json").read_text())
    section = card["quality_filter"]
    written = sorted(p.name.removesuffix(".nii.gz") for p in (folder / "labelsTr").iterdir())
    dropped = [d["case"] for d in section["dropped"]]
    assert 0 < section["num_dropped"] < 6 and section["num_kept"] + section["num_dropped"] == 6
    assert check_dataset(folder)["cases"] == len(written) == section["num_kept"] == card["dataset"]["num_synthetic"]
    assert sorted(set(written) | set(dropped)) == [f"synth_{seed:06d}" for seed in range(3, 9)]
    assert not set(written) & set(dropped) and card["generation"]["seeds"]["count"] == 6
    for entry in section["dropped"]:
        assert entry["dice"] < median and entry["reasons"] == [f"dice {entry['dice']:.3f} < {median:g}"]
        assert entry["seed"] == int(entry["case"].removeprefix("synth_"))
    assert section["dropped_by_criterion"] == {"dice": len(dropped)} and card["memorisation"]["num_samples"] == len(written)
    assert f"Kept {len(written)} of 6 generated samples" in (folder / "DATACARD.md").read_text()

    before = _snapshot(tmp_path / "out")
    with pytest.raises(SystemExit):  # the ground-truth rules reject every sample of this two-step model
        main(["predict", "--config", str(config), "--trainer.callbacks.init_args.overwrite", "true",
              "--trainer.callbacks.init_args.quality_filter.rules", "true"])
    assert "DatasetWriter.quality_filter: all 6 samples were dropped (rules: 6)" in capsys.readouterr().err
    assert _snapshot(tmp_path / "out") == before  # nothing written, the previous export untouched
    with pytest.raises(SystemExit):
        main(["predict", "--config", str(config), "--trainer.callbacks.init_args.overwrite", "true",
              "--trainer.callbacks.init_args.quality_filter.min_dice", "1.01"])
    assert "DatasetWriter.quality_filter.min_dice must lie in [0, 1]" in capsys.readouterr().err
    assert _snapshot(tmp_path / "out") == before
