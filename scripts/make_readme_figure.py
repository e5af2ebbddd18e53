"""The README's figure: a real (phantom) slice with its labels beside register-LDM samples with the
head's masks, cut from the grids already in docs/images (no model is run).

    python scripts/make_readme_figure.py   # writes docs/images/readme_figure.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"
TILE_WIDTH, TILE_HEIGHT, GRID_TOP, TITLE_HEIGHT = 256, 244, 50, 16  # the 4 x 4 grids of SampleWriter / previews
REAL = ("phantom_ct_abdomen.png", 2, 0)  # subject 0, slice 33: liver, spleen, bone
SAMPLES = [("claim_samples_register_seed0_head.png", row, column) for row, column in ((0, 2), (1, 3), (2, 3), (3, 2))]
HEADER = 28


def tile(name: str, row: int, column: int) -> Image.Image:
    """One panel of a 4 x 4 grid, without its title line."""
    grid = Image.open(IMAGES / name).convert("RGB")
    top = GRID_TOP + row * TILE_HEIGHT + TITLE_HEIGHT
    return grid.crop((column * TILE_WIDTH, top, (column + 1) * TILE_WIDTH, top + TILE_HEIGHT - TITLE_HEIGHT))


def main() -> None:
    panels = [tile(*REAL)] + [tile(*spec) for spec in SAMPLES]
    legend = Image.open(IMAGES / SAMPLES[0][0]).convert("RGB")
    legend = legend.crop((0, legend.height - 42, legend.width, legend.height))
    gap = 12
    width = len(panels) * TILE_WIDTH + gap
    figure = Image.new("RGB", (width, HEADER + panels[0].height + legend.height), "black")
    draw = ImageDraw.Draw(figure)
    draw.text((8, 8), "real slice (phantom) with its labels", fill="white")
    draw.text((TILE_WIDTH + gap + 8, 8), "register LDM samples (no mask given) with the masks its head predicts",
              fill="white")
    for index, panel in enumerate(panels):
        figure.paste(panel, (index * TILE_WIDTH + (gap if index else 0), HEADER))
    figure.paste(legend, ((width - legend.width) // 2, HEADER + panels[0].height))
    figure.save(IMAGES / "readme_figure.png", optimize=True)


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
