"""Register-class association, attention resizing and the association files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from anatldm.errors import ConfigError
from anatldm.interpret import (
    RegisterAssociation,
    attention_at_image_size,
    load_association,
    registers_for_class,
    save_association,
    save_attention_panels,
)

CLASSES = ["background", "liver", "spleen"]


def constructed(batch: int = 6, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks with a liver square and a spleen square; register 0 attends to the liver, register 1
    to the spleen, register 2 to the rest (plus noise), shares summing to one."""
    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(batch, size, size, dtype=torch.long)
    for b in range(batch):
        masks[b, 2 + b % 3:8, 2:8] = 1
        masks[b, 9:14, 9:13 + b % 2] = 2
    logits = torch.stack([(masks == 1).float(), (masks == 2).float(), (masks == 0).float()], 1) * 2.0
    logits = logits + 0.3 * torch.randn(logits.shape, generator=generator)
    return logits.softmax(1), masks


def test_association_recovers_the_constructed_pairs() -> None:
    attention, masks = constructed()
    metric = RegisterAssociation(3, 3)
    metric.update(attention[:3], masks[:3])
    metric.update(attention[3:], masks[3:])
    table = metric.compute()
    assert table.shape == (3, 3) and int(metric.num_samples) == 6
    assert table.argmax(0).tolist() == [2, 0, 1]  # background <- r2, liver <- r0, spleen <- r1
    assert table[0, 1] > 0.8 and table[1, 2] > 0.8 and table[0, 2] < 0
    # pooled over samples: one update or two give the same table
    single = RegisterAssociation(3, 3)
    single.update(attention, masks)
    torch.testing.assert_close(single.compute(), table)
    # against numpy's Pearson correlation
    a = attention[:, 0].flatten().numpy()
    m = (masks == 1).flatten().float().numpy()
    assert abs(float(table[0, 1]) - np.corrcoef(a, m)[0, 1]) < 1e-5


def test_constant_register_or_absent_class_gives_zero() -> None:
    attention, masks = constructed()
    attention = torch.cat([attention, torch.full_like(attention[:, :1], 0.0)], 1)  # a register never read
    metric = RegisterAssociation(4, 4)
    metric.update(attention, masks)  # class 3 never occurs
    table = metric.compute()
    assert torch.all(table[3] == 0) and torch.all(table[:, 3] == 0) and torch.isfinite(table).all()


def test_shape_mismatch_is_an_error() -> None:
    attention, masks = constructed()
    with pytest.raises(ValueError, match="does not match"):
        RegisterAssociation(3, 3).update(attention[:, :, :8], masks)


def test_registers_for_class_ranks_and_rejects() -> None:
    #                    background liver spleen
    table = torch.tensor([[0.1, 0.5, -0.2],
                          [0.3, 0.6, 0.1],
                          [-0.4, -0.1, -0.3],
                          [-0.2, 0.3, 0.2]])
    assert registers_for_class(table, CLASSES, "liver", 2) == [1, 0]
    assert registers_for_class(table, CLASSES, "liver", 5) == [1, 0, 3]  # only positive correlations
    with pytest.raises(ConfigError, match="no register carries 'background'"):
        registers_for_class(table, CLASSES, "background", 1)  # every register follows an organ more
    with pytest.raises(ConfigError, match="no register carries 'spleen'.*register 3.*'liver'"):
        registers_for_class(table, CLASSES, "spleen", 1)  # r3 and r1 follow the liver more
    with pytest.raises(ConfigError, match="unknown class 'kidney' in a register edit; known classes: background, "
                                          "liver, spleen"):
        registers_for_class(table, CLASSES, "kidney", 1)
    with pytest.raises(ConfigError, match="no register carries 'liver'"):
        registers_for_class(-table.abs(), CLASSES, "liver", 1)


def test_resized_maps_still_sum_to_one() -> None:
    maps = torch.rand(2, 5, 4, 4).softmax(1)
    resized = attention_at_image_size({"up1": maps, "up0": torch.rand(2, 5, 8, 8).softmax(1)}, (32, 32))
    assert set(resized) == {"up0", "up1", "mean"}
    for value in resized.values():
        assert value.shape == (2, 5, 32, 32)
        torch.testing.assert_close(value.sum(1), torch.ones(2, 32, 32))
    with pytest.raises(ValueError, match="no attention maps"):
        attention_at_image_size({}, (32, 32))


def test_files_round_trip_and_mismatch(tmp_path: Path) -> None:
    attention, masks = constructed()
    metric = RegisterAssociation(3, 3)
    metric.update(attention, masks)
    table = metric.compute()
    paths = save_association(table, CLASSES, tmp_path, source="anatomy head", num_samples=6)
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    record = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert record["top_registers"]["liver"][0] == 0 and record["num_samples"] == 6
    assert paths["csv"].read_text(encoding="utf-8").splitlines()[0] == "register,background,liver,spleen"
    torch.testing.assert_close(load_association(paths["json"], CLASSES, 3), table, atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="the model has"):
        load_association(paths["json"], [*CLASSES, "kidney"], 3)
    with pytest.raises(ConfigError, match="not found"):
        load_association(tmp_path / "missing.json", CLASSES, 3)
    assert not list(tmp_path.glob(".*partial*"))
    panel = save_attention_panels(np.zeros((16, 16)), masks[0].numpy(), {"mean": attention[0].numpy()}, CLASSES,
                                  tmp_path / "panel.png")
    assert panel.stat().st_size > 1000
