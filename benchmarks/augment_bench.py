"""Does synthetic data help a segmenter? The augmentation benchmark (``make augment-bench``).

One segmenter recipe (:class:`anatldm.trainers.SegmenterTask`'s UNet, Dice + CE loss, AdamW and
cosine schedule, the same number of steps for every arm) is trained on

- ``real``: the real training slices of the LDMs' training subjects,
- ``synthetic (head)``: pairs of the register LDM with the masks of its own anatomy head,
- ``synthetic (judge)``: samples of the baseline LDM labelled by the judge segmenter (pseudo-labels),
- ``real + synthetic (head)`` and ``real + synthetic (judge)``: the union,

in the full regime (all real training subjects) and the low-data regime (``--low-fraction`` of
them, 25 % by default), with 3 training seeds each. Every model is scored on the real test
slices (subjects no model saw): Dice per class over all test slices, the mean over seeds, and a
95 % bootstrap interval over test slices (every replicate resamples the same slices for all
seeds of an arm; paired with ``real`` for the changes). The generators were trained on all real
training subjects, so in the low-data regime the synthetic data carry information from subjects
the segmenter's real data lack: that is the setting "a generator trained elsewhere", not a
closed low-data world.

    python benchmarks/augment_bench.py            # quickstart models in runs/quickstart
    python benchmarks/augment_bench.py --reduced  # fewer steps and samples (CPU smoke size)

Writes ``docs/results/augmentation.json`` and ``docs/images/augmentation.png`` (``--out-*``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anatldm.datamodules import AnatomyDataModule  # noqa: E402
from anatldm.trainers import AnatomicalLDMTask, SegmenterTask  # noqa: E402
from anatldm.visualize import save_figure  # noqa: E402

logger = logging.getLogger("augment_bench")

ARMS = ("real", "synthetic_head", "synthetic_judge", "real+synthetic_head", "real+synthetic_judge")
LABELS = {"real": "real only", "synthetic_head": "synthetic only (register LDM, head masks)",
          "synthetic_judge": "synthetic only (baseline LDM, judge pseudo-labels)",
          "real+synthetic_head": "real + synthetic (head)", "real+synthetic_judge": "real + synthetic (judge)"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    runs = "runs/quickstart"
    parser.add_argument("--ldm", default=f"{runs}/ldm/checkpoints/last.ckpt", help="register LDM (with a head)")
    parser.add_argument("--baseline", default=f"{runs}/ldm_baseline/checkpoints/last.ckpt", help="baseline LDM")
    parser.add_argument("--judge", default=f"{runs}/segmenter/checkpoints/last.ckpt", help="judge segmenter")
    parser.add_argument("--autoencoder", default=None, help="autoencoder bundle (default: the LDMs' own)")
    parser.add_argument("--cache-dir", default=".cache/anatldm", help="phantom and slice cache of the real data")
    parser.add_argument("--num-synthetic", type=int, default=400, help="synthetic pairs per generator")
    parser.add_argument("--sampler", default="ddim")
    parser.add_argument("--num-inference-steps", type=int, default=50)
    parser.add_argument("--steps", type=int, default=400, help="training steps of every segmenter")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--low-fraction", type=float, default=0.25, help="real training subjects kept (low-data)")
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--num-res-units", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--num-bootstrap", type=int, default=1000)
    parser.add_argument("--reduced", action="store_true", help="CPU smoke size: 120 synthetic pairs, 150 steps")
    parser.add_argument("--out-json", default=str(ROOT / "docs/results/augmentation.json"))
    parser.add_argument("--out-png", default=str(ROOT / "docs/images/augmentation.png"))
    args = parser.parse_args(argv)
    if args.reduced:
        args.num_synthetic, args.steps = min(args.num_synthetic, 120), min(args.steps, 150)
    return args


# -- data ---------------------------------------------------------------------------------------
def real_data(ldm_checkpoint: str, cache_dir: str) -> AnatomyDataModule:
    """The data the LDM was trained on (its stored data module settings), without augmentation."""
    stored = torch.load(ldm_checkpoint, map_location="cpu", weights_only=True, mmap=True)["datamodule_hyper_parameters"]
    settings = {k: v for k, v in stored.items() if not k.startswith("_")}
    data = AnatomyDataModule(**{**settings, "cache_dir": cache_dir, "augment": False, "num_workers": 0})
    data.setup()
    return data


def split_arrays(data: AnatomyDataModule, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    indices = data.datasets[split].indices
    cache = data.cache
    return (np.asarray(cache.images[indices], dtype=np.float32), np.asarray(cache.masks[indices], dtype=np.int64),
            np.asarray(cache.subjects[indices]))


def low_data_subset(subjects: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Slices of ``fraction`` of the training subjects (at least one), chosen once with ``seed``."""
    unique = np.unique(subjects)
    keep = np.random.default_rng(seed).permutation(unique)[: max(1, int(round(fraction * len(unique))))]
    return np.isin(subjects, keep)


