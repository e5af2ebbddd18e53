"""anatldm.callbacks.EMAWeightAveraging: the same averages as Lightning's, by one foreach update."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import EMAWeightAveraging as LightningEMA
from lightning.pytorch.demos.boring_classes import BoringModel

from anatldm.callbacks import EMAWeightAveraging


def _fit(callback, tmp_path) -> dict[str, torch.Tensor]:
    seed_everything(0)
    model = BoringModel()
    trainer = Trainer(accelerator="cpu", max_steps=6, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                      default_root_dir=str(tmp_path), limit_val_batches=0)
    trainer.fit(model)
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


@pytest.mark.parametrize("start", [None, 3])
def test_same_weights_as_lightnings_ema(tmp_path, start) -> None:
    ours = _fit(EMAWeightAveraging(decay=0.7, update_starting_at_step=start), tmp_path / "ours")
    reference = _fit(LightningEMA(decay=0.7, update_starting_at_step=start), tmp_path / "lightning")
    plain = _fit(LightningEMA(decay=0.0), tmp_path / "plain")  # decay 0: the raw weights
    for name in reference:
        torch.testing.assert_close(ours[name], reference[name])
    assert any(not torch.allclose(ours[name], plain[name]) for name in plain)  # the average is not the weights
