"""``anatldm inspect``: prepare a configured data set, count slices per class, write a preview.

Usage::

    anatldm inspect --config configs/vae.yaml [--out preview.png] [--num 16]

Only the config's ``data:`` section is read, so any stage's config works. The report names the
cache folder and its ``content hash`` (the first 16 hex digits of a SHA-256 over the cached
arrays; the same on every machine that built the same data), then the per-split table.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import yaml
from jsonargparse import ArgumentParser

from anatldm.datamodules import AnatomyDataModule
from anatldm.errors import ConfigError, check_output_folder
from anatldm.visualize import save_overlay_grid

__all__ = ["dataset_summary", "inspect_main"]

logger = logging.getLogger(__name__)


def dataset_summary(datamodule: AnatomyDataModule) -> str:
    """A table: slices and subjects per split, and slices containing each class."""
    names = datamodule.class_names
    header = ["split", "subjects", "slices", *names[1:]]
    rows = []
    for split, dataset in datamodule.datasets.items():
        masks = datamodule.cache.masks[np.sort(dataset.indices)]  # (n, H, W)
        present = [int((masks == c).any(axis=(1, 2)).sum()) for c in range(1, len(names))]
        subjects = len(np.unique(datamodule.cache.subjects[dataset.indices]))
        rows.append([split, str(subjects), str(len(dataset)), *map(str, present)])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in [header, *rows]]
    return "\n".join(lines)


def _parse(args: list[str]):
    parser = ArgumentParser(prog="anatldm inspect", description=__doc__.split("\n")[0], exit_on_error=False)
    parser.add_argument("--config", required=True, help="a stage config with a data: section")
    parser.add_argument("--out", default="data_preview.png", help="preview PNG path")
    parser.add_argument("--num", type=int, default=16, help="slices in the preview")
    return parser.parse_args(args)


def inspect_main(args: list[str]) -> str:
    """Run ``anatldm inspect`` and return its report (the CLI prints it)."""
    options = _parse(args)
    config_path = Path(options.config)
    if not config_path.is_file():
        raise ConfigError(f"--config {config_path}: file not found")
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{config_path}: not valid YAML ({getattr(err, 'problem', None) or err}{where})") from None
    if not isinstance(config, dict) or "data" not in config:
        raise ConfigError(f"{config_path}: no 'data' section")
    check_output_folder(Path(options.out).absolute().parent, "--out")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(AnatomyDataModule, "data", required=True)
    parsed = parser.parse_object({"data": config["data"]})
    datamodule = parser.instantiate_classes(parsed).data
    datamodule.prepare_data()
    datamodule.setup("fit")
    indices = np.linspace(0, len(datamodule.cache) - 1, num=min(options.num, len(datamodule.cache))).astype(int)
    cache = datamodule.cache
    titles = [f"{cache.subject_names[cache.subjects[i]]} #{cache.positions[i]}" for i in indices]
    path = save_overlay_grid(cache.images[indices], cache.masks[indices], datamodule.class_names,
                             options.out, titles=titles)
    return (f"cache: {cache.path}\ncontent hash: {datamodule.content_hash}\n{dataset_summary(datamodule)}\n"
            f"preview: {path}")