@torch.no_grad()
def synthesize(checkpoint: str, count: int, sampler: str, steps: int, autoencoder: str | None,
               judge: SegmenterTask | None, seed: int, batch_size: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """``count`` samples (seeds ``seed ..``): masks from the head, or from ``judge`` when given."""
    overrides = {"sampling": {"sampler": sampler, "num_inference_steps": steps}}
    if autoencoder:
        overrides["autoencoder"] = autoencoder
    model = AnatomicalLDMTask.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True, **overrides).eval()
    images, masks = [], []
    for out in model.pipeline.generate_batches(range(seed, seed + count), batch_size):
        image = out.images.float().clamp(-1, 1)  # (B, 1, H, W)
        mask = judge(image).argmax(1) if judge is not None else out.masks
        if mask is None:
            raise SystemExit(f"{checkpoint}: no anatomy head; its samples need the judge's pseudo-labels")
        images.append(image[:, 0].numpy())
        masks.append(mask.long().numpy())
    return np.concatenate(images), np.concatenate(masks)


# -- the segmenter recipe -----------------------------------------------------------------------
def train_segmenter(images: np.ndarray, masks: np.ndarray, num_classes: int, args, seed: int) -> SegmenterTask:
    torch.manual_seed(seed)
    task = SegmenterTask(num_classes=num_classes, channels=tuple(args.channels), strides=(2,) * (len(args.channels) - 1),
                         num_res_units=args.num_res_units, lr=args.lr)
    optimizer = torch.optim.AdamW(task.network.parameters(), lr=args.lr, weight_decay=task.hparams.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps)
    generator = np.random.default_rng(seed)
    x, y = torch.from_numpy(images)[:, None], torch.from_numpy(masks)
    task.train()
    for _ in range(args.steps):
        batch = torch.from_numpy(generator.integers(0, len(x), args.batch_size))
        loss = task.loss(task(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return task.eval()


@torch.no_grad()
def overlap_counts(task: SegmenterTask, images: np.ndarray, masks: np.ndarray, num_classes: int) -> np.ndarray:
    """Per test slice and foreground class: ``(N, C - 1, 2)`` intersection and size sum."""
    predicted = torch.cat([task(torch.from_numpy(images[i:i + 64])[:, None]).argmax(1)
                           for i in range(0, len(images), 64)]).numpy()
    counts = np.zeros((len(images), num_classes - 1, 2), dtype=np.int64)
    for c in range(1, num_classes):
        p, t = predicted == c, masks == c
        counts[:, c - 1, 0] = (p & t).sum(axis=(1, 2))
        counts[:, c - 1, 1] = p.sum(axis=(1, 2)) + t.sum(axis=(1, 2))
    return counts


def pooled_dice(counts: np.ndarray) -> np.ndarray:
    """Dice per class pooled over slices: ``(..., N, C, 2)`` -> ``(..., C)``."""
    total = counts.sum(axis=-3)
    return 2 * total[..., 0] / np.maximum(total[..., 1], 1)


def summarise(runs: dict[str, np.ndarray], class_names: list[str], num_bootstrap: int) -> dict:
    """``runs[arm]``: ``(seeds, N, C, 2)``. Mean-over-seeds Dice with bootstrap intervals over test slices."""
    n = next(iter(runs.values())).shape[1]
    replicates = np.random.default_rng(0).integers(0, n, (num_bootstrap, n))
    out = {}
    for arm, counts in runs.items():
        per_seed = pooled_dice(counts)  # (S, C)
        boot = np.stack([pooled_dice(counts[:, r]).mean(0) for r in replicates])  # (R, C)
        mean = per_seed.mean(0)
        low, high = np.percentile(boot, [2.5, 97.5], axis=0)
        boot_mean = boot.mean(1)
        out[arm] = {"dice": {name: {"value": float(mean[c]), "low": float(low[c]), "high": float(high[c])}
                             for c, name in enumerate(class_names[1:])},
                    "mean_dice": {"value": float(mean.mean()), "low": float(np.percentile(boot_mean, 2.5)),
                                  "high": float(np.percentile(boot_mean, 97.5))},
                    "mean_dice_per_seed": [float(v) for v in per_seed.mean(1)], "_boot": boot_mean}
    return out


def paired_changes(summary: dict, runs: dict, reference: str, num_bootstrap: int) -> dict:
    n = runs[reference].shape[1]
    replicates = np.random.default_rng(0).integers(0, n, (num_bootstrap, n))
    ref = np.stack([pooled_dice(runs[reference][:, r]).mean() for r in replicates])
    changes = {}
    for arm in runs:
        if arm == reference:
            continue
        boot = np.stack([pooled_dice(runs[arm][:, r]).mean() for r in replicates]) - ref
        changes[arm] = {"value": summary[arm]["mean_dice"]["value"] - summary[reference]["mean_dice"]["value"],
                        "low": float(np.percentile(boot, 2.5)), "high": float(np.percentile(boot, 97.5))}
    return changes


def plot(results: dict, low_fraction: float, path: str) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    regimes = {"low": low_fraction, "full": 1.0}
    styles = {"real": ("real only", "#444444", "o"), "real+synthetic_head": ("+ synthetic (register LDM, head masks)", "#d62728", "s"),
              "real+synthetic_judge": ("+ synthetic (baseline LDM, judge labels)", "#1f77b4", "^")}
    for arm, (label, colour, marker) in styles.items():
        xs, ys, lo, hi = [], [], [], []
        if arm != "real":  # at real fraction 0 the union is the synthetic data alone
            only = results["synthetic"][arm.split("+")[1]]["mean_dice"]
            xs.append(0.0), ys.append(only["value"]), lo.append(only["low"]), hi.append(only["high"])
        for regime, fraction in regimes.items():
            entry = results[regime][arm]["mean_dice"]
            xs.append(fraction), ys.append(entry["value"]), lo.append(entry["low"]), hi.append(entry["high"])
        ys, lo, hi = map(np.asarray, (ys, lo, hi))
        ax.errorbar(xs, ys, yerr=[ys - lo, hi - ys], label=label, color=colour, marker=marker, capsize=3)
    ax.set_xlabel("fraction of the real training subjects")
    ax.set_ylabel("mean Dice on real test slices (5 organs)")
    ax.set_xticks([0.0, low_fraction, 1.0])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Segmenter trained with and without synthetic pairs (3 seeds, 95 % CI)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110, facecolor="white")


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    start = time.perf_counter()
    times = {}
    data = real_data(args.ldm, args.cache_dir)
    class_names = list(data.class_names)
    num_classes = len(class_names)
    train_images, train_masks, train_subjects = split_arrays(data, "train")
    test_images, test_masks, test_subjects = split_arrays(data, "test")
    low = low_data_subset(train_subjects, args.low_fraction)
    times["data_s"] = time.perf_counter() - start

    judge = SegmenterTask.load_from_checkpoint(args.judge, map_location="cpu", weights_only=True).eval()
    t = time.perf_counter()
    synthetic = {"head": synthesize(args.ldm, args.num_synthetic, args.sampler, args.num_inference_steps,
                                    args.autoencoder, None, seed=0)}
    times["synthesize_register_s"] = time.perf_counter() - t
    t = time.perf_counter()
    synthetic["judge"] = synthesize(args.baseline, args.num_synthetic, args.sampler, args.num_inference_steps,
                                    args.autoencoder, judge, seed=0)
    times["synthesize_baseline_s"] = time.perf_counter() - t
    logger.info("real: %d training slices (%d subjects; low-data %d slices of %d subjects), %d test slices; "
                "synthetic: %d + %d", len(train_images), len(np.unique(train_subjects)), low.sum(),
                len(np.unique(train_subjects[low])), len(test_images), len(synthetic["head"][0]),
                len(synthetic["judge"][0]))

    def training_set(regime: str, arm: str) -> tuple[np.ndarray, np.ndarray]:
        parts = []
        if arm.startswith("real"):
            keep = low if regime == "low" else slice(None)
            parts.append((train_images[keep], train_masks[keep]))
        if "synthetic" in arm:
            parts.append(synthetic[arm.rsplit("_", 1)[1]])
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    plan = [("full", arm) for arm in ("real", "real+synthetic_head", "real+synthetic_judge")] + \
           [("low", arm) for arm in ("real", "real+synthetic_head", "real+synthetic_judge")] + \
           [("synthetic", "synthetic_head"), ("synthetic", "synthetic_judge")]
    counts: dict[str, dict[str, np.ndarray]] = {"full": {}, "low": {}, "synthetic": {}}
    sizes = {}
    t = time.perf_counter()
    for regime, arm in plan:
        images, masks = training_set(regime, arm)
        sizes[f"{regime}/{arm}"] = len(images)
        per_seed = []
        for seed in args.seeds:
            task = train_segmenter(images, masks, num_classes, args, seed)
            per_seed.append(overlap_counts(task, test_images, test_masks, num_classes))
        counts[regime][arm] = np.stack(per_seed)
        logger.info("%s / %s (%d slices): mean Dice per seed %s", regime, arm, len(images),
                    np.round(pooled_dice(counts[regime][arm]).mean(1), 3).tolist())
    times["segmenters_s"] = time.perf_counter() - t

    results = {regime: summarise(runs, class_names, args.num_bootstrap) for regime, runs in counts.items()}
    changes = {regime: paired_changes(results[regime], counts[regime], "real", args.num_bootstrap)
               for regime in ("full", "low")}
    for regime in results.values():
        for entry in regime.values():
            entry.pop("_boot")
    synthetic_only = results.pop("synthetic")
    results_out = {"full": results["full"], "low": results["low"], "synthetic": {
        "head": synthetic_only["synthetic_head"], "judge": synthetic_only["synthetic_judge"]}}
    times["total_s"] = time.perf_counter() - start
    report = {
        "benchmark": "augmentation: segmenter trained on real, synthetic, real + synthetic slices; Dice on real test slices",
        "reduced": bool(args.reduced),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out_json", "out_png")},
        "segmenter_recipe": {"network": "MONAI UNet (SegmenterTask)", "channels": args.channels,
                             "num_res_units": args.num_res_units, "loss": "Dice + CE (batch Dice)", "optimizer": "AdamW",
                             "lr": args.lr, "schedule": "cosine over the steps", "steps": args.steps,
                             "batch_size": args.batch_size, "augmentation": "none"},
        "data": {"class_names": class_names, "train_slices": int(len(train_images)),
                 "train_subjects": int(len(np.unique(train_subjects))), "low_data_slices": int(low.sum()),
                 "low_data_subjects": int(len(np.unique(train_subjects[low]))), "test_slices": int(len(test_images)),
                 "test_subjects": int(len(np.unique(test_subjects))), "synthetic_per_generator": args.num_synthetic,
                 "training_set_sizes": sizes},
        "interval": "95 % percentile bootstrap over real test slices (mean over seeds inside every replicate)",
        "results": results_out,
        "change_vs_real_mean_dice": changes,
        "wall_time_s": {k: round(v, 1) for k, v in times.items()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "device": "cpu"},
        "command": "python benchmarks/augment_bench.py" + (" --reduced" if args.reduced else ""),
    }
    Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out_json).write_text(json.dumps(report, indent=2) + "\n")
    plot({**results_out, "synthetic": {"synthetic_head": results_out["synthetic"]["head"],
                                       "synthetic_judge": results_out["synthetic"]["judge"]}},
         args.low_fraction, args.out_png)
    print(markdown_table(report))
    print(f"wall time {times['total_s']:.0f} s; wrote {args.out_json} and {args.out_png}")


