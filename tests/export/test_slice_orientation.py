"""``anatldm predict`` writes slices in the orientation and spacing of the training volumes.

Axial, coronal and sagittal slices of the asymmetric CT phantom (liver on the patient's right):
a tiny LDM is trained on each through the real CLI, then ``anatldm predict`` runs
``SampleWriter`` and ``DatasetWriter`` (one NIfTI slice writer). Every written file must have
the training volumes' orientation codes and in-plane spacing, one voxel along the slice axis,
and a real training slice written by the export must be exactly that slice of its volume.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from monai.networks.nets import AutoencoderKL

from anatldm.cli import main
from anatldm.datamodules import AnatomyDataModule
from anatldm.models.autoencoder_bundle import save_autoencoder_bundle
from tests.conf import TINY_DATA, ldm_args

#: 32 slices of 32 x 32: every plane of the phantom is 32 x 32, so slices are neither cropped nor padded
DATA = {**TINY_DATA, "num_slices": 32, "min_foreground": 0.0}
AUTOENCODER = {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "channels": [8, 16], "latent_channels": 4,
               "num_res_blocks": 1, "norm_num_groups": 8, "attention_levels": [False, False],
               "with_encoder_nonlocal_attn": False, "with_decoder_nonlocal_attn": False}


def _native_spacing(cache_dir: Path, slice_axis: int) -> list[float]:
    """``[rows, columns]`` spacing of the phantom volumes in the plane (no resampling)."""
    probe = AnatomyDataModule(**{**DATA, "cache_dir": str(cache_dir), "slice_axis": slice_axis})
    zooms = nib.load(sorted((probe._phantom_root() / "images").glob("*.nii.gz"))[0]).header.get_zooms()
    first, second = (axis for axis in range(3) if axis != slice_axis)
    return [float(zooms[second]), float(zooms[first])]  # rows follow the later RAS axis


def _check_geometry(path: Path, training: nib.Nifti1Image, slice_axis: int) -> np.ndarray:
    written = nib.load(path)
    assert nib.aff2axcodes(written.affine) == nib.aff2axcodes(training.affine), path.name
    assert written.shape[slice_axis] == 1 and written.shape == tuple(32 if a != slice_axis else 1 for a in range(3))
    plane = [axis for axis in range(3) if axis != slice_axis]
    np.testing.assert_allclose(np.asarray(written.header.get_zooms())[plane],
                               np.asarray(training.header.get_zooms())[plane])
    return np.asarray(written.dataobj)


@pytest.mark.parametrize("slice_axis", [2, 1, 0], ids=["axial", "coronal", "sagittal"])
def test_predict_writes_the_training_orientation(slice_axis: int, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    data = {**DATA, "cache_dir": str(cache), "slice_axis": slice_axis, "spacing": _native_spacing(cache, slice_axis)}
    datamodule = AnatomyDataModule(**data)
    torch.manual_seed(0)
    bundle = tmp_path / "bundle"
    save_autoencoder_bundle(bundle, AutoencoderKL(**AUTOENCODER), AUTOENCODER, 1.3, datamodule.normalization,
                            datamodule.class_names, datamodule.image_size)
    model = {"class_path": "AnatomicalLDMTask",
             "init_args": {"autoencoder": str(bundle), **ldm_args(denoiser__registers__num_registers=4,
                                                                  training__preview_every_n_epochs=0)}}
    fit = tmp_path / "fit.yaml"
    fit.write_text(yaml.safe_dump({
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False, "max_steps": 1, "limit_val_batches": 0,
                    "enable_progress_bar": False, "default_root_dir": str(tmp_path / "run"),
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(tmp_path / "run"), "save_last": True}}]},
        "model": model, "data": {"class_path": "AnatomyDataModule", "init_args": data}}))
    main(["fit", "--config", str(fit)])
    predict = tmp_path / "predict.yaml"
    predict.write_text(yaml.safe_dump({
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False,
                    "default_root_dir": str(tmp_path / "run"), "callbacks": [
                        {"class_path": "SampleWriter", "init_args": {"output_dir": str(tmp_path / "samples")}},
                        {"class_path": "DatasetWriter", "init_args": {
                            "output_dir": str(tmp_path / "export"), "dataset_id": 7, "dataset_name": "Axes",
                            "include_real": True, "memorisation_audit": False}}]},
        "model": {"class_path": "AnatomicalLDMTask",
                  "init_args": {"autoencoder": str(bundle), "sampling": {"sampler": "ddim", "num_inference_steps": 1}}},
        "data": {"class_path": "SampleSeeds", "init_args": {"num_samples": 2, "batch_size": 2}},
        "ckpt_path": str(tmp_path / "run" / "last.ckpt")}))
    main(["predict", "--config", str(predict)])

    volumes = datamodule._phantom_root()
    training = nib.load(sorted((volumes / "images").glob("*.nii.gz"))[0])
    samples = sorted((tmp_path / "samples").glob("sample_*.nii.gz"))
    assert len(samples) == 4  # image and label of two seeds
    for path in samples:
        _check_geometry(path, training, slice_axis)
    dataset = tmp_path / "export" / "Dataset007_Axes"
    cases = json.loads((dataset / "datalist.json").read_text())["training"]
    real = [case for case in cases if case["source"] == "real"]
    assert len(cases) - len(real) == 2 and real
    for case in cases:
        _check_geometry(dataset / case["image"], training, slice_axis)
    asymmetric = 0
    for case in real:  # each written real slice is exactly that slice of its training volume
        subject, position = case["training_slice"].rsplit(":", 1)
        label = np.asarray(nib.load(volumes / "labels" / f"{subject}.nii.gz").dataobj)
        expected = np.take(label, [int(position)], axis=slice_axis)  # (X, Y, 1) for axial
        np.testing.assert_array_equal(_check_geometry(dataset / case["label"], training, slice_axis), expected)
        asymmetric += any(not np.array_equal(expected, np.flip(expected, axis)) for axis in range(3) if axis != slice_axis)
    assert asymmetric > 0  # slices a flip would change: the comparison sees a wrong orientation
