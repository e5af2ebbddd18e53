"""Which register carries which organ: correlation of attention maps with class masks."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torchmetrics import Metric  # noqa: E402

from anatldm.atomic import write_text_atomic  # noqa: E402
from anatldm.interpret.edits import (  # noqa: E402  (re-exported: the association is read here)
    NoRegisterForClassError,
    load_association,
    registers_for_class,
)
from anatldm.metrics.base import check_masks  # noqa: E402
from anatldm.visualize import save_figure  # noqa: E402

__all__ = ["NoRegisterForClassError", "RegisterAssociation", "load_association", "registers_for_class",
           "save_association"]


class RegisterAssociation(Metric):
    """Pearson correlation between each register's attention map and each class's mask.

    Over all pixels of all samples seen (pooled), for register ``k`` and class ``c``::

        r[k, c] = corr( A_k(x),  1[mask(x) = c] )

    where ``A_k(x)`` is the share of register ``k`` in the cross-attention at pixel ``x`` (the
    maps sum to one over registers), resized to the mask's size. ``r[k, c] > 0``: register ``k``
    is attended to more inside class ``c`` than outside it. Pooling over samples keeps the
    statistic defined for classes absent from some samples. States are sums (float64) reduced
    by summation across DDP ranks, so the table does not depend on the number of processes.

    Args:
        num_registers: ``K``.
        num_classes: ``C`` (background included).
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, num_registers: int, num_classes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_registers < 1 or num_classes < 2:
            raise ValueError(f"need num_registers >= 1 and num_classes >= 2, got {num_registers}, {num_classes}")
        self.num_registers, self.num_classes = num_registers, num_classes
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64)  # noqa: E731
        self.add_state("num_samples", zeros(()), dist_reduce_fx="sum")
        self.add_state("count", zeros(()), dist_reduce_fx="sum")
        self.add_state("sum_a", zeros(num_registers), dist_reduce_fx="sum")
        self.add_state("sum_aa", zeros(num_registers), dist_reduce_fx="sum")
        self.add_state("sum_m", zeros(num_classes), dist_reduce_fx="sum")
        self.add_state("sum_am", zeros(num_registers, num_classes), dist_reduce_fx="sum")

    def update(self, attention: Tensor, masks: Tensor) -> None:
        """Add attention maps ``(B, K, *S)`` and label maps ``(B, *S)`` of the same samples."""
        masks = check_masks(masks, self.num_classes) if masks.ndim == 3 else masks.long()
        if attention.shape[0] != masks.shape[0] or attention.shape[2:] != masks.shape[1:] \
                or attention.shape[1] != self.num_registers:
            raise ValueError(f"attention {tuple(attention.shape)} does not match masks {tuple(masks.shape)} "
                             f"and {self.num_registers} registers")
        a = attention.double().flatten(2).transpose(1, 2).reshape(-1, self.num_registers)  # (P, K)
        labels = masks.reshape(-1).to(a.device)  # (P,)
        self.num_samples += masks.shape[0]
        self.count += a.shape[0]
        self.sum_a += a.sum(0)
        self.sum_aa += (a * a).sum(0)
        self.sum_m += torch.bincount(labels, minlength=self.num_classes).double()
        self.sum_am += torch.zeros(self.num_classes, self.num_registers, dtype=a.dtype,
                                   device=a.device).index_add_(0, labels, a).T  # per-class sums, no one-hot

    def compute(self) -> Tensor:
        """The ``(K, C)`` correlation table (0 where a register or class does not vary)."""
        n = self.count
        if n == 0:
            raise RuntimeError("RegisterAssociation.compute() needs at least one update")
        covariance = self.sum_am / n - torch.outer(self.sum_a / n, self.sum_m / n)  # (K, C)
        var_a = (self.sum_aa / n - (self.sum_a / n) ** 2).clamp_min(0)  # (K,)
        var_m = (self.sum_m / n - (self.sum_m / n) ** 2).clamp_min(0)  # (C,)
        denominator = torch.outer(var_a, var_m).sqrt()
        return torch.where(denominator > 1e-12, covariance / denominator.clamp_min(1e-300),
                           torch.zeros_like(covariance)).float()


def save_association(table: Tensor | np.ndarray, class_names: Sequence[str], output_dir: str | Path,
                     source: str, num_samples: int, stem: str = "association") -> dict[str, Path]:
    """Write the ``(K, C)`` table as ``<stem>.json``, ``<stem>.csv`` and a heat map ``<stem>.png``.

    ``source`` says whose masks were used (e.g. ``"anatomy head"`` or ``"segmenter"``). Every
    file is written under a temporary name and renamed.
    """
    table = np.asarray(table, dtype=np.float64)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(class_names)
    top = {name: [int(k) for k in np.argsort(-table[:, c], kind="stable")[:3]] for c, name in enumerate(names)}
    record = {"classes": names, "num_registers": int(table.shape[0]), "mask_source": source,
              "num_samples": int(num_samples), "statistic": "Pearson r of attention share vs class indicator, "
              "pooled over pixels and samples", "correlation": np.round(table, 5).tolist(),
              "top_registers": top}
    csv = "register," + ",".join(names) + "\n" + "".join(
        f"{k}," + ",".join(f"{v:.5f}" for v in row) + "\n" for k, row in enumerate(table))
    paths = {"json": out / f"{stem}.json", "csv": out / f"{stem}.csv", "png": out / f"{stem}.png"}
    write_text_atomic(paths["json"], json.dumps(record, indent=1))
    write_text_atomic(paths["csv"], csv)
    _heat_map(table, names, paths["png"], f"register-class correlation ({source}, {num_samples} samples)")
    return paths


def _heat_map(table: np.ndarray, names: list[str], path: Path, title: str) -> None:
    limit = max(float(np.abs(table).max()), 1e-6)
    fig, ax = plt.subplots(figsize=(1.0 * len(names) + 1.8, 0.36 * table.shape[0] + 1.4))
    image = ax.imshow(table, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(table.shape[0]), [f"r{k}" for k in range(table.shape[0])])
    for k in range(table.shape[0]):
        for c in range(len(names)):
            ax.text(c, k, f"{table[k, c]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if abs(table[k, c]) > 0.6 * limit else "black")
    fig.colorbar(image, ax=ax, fraction=0.05)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=90, facecolor="white")
