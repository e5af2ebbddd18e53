"""Data pipeline at the quickstart size: slice-cache build time and loader throughput.

    python benchmarks/bench_data.py

Writes the quickstart phantoms (24 subjects of 64x64x48) into a temporary folder, times the
first slice-cache build (decoding, validating and normalising every volume) and a rebuild that
finds the cache, then measures how many augmented training samples per second the training
loader delivers with 0 and 2 workers. The target (docs/method.md, 'Cost targets') is >= 5x what a training step consumes:
compare with ``ldm/train_step_register`` of ``bench_ldm.py`` (16 samples per step).
"""

from __future__ import annotations

import argparse
import tempfile
import time

from anatldm.datamodules import AnatomyDataModule

BATCHES = 40


def _throughput(datamodule: AnatomyDataModule) -> float:
    loader = datamodule.train_dataloader()
    iterator = iter(loader)
    next(iterator)  # workers start
    samples, start = 0, time.perf_counter()
    for _ in range(BATCHES):
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch = next(iterator)
        samples += batch["image"].shape[0]
    return samples / (time.perf_counter() - start)


def run() -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = {"num_subjects": 24, "num_slices": 48, "image_size": 64, "batch_size": 16, "cache_dir": tmp}
        datamodule = AnatomyDataModule(num_workers=0, **settings)
        start = time.perf_counter()
        datamodule._phantom_root()
        rows.append({"benchmark": "data/phantoms_written", "value": time.perf_counter() - start, "unit": "s",
                     "note": "24 ct_abdomen subjects 64x64x48 as NIfTI"})
        start = time.perf_counter()
        datamodule.prepare_data()
        rows.append({"benchmark": "data/cache_build", "value": time.perf_counter() - start, "unit": "s",
                     "note": "decode + validate + normalise + slice 24 volumes"})
        start = time.perf_counter()
        datamodule.prepare_data()
        rows.append({"benchmark": "data/cache_reuse", "value": time.perf_counter() - start, "unit": "s",
                     "note": "settings unchanged: the cache is found, nothing decoded"})
        for workers in (0, 2):
            datamodule = AnatomyDataModule(num_workers=workers, **settings)
            datamodule.setup("fit")
            rows.append({"benchmark": f"data/loader_{workers}_workers", "value": _throughput(datamodule),
                         "unit": "samples/s", "note": "augmented training samples (torchio affine, elastic, noise)"})
            rows.append({"benchmark": f"data/loader_{workers}_workers_no_aug",
                         "value": _throughput(_without_augmentation(settings, workers)),
                         "unit": "samples/s", "note": "memory-mapped cache only"})
    return rows


def _without_augmentation(settings: dict, workers: int) -> AnatomyDataModule:
    datamodule = AnatomyDataModule(num_workers=workers, augment=False, **settings)
    datamodule.setup("fit")
    return datamodule


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    for row in run():
        print(f"{row['benchmark']:<34} {row['value']:>10.4g} {row['unit']:<10} {row['note']}")
