"""Metrics on label maps: segmentation-statistics distances (real vs generated) and self-consistency.

Each metric exists as a class (a ``torchmetrics.Metric`` with per-sample ``"cat"`` states) and
as a function on tensors (``frechet_distance``, ``wasserstein_1d``, ``per_class_dice``), so the
bootstrap can recompute a statistic on resampled per-sample values.
"""

from __future__ import annotations

import torch
from torch import Tensor

from anatldm.metrics.base import SampleMetric, area_fractions, check_masks

__all__ = [
    "AreaWasserstein",
    "FrechetSegmentationDistance",
    "SelfConsistencyDice",
    "frechet_distance",
    "gaussian_statistics",
    "per_class_dice",
    "wasserstein_1d",
]


def gaussian_statistics(samples: Tensor, ridge: float = 0.0) -> tuple[Tensor, Tensor]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` (plus ``ridge * I``) of ``(N, D)`` samples, float64."""
    samples = samples.double()
    if samples.ndim != 2 or samples.shape[0] < 2:
        raise ValueError(f"need at least 2 samples of shape (N, D), got shape {tuple(samples.shape)}")
    mean = samples.mean(dim=0)  # (D,)
    centred = samples - mean  # (N, D)
    covariance = centred.T @ centred / (samples.shape[0] - 1)  # (D, D)
    return mean, covariance + ridge * torch.eye(samples.shape[1], dtype=torch.float64, device=samples.device)


def _psd_sqrt(matrix: Tensor) -> Tensor:
    eigenvalues, eigenvectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return eigenvectors @ torch.diag(eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def frechet_distance(mean1: Tensor, cov1: Tensor, mean2: Tensor, cov2: Tensor) -> Tensor:
    """Fréchet (2-Wasserstein squared) distance between two Gaussians, computed in float64.

    ``d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))`` (Dowson and Landau, 1982), with
    ``Tr (S1 S2)^(1/2) = Tr (S1^(1/2) S2 S1^(1/2))^(1/2)``: a symmetric PSD square root taken by
    eigendecomposition, with negative round-off eigenvalues clamped to 0, so it never goes complex.
    """
    mean1, cov1, mean2, cov2 = (t.double() for t in (mean1, cov1, mean2, cov2))
    root1 = _psd_sqrt(cov1)
    middle = root1 @ cov2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mean1 - mean2).square().sum() + cov1.trace() + cov2.trace() - 2 * trace_sqrt
    return distance.clamp(min=0)


def wasserstein_1d(real: Tensor, fake: Tensor) -> Tensor:
    """Per-column 1-Wasserstein distance between empirical distributions ``(N, D)`` and ``(M, D)``.

    ``W1(P, Q) = integral |F_P(x) - F_Q(x)| dx`` over the merged sorted support (the formula of
    ``scipy.stats.wasserstein_distance``), vectorised over the ``D`` columns. Returns ``(D,)``.
    """
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"need (N, D) and (M, D) samples, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if real.shape[0] == 0 or fake.shape[0] == 0:
        raise ValueError("need at least one real and one generated sample")
    real_sorted = real.double().T.sort(dim=1).values.contiguous()  # (D, N)
    fake_sorted = fake.double().T.sort(dim=1).values.contiguous()  # (D, M)
    support = torch.cat([real_sorted, fake_sorted], dim=1).sort(dim=1).values  # (D, N + M)
    widths = support.diff(dim=1)  # (D, N + M - 1)
    points = support[:, :-1].contiguous()
    cdf_real = torch.searchsorted(real_sorted, points, right=True) / real_sorted.shape[1]
    cdf_fake = torch.searchsorted(fake_sorted, points, right=True) / fake_sorted.shape[1]
    return ((cdf_real - cdf_fake).abs() * widths).sum(dim=1)  # (D,)


def per_class_dice(first: Tensor, second: Tensor, num_classes: int) -> Tensor:
    """Dice of every foreground class between two batches of label maps ``(B, H, W)``.

    ``Dice_c = 2 |A_c ∩ B_c| / (|A_c| + |B_c|)``; NaN where the class is absent from both masks
    (the pair carries no information about that class). Returns ``(B, C - 1)`` float.
    """
    classes = torch.arange(1, num_classes, device=first.device).view(1, -1, 1, 1)  # (1, C - 1, 1, 1)
    a = first.unsqueeze(1) == classes  # (B, C - 1, H, W)
    b = second.unsqueeze(1) == classes
    intersection = (a & b).sum(dim=(2, 3)).float()  # (B, C - 1)
    total = (a.sum(dim=(2, 3)) + b.sum(dim=(2, 3))).float()  # (B, C - 1)
    dice = 2 * intersection / total.clamp(min=1)
    return torch.where(total > 0, dice, torch.full_like(dice, float("nan")))


class _RealFakeAreas(SampleMetric):
    """Keeps per-sample foreground area fractions of real and of generated label maps."""

    is_differentiable = False
    higher_is_better = False

    def __init__(self, num_classes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2 (background included), got {num_classes}")
        self.num_classes = num_classes
        self.add_state("real_areas", default=[], dist_reduce_fx="cat")  # (N, C - 1)
        self.add_state("fake_areas", default=[], dist_reduce_fx="cat")  # (M, C - 1)

    def update(self, masks: Tensor, real: bool) -> None:
        """Add label maps ``(B, H, W)``: real ones (``real=True``) or generated ones."""
        masks = check_masks(masks, self.num_classes)
        areas = area_fractions(masks.to(self.device), self.num_classes)  # (B, C - 1)
        (self.real_areas if real else self.fake_areas).append(areas)

    def areas(self) -> tuple[Tensor, Tensor]:
        """Area fractions ``(N, C - 1)`` of the real and ``(M, C - 1)`` of the generated masks."""
        real = self.gathered("real_areas").reshape(-1, self.num_classes - 1)
        fake = self.gathered("fake_areas").reshape(-1, self.num_classes - 1)
        return real, fake


class FrechetSegmentationDistance(_RealFakeAreas):
    """Fréchet Segmentation Distance (FSD) between real and generated label maps.

    Bau et al., "Seeing What a GAN Cannot Generate", ICCV 2019: a Gaussian is fitted to the
    per-image segmentation statistics of each set, here the area of every foreground class in
    percent of the slice (``100 * area fraction``, as in the authors' ``seeing/fsd.py``), and
    ``FSD = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))``. A ridge ``ridge * I`` is added
    to both covariances so a class of constant area does not make them singular. Lower is better;
    two draws of real masks give a value near 0.

    ``update(masks, real)`` takes label maps ``(B, H, W)``; ``compute()`` returns a float64 scalar.
    States (``"cat"``): ``real_areas`` ``(N, C - 1)``, ``fake_areas`` ``(M, C - 1)`` area fractions.

    Args:
        num_classes: classes including background (``C``).
        ridge: added to the covariance diagonals (in squared percent).
        **kwargs: ``torchmetrics.Metric`` options.
    """

    def __init__(self, num_classes: int, ridge: float = 1e-6, **kwargs) -> None:
        super().__init__(num_classes, **kwargs)
        if ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {ridge}")
        self.ridge = ridge

    @staticmethod
    def statistic(real_areas: Tensor, fake_areas: Tensor, ridge: float = 1e-6) -> Tensor:
        """FSD of area fractions ``(N, C - 1)`` and ``(M, C - 1)``, the bootstrap's statistic."""
        real_areas, fake_areas = torch.as_tensor(real_areas), torch.as_tensor(fake_areas)
        mean_r, cov_r = gaussian_statistics(100.0 * real_areas, ridge)
        mean_g, cov_g = gaussian_statistics(100.0 * fake_areas, ridge)
        return frechet_distance(mean_r, cov_r, mean_g, cov_g)

    def compute(self) -> Tensor:
        real, fake = self.areas()
        if real.shape[0] < 2 or fake.shape[0] < 2:
            raise RuntimeError(f"FSD needs at least 2 real and 2 generated masks, got {real.shape[0]} and "
                               f"{fake.shape[0]}")
        return self.statistic(real, fake, self.ridge)


class AreaWasserstein(_RealFakeAreas):
    """Per-class 1-Wasserstein distance between real and generated area-fraction distributions.

    For every foreground class ``c``, ``W1_c = integral |F_real,c(a) - F_gen,c(a)| da`` where
    ``F`` are the empirical CDFs of the per-slice area fraction of class ``c`` (0 where absent);
    see e.g. Villani, "Optimal Transport: Old and New" (2009). In area-fraction units (0 to 1);
    lower is better.

    ``update(masks, real)`` takes label maps ``(B, H, W)``; ``compute()`` returns
    ``(mean, per_class)``: the float64 scalar mean over classes and the ``(C - 1,)`` distances.

    Args:
        num_classes: classes including background (``C``).
        **kwargs: ``torchmetrics.Metric`` options.
    """

    @staticmethod
    def statistic(real_areas: Tensor, fake_areas: Tensor) -> Tensor:
        """Mean over classes of the per-class W1, the bootstrap's statistic."""
        return wasserstein_1d(torch.as_tensor(real_areas), torch.as_tensor(fake_areas)).mean()

    def compute(self) -> tuple[Tensor, Tensor]:
        real, fake = self.areas()
        if real.shape[0] == 0 or fake.shape[0] == 0:
            raise RuntimeError("AreaWasserstein needs real and generated masks; one of them is empty")
        per_class = wasserstein_1d(real, fake)  # (C - 1,)
        return per_class.mean(), per_class


class SelfConsistencyDice(SampleMetric):
    """Dice between the generator head's mask and the segmenter's mask of the same samples.

    Per sample, the per-class Dice ``2 |H_c ∩ S_c| / (|H_c| + |S_c|)`` (Dice, 1945) over the
    foreground classes present in at least one of the two masks; a class absent from both is
    excluded (it is neither agreement nor disagreement). The sample's value is the macro mean over
    the remaining classes; a sample whose two masks are both all background has no value and is
    left out. ``compute()`` is the mean over the samples that have a value (NaN if none). Higher
    is better: 1 means the head and the segmenter agree everywhere.

    ``update(head_masks, segmenter_masks)`` takes two label maps ``(B, H, W)`` of the same shape.
    States (``"cat"``): ``dice`` ``(N, C - 1)`` per sample and class, NaN where excluded.

    Args:
        num_classes: classes including background (``C``).
        **kwargs: ``torchmetrics.Metric`` options.
    """

    is_differentiable = False
    higher_is_better = True

    def __init__(self, num_classes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2 (background included), got {num_classes}")
        self.num_classes = num_classes
        self.add_state("dice", default=[], dist_reduce_fx="cat")

    def update(self, head_masks: Tensor, segmenter_masks: Tensor) -> None:
        head_masks = check_masks(head_masks, self.num_classes, "head_masks")
        segmenter_masks = check_masks(segmenter_masks, self.num_classes, "segmenter_masks")
        if head_masks.shape != segmenter_masks.shape:
            raise ValueError(f"head_masks {tuple(head_masks.shape)} and segmenter_masks "
                             f"{tuple(segmenter_masks.shape)} must have the same shape")
        self.dice.append(per_class_dice(head_masks.to(self.device), segmenter_masks.to(self.device),
                                        self.num_classes))  # (B, C - 1)

    def _per_class_values(self) -> Tensor:
        return self.gathered("dice").reshape(-1, self.num_classes - 1)  # (N, C - 1)

    def per_sample(self) -> Tensor:
        """``(N',)`` macro Dice of the samples that have a value (both-empty samples dropped)."""
        values = self._per_class_values().nanmean(dim=1)  # (N,)
        return values[~values.isnan()]

    def per_class(self) -> Tensor:
        """``(C - 1,)`` mean Dice of each class over the samples where it is present (NaN if never)."""
        return self._per_class_values().nanmean(dim=0)

    def compute(self) -> Tensor:
        values = self.per_sample()
        return values.mean() if values.numel() else torch.tensor(float("nan"), device=self.device)
