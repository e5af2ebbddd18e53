"""The autoencoder export bundle: round trip and every way a bundle can be broken."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.networks.nets import AutoencoderKL
from safetensors.torch import load_file, save_file

from anatldm.errors import ConfigError
from anatldm.models.autoencoder_bundle import (
    BUNDLE_CONFIG,
    BUNDLE_NETWORK_CONFIG,
    BUNDLE_WEIGHTS,
    REQUIRED_FIELDS,
    load_autoencoder_bundle,
    save_autoencoder_bundle,
)

CONFIG = {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "channels": [8, 16], "latent_channels": 3,
          "num_res_blocks": 1, "norm_num_groups": 4, "attention_levels": [False, False],
          "with_encoder_nonlocal_attn": False, "with_decoder_nonlocal_attn": False}
NORMALIZATION = {"preset": "ct", "ct_window": [400.0, 40.0], "image_size": [32, 32]}


@pytest.fixture
def bundle(tmp_path: Path) -> tuple[Path, AutoencoderKL]:
    torch.manual_seed(0)
    network = AutoencoderKL(**CONFIG).eval()
    save_autoencoder_bundle(tmp_path / "export", network, CONFIG, scale_factor=1.7,
                            normalization=NORMALIZATION, class_names=["background", "liver"],
                            image_size=(32, 32), extra={"downsampling_factor": 2})
    return tmp_path / "export", network


def one_line_error(path: Path) -> str:
    with pytest.raises(ConfigError) as error:
        load_autoencoder_bundle(path)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_round_trip_gives_bit_identical_latents(bundle: tuple[Path, AutoencoderKL]) -> None:
    folder, network = bundle
    loaded, metadata = load_autoencoder_bundle(folder)
    assert not loaded.training
    images = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.encode(images)[0], network.encode(images)[0])
        assert torch.equal(loaded.reconstruct(images), network.reconstruct(images))
    assert metadata["scale_factor"] == 1.7 and metadata["class_names"] == ["background", "liver"]
    assert metadata["normalization"] == NORMALIZATION and metadata["image_size"] == [32, 32]
    assert metadata["config"] == CONFIG and metadata["downsampling_factor"] == 2
    assert set(REQUIRED_FIELDS) <= set(metadata)


def test_json_path_works_like_the_folder(bundle: tuple[Path, AutoencoderKL]) -> None:
    folder, _ = bundle
    _, metadata = load_autoencoder_bundle(folder / BUNDLE_CONFIG)
    assert metadata["scale_factor"] == 1.7
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == sorted([BUNDLE_CONFIG, BUNDLE_NETWORK_CONFIG, BUNDLE_WEIGHTS])  # no temporary left


def test_missing_bundle(tmp_path: Path) -> None:
    message = one_line_error(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in message and "no autoencoder bundle" in message


@pytest.mark.parametrize("field", ["scale_factor", "components", "class_names"])
def test_json_without_a_field(bundle: tuple[Path, AutoencoderKL], field: str) -> None:
    folder, _ = bundle
    metadata = json.loads((folder / BUNDLE_CONFIG).read_text(encoding="utf-8"))
    del metadata[field]
    (folder / BUNDLE_CONFIG).write_text(json.dumps(metadata))
    message = one_line_error(folder)
    assert BUNDLE_CONFIG in message and f"missing field(s) '{field}'" in message


def test_invalid_json_and_bad_scale(bundle: tuple[Path, AutoencoderKL]) -> None:
    folder, _ = bundle
    text = (folder / BUNDLE_CONFIG).read_text(encoding="utf-8")
    (folder / BUNDLE_CONFIG).write_text(text[:-10])
    assert "not valid JSON" in one_line_error(folder)
    metadata = json.loads(text)
    (folder / BUNDLE_CONFIG).write_text(json.dumps({**metadata, "scale_factor": -1}))
    assert "'scale_factor' must be a positive number" in one_line_error(folder)


def test_weights_that_do_not_match_the_config(bundle: tuple[Path, AutoencoderKL]) -> None:
    folder, _ = bundle
    config = json.loads((folder / BUNDLE_NETWORK_CONFIG).read_text(encoding="utf-8"))
    (folder / BUNDLE_NETWORK_CONFIG).write_text(json.dumps({**config, "channels": [8, 32]}))
    message = one_line_error(folder)
    assert BUNDLE_WEIGHTS in message and "do not match the config" in message and "another shape" in message
    (folder / BUNDLE_NETWORK_CONFIG).write_text(json.dumps(config))
    state = load_file(folder / BUNDLE_WEIGHTS)
    state.pop("post_quant_conv.conv.weight")
    save_file(state, folder / BUNDLE_WEIGHTS)
    message = one_line_error(folder)
    assert "1 tensor(s) missing (e.g. post_quant_conv.conv.weight)" in message


def test_config_that_builds_no_network_and_missing_or_corrupt_weights(bundle: tuple[Path, AutoencoderKL]) -> None:
    folder, _ = bundle
    config = json.loads((folder / BUNDLE_NETWORK_CONFIG).read_text(encoding="utf-8"))
    (folder / BUNDLE_NETWORK_CONFIG).write_text(json.dumps({**config, "channels": [8, 18]}))
    assert "does not build an AutoencoderKL" in one_line_error(folder)
    (folder / BUNDLE_NETWORK_CONFIG).write_text(json.dumps({**config, "_class_name": "monai.networks.nets.VQVAE"}))
    assert "'_class_name' is 'monai.networks.nets.VQVAE'" in one_line_error(folder)
    (folder / BUNDLE_NETWORK_CONFIG).write_text(json.dumps(config))
    (folder / BUNDLE_WEIGHTS).write_bytes(b"not safetensors")
    assert "not a readable safetensors file" in one_line_error(folder)
    (folder / BUNDLE_WEIGHTS).unlink()
    assert "weights file missing" in one_line_error(folder)


def test_save_refuses_a_bad_scale_factor(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scale_factor"):
        save_autoencoder_bundle(tmp_path, AutoencoderKL(**CONFIG), CONFIG, float("nan"), NORMALIZATION,
                                ["background", "liver"], (32, 32))


def write_format_1_bundle(folder: Path, network: AutoencoderKL) -> None:
    """A bundle as the previous layout wrote it: ``autoencoder.json`` holding the network and its
    config beside ``autoencoder.safetensors`` (the file names and fields of format 1)."""
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, folder / "autoencoder.safetensors",
              metadata={"format": "pt"})
    (folder / "autoencoder.json").write_text(json.dumps({
        "format_version": 1, "network": "monai.networks.nets.AutoencoderKL", "config": CONFIG,
        "weights": "autoencoder.safetensors", "scale_factor": 1.7, "normalization": NORMALIZATION,
        "class_names": ["background", "liver"], "image_size": [32, 32], "anatldm_version": "0.9.0"}))


def test_a_bundle_of_the_previous_layout_loads_bit_identically(tmp_path: Path) -> None:
    torch.manual_seed(0)
    network = AutoencoderKL(**CONFIG).eval()
    write_format_1_bundle(tmp_path / "old", network)
    save_autoencoder_bundle(tmp_path / "new", network, CONFIG, 1.7, NORMALIZATION, ["background", "liver"], (32, 32))
    (old, old_meta), (new, new_meta) = load_autoencoder_bundle(tmp_path / "old"), load_autoencoder_bundle(tmp_path / "new")
    images = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(old.reconstruct(images), new.reconstruct(images))
    for key in ("config", "scale_factor", "normalization", "class_names", "image_size"):
        assert old_meta[key] == new_meta[key]
    (tmp_path / "old" / "autoencoder.safetensors").unlink()
    assert "autoencoder.safetensors: weights file missing" in one_line_error(tmp_path / "old")


def test_an_unknown_format_version_is_one_line(bundle: tuple[Path, AutoencoderKL]) -> None:
    folder, _ = bundle
    metadata = json.loads((folder / BUNDLE_CONFIG).read_text(encoding="utf-8"))
    (folder / BUNDLE_CONFIG).write_text(json.dumps({**metadata, "format_version": 7}))
    assert "'format_version' is 7; this anatldm reads 1 and 2" in one_line_error(folder)
