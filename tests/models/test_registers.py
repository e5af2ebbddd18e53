from __future__ import annotations

import pytest
import torch

from anatldm.models.registers import (
    AnatomicalRegisterBank,
    RegisterEdit,
    ablate_registers,
    apply_register_edits,
    interpolate_registers,
    replace_registers,
    scale_registers,
)


@pytest.mark.parametrize("num_registers", [1, 4, 16])
def test_bank_expands_to_batch(num_registers: int) -> None:
    bank = AnatomicalRegisterBank(num_registers, 8)
    assert bank(3).shape == (3, num_registers, 8)
    assert bank.num_registers == num_registers and bank.dim == 8


def test_bank_errors() -> None:
    with pytest.raises(ValueError, match="num_registers must be at least 1"):
        AnatomicalRegisterBank(0, 8)
    with pytest.raises(ValueError, match="edited registers have shape"):
        AnatomicalRegisterBank(4, 8)(2, torch.zeros(3, 8))


def test_edits_touch_only_the_chosen_registers() -> None:
    tokens = torch.randn(4, 8)
    other = torch.randn(4, 8)
    scaled = scale_registers(tokens, 2.0, [1])
    assert torch.equal(scaled[1], tokens[1] * 2) and torch.equal(scaled[[0, 2, 3]], tokens[[0, 2, 3]])
    assert torch.equal(ablate_registers(tokens, [0, 3])[[0, 3]], torch.zeros(2, 8))
    assert torch.equal(replace_registers(tokens, other, [2])[2], other[2])
    assert torch.allclose(interpolate_registers(tokens, other, 0.5)[0], (tokens[0] + other[0]) / 2)
    with pytest.raises(ValueError, match="register index 9 out of range"):
        scale_registers(tokens, 2.0, [9])


def test_identity_edits_are_bit_identical() -> None:
    tokens = torch.randn(4, 8)
    other = torch.randn(4, 8)
    assert torch.equal(scale_registers(tokens, 1.0), tokens)
    assert torch.equal(interpolate_registers(tokens, other, 0.0), tokens)
    edits = [RegisterEdit("scale", factor=1.0), RegisterEdit("interpolate", alpha=0.0, source="other")]
    assert torch.equal(apply_register_edits(tokens, edits, lambda source: other), tokens)


def test_edit_needs_source() -> None:
    with pytest.raises(ValueError, match="'replace' edit needs a 'source'"):
        apply_register_edits(torch.randn(4, 8), [RegisterEdit("replace")], lambda s: torch.randn(4, 8))
