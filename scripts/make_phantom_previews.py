"""Write ``phantom_<family>.png`` preview grids of the procedural phantoms (``make previews``).

Each grid shows 16 axial slices (4 subjects x 4 levels from caudal to cranial) in the
radiological convention, CT with a W400/L40 window, MRI with its 0.5-99.5 percentile range,
and the label map as coloured outlines with a legend.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from anatldm.data.orientation import ras_to_display
from anatldm.data.phantoms import PHANTOM_CLASSES, PhantomSubject, generate_phantom
from anatldm.visualize import save_overlay_grid

logger = logging.getLogger("make_phantom_previews")

SUBJECTS, LEVELS = 4, 4
LEVEL_FRACTIONS = {  # where the interesting anatomy is, caudal to cranial
    "ct_abdomen": (0.15, 0.42, 0.7, 0.92),
    "breast_mri": (0.2, 0.4, 0.55, 0.8),
}


def _window(subject: PhantomSubject, stack: np.ndarray) -> np.ndarray:
    """Display range -1..1: W400/L40 for CT, 0.5-99.5 percentiles of the volume for MRI."""
    if subject.family == "ct_abdomen":
        low, high = 40 - 200, 40 + 200
    else:
        low, high = np.percentile(subject.image, [0.5, 99.5])
    return np.clip((stack - low) / (high - low), 0, 1) * 2 - 1


def make_preview(family: str, size: int, seed: int, out: Path) -> Path:
    """Render the grid of one family to ``out/phantom_<family>.png``."""
    images, labels, titles = [], [], []
    for column in range(SUBJECTS):
        subject = generate_phantom(family, seed + column, (size, size), 48)
        image = _window(subject, ras_to_display(subject.image))  # (Z, H, W) display slices
        label = ras_to_display(subject.label)
        for fraction in LEVEL_FRACTIONS[family]:
            level = min(int(fraction * image.shape[0]), image.shape[0] - 1)
            images.append(image[level])
            labels.append(label[level])
            titles.append(f"subject {seed + column}, slice {level}")
    order = [column * LEVELS + row for row in range(LEVELS) for column in range(SUBJECTS)]  # rows = levels
    return save_overlay_grid(
        np.stack(images)[order], np.stack(labels)[order], PHANTOM_CLASSES[family], out / f"phantom_{family}.png",
        titles=[titles[i] for i in order], columns=SUBJECTS,
        title=f"{family} phantoms ({size}x{size}x48), radiological view: patient's right on the left")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"), help="output folder")
    parser.add_argument("--size", type=int, default=128, help="in-plane matrix size")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first subject")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    options.out.mkdir(parents=True, exist_ok=True)
    for family in PHANTOM_CLASSES:
        logger.info("wrote %s", make_preview(family, options.size, options.seed, options.out))


if __name__ == "__main__":
    main()