def markdown_table(report: dict) -> str:
    names = report["data"]["class_names"][1:]
    rows = ["| regime | training data | slices | " + " | ".join(names) + " | mean Dice | vs real only |",
            "|---|---|---|" + "---|" * (len(names) + 2)]

    def cell(entry: dict) -> str:
        return f"{entry['value']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"

    sizes = report["data"]["training_set_sizes"]
    for regime, title in (("full", "all real subjects"), ("low", f"{100 * report['settings']['low_fraction']:g} % of subjects")):
        for arm in ("real", "real+synthetic_head", "real+synthetic_judge"):
            entry = report["results"][regime][arm]
            change = report["change_vs_real_mean_dice"][regime].get(arm)
            rows.append(f"| {title} | {LABELS[arm]} | {sizes[f'{regime}/{arm}']} | "
                        + " | ".join(cell(entry["dice"][n]) for n in names) + f" | {cell(entry['mean_dice'])} | "
                        + (f"{change['value']:+.3f} [{change['low']:+.3f}, {change['high']:+.3f}]" if change else "–") + " |")
    for key, arm in (("head", "synthetic_head"), ("judge", "synthetic_judge")):
        entry = report["results"]["synthetic"][key]
        rows.append(f"| no real data | {LABELS[arm]} | {sizes[f'synthetic/{arm}']} | "
                    + " | ".join(cell(entry["dice"][n]) for n in names) + f" | {cell(entry['mean_dice'])} | – |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
