"""How two state dicts differ, in one line (for errors that name what does not fit)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

__all__ = ["state_dict_mismatch"]


def state_dict_mismatch(loaded: Mapping[str, Tensor], expected: Mapping[str, Tensor],
                        loaded_name: str = "in the file", expected_name: str = "from the config") -> str | None:
    """One line that says how ``loaded`` differs from ``expected`` (missing, unexpected and
    reshaped tensors, with the first of each), or ``None`` if names and shapes all match."""
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(set(loaded) - set(expected))
    reshaped = [name for name in sorted(set(loaded) & set(expected)) if loaded[name].shape != expected[name].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensor(s) missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if reshaped:
        name = reshaped[0]
        parts.append(f"{len(reshaped)} with another shape (e.g. {name}: {tuple(loaded[name].shape)} {loaded_name}, "
                     f"{tuple(expected[name].shape)} {expected_name})")
    return "; ".join(parts) or None
