"""What an LDM's training logs say about the balance of its two objectives (no Lightning).

``AnatomicalLDMTask`` logs, every ``training.grad_norm_every_n_steps`` steps, the gradient norm
of each weighted loss term over the denoiser's parameters (``train/grad_norm_anatomy_loss``,
``train/grad_norm_diffusion_loss``) and, per epoch, the share of steps that ``gradient_clip_val``
clipped (``train/clipped``). :func:`gradient_balance` reads them back from the run's TensorBoard
event files (found beside the checkpoint: ``<run>/checkpoints/x.ckpt`` -> ``<run>/**/events.*``)
and summarises the ratio

    r(step) = ||grad lambda(step) L_anat|| / ||grad L_diffusion||

at fractions of training, so that every evaluation report shows whether the anatomy term
dominated the diffusion objective (issue 22: 24x at the first steps of the quickstart model).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

__all__ = ["FRACTIONS", "gradient_balance"]

logger = logging.getLogger(__name__)

#: fractions of training at which the ratio is reported (the nearest logged step)
FRACTIONS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
_ANATOMY, _DIFFUSION, _CLIPPED = "train/grad_norm_anatomy_loss", "train/grad_norm_diffusion_loss", "train/clipped"


def _event_folder(checkpoint: Path) -> Path | None:
    """The newest folder of TensorBoard event files under the checkpoint's run folder."""
    run = checkpoint.resolve().parent.parent
    files = sorted(run.glob("**/events.out.tfevents.*"), key=lambda path: path.stat().st_mtime)
    return files[-1].parent if files else None


def _scalars(folder: Path, tags: tuple[str, ...]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # it logs every event file it reads at INFO
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every value
    events.Reload()
    available = set(events.Tags().get("scalars", []))
    out = {}
    for tag in tags:
        if tag in available:
            values = events.Scalars(tag)
            out[tag] = (np.array([v.step for v in values]), np.array([v.value for v in values], dtype=np.float64))
    return out


def gradient_balance(checkpoint: str | Path) -> dict | None:
    """The anatomy / diffusion gradient-norm ratio over the training of ``checkpoint``'s run.

    Returns ``None`` when the run has no anatomy term or its logs are not beside the checkpoint
    (e.g. a pipeline folder, or logs deleted); else ``{"ratio_at": {"0%": r, "10%": r, ...},
    "max": r, "median": r, "steps_logged": n, "clipped_share_at": {...} | None, "source": folder}``.
    """
    path = Path(checkpoint)
    if not path.is_file():
        return None
    folder = _event_folder(path)
    if folder is None:
        return None
    try:
        scalars = _scalars(folder, (_ANATOMY, _DIFFUSION, _CLIPPED))
    except Exception as err:  # a corrupt or partial event file must not fail the evaluation
        logger.warning("%s: training logs not readable (%s); no gradient balance in the report", folder, err)
        return None
    if _ANATOMY not in scalars or _DIFFUSION not in scalars:
        return None
    (steps, anatomy), (diffusion_steps, diffusion) = scalars[_ANATOMY], scalars[_DIFFUSION]
    common, a_index, d_index = np.intersect1d(steps, diffusion_steps, return_indices=True)
    if len(common) == 0:
        return None
    ratio = anatomy[a_index] / np.maximum(diffusion[d_index], 1e-12)

    def at(series_steps: np.ndarray, values: np.ndarray) -> dict[str, float]:
        last = series_steps.max()
        return {f"{fraction:.0%}": float(values[np.abs(series_steps - fraction * last).argmin()])
                for fraction in FRACTIONS}

    clipped = scalars.get(_CLIPPED)
    return {"ratio_at": at(common, ratio), "max": float(ratio.max()), "median": float(np.median(ratio)),
            "steps_logged": int(len(common)), "last_step": int(common.max()),
            "clipped_share_at": at(*clipped) if clipped is not None and len(clipped[0]) else None,
            "source": str(folder)}
