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

**Closed world** (``--closed-world RUNS``, run by ``make augment-bench CLOSED=1`` after
``scripts/augment_closed.sh`` trained its models): the autoencoder, both generators (one per
training seed) and the segmenter that labels and filters were all trained on the same few
subjects (``data.train_subjects``) the downstream segmenters get as real data. Arms: real only;
real + the register LDM's pairs (head masks); real + those pairs kept by the quality filter
(:mod:`anatldm.export.filter`: agreement with that segmenter and the anatomy rules of the
training masks); real + the baseline LDM's samples labelled by that segmenter. Segmenter seed
``s`` goes with generator seed ``s``; intervals are hierarchical bootstraps (training seeds, then
test slices), paired with ``real``. The section ``closed_world`` of the JSON is replaced; the
rest (the open regimes above) is kept.
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
    parser.add_argument("--closed-world", metavar="RUNS", default=None,
                        help="closed-world low-data mode: models of scripts/augment_closed.sh in RUNS")
    parser.add_argument("--filter-min-dice", type=float, default=0.7,
                        help="closed world: quality filter's agreement threshold (head vs the user's segmenter)")
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
    if args.closed_world:
        closed_world(args)
        return
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
    out = Path(args.out_json)
    if out.is_file() and "closed_world" in (previous := json.loads(out.read_text())):
        report["closed_world"] = previous["closed_world"]  # written by --closed-world, another run
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot({**results_out, "synthetic": {"synthetic_head": results_out["synthetic"]["head"],
                                       "synthetic_judge": results_out["synthetic"]["judge"]}},
         args.low_fraction, args.out_png)
    print(markdown_table(report))
    print(f"wall time {times['total_s']:.0f} s; wrote {args.out_json} and {args.out_png}")


# -- closed world -------------------------------------------------------------------------------
def hierarchical_means(runs: dict[str, np.ndarray], num_bootstrap: int) -> dict[str, np.ndarray]:
    """``runs[arm]``: ``(S, N, C, 2)``, seed ``s`` paired across arms. Per replicate: training seeds
    drawn with replacement, then test slices; the mean over the drawn seeds of the pooled mean Dice."""
    seeds, n = next(iter(runs.values())).shape[:2]
    rng = np.random.default_rng(0)
    draws = [(rng.integers(0, seeds, seeds), rng.integers(0, n, n)) for _ in range(num_bootstrap)]
    return {arm: np.array([pooled_dice(counts[s][:, r]).mean(-1).mean() for s, r in draws])
            for arm, counts in runs.items()}


def closed_world(args) -> None:
    from anatldm.export.filter import QualityFilterConfig, drops_by_criterion, filter_decisions
    from anatldm.metrics.rules import AnatomyRules

    start = time.perf_counter()
    runs = Path(args.closed_world)
    labeller_path = runs / "segmenter/checkpoints/last.ckpt"
    generators = {arm: [runs / f"{name}_seed{s}/checkpoints/last.ckpt" for s in args.seeds]
                  for arm, name in (("register", "ldm"), ("baseline", "ldm_baseline"))}
    for path in [labeller_path, *generators["register"], *generators["baseline"]]:
        if not path.is_file():
            raise SystemExit(f"{path}: not found; scripts/augment_closed.sh trains the closed-world models")
    data = real_data(str(generators["register"][0]), args.cache_dir)
    subjects = data.hparams.train_subjects
    for path in generators["register"][1:] + generators["baseline"]:
        other = real_data(str(path), args.cache_dir)
        if other.hparams.train_subjects != subjects or other.content_hash != data.content_hash:
            raise SystemExit(f"{path}: trained on other data than {generators['register'][0]}")
    class_names = list(data.class_names)
    num_classes = len(class_names)
    train_images, train_masks, train_subjects = split_arrays(data, "train")
    test_images, test_masks, _ = split_arrays(data, "test")
    labeller = SegmenterTask.load_from_checkpoint(str(labeller_path), map_location="cpu", weights_only=True).eval()
    filter_config = QualityFilterConfig(segmenter=str(labeller_path), min_dice=args.filter_min_dice, rules=True)
    rules = AnatomyRules.fit(train_masks, class_names, filter_config.fitted_rules, subjects=train_subjects,
                             source="ground truth of the closed world's training subjects")
    arms = ("real", "real+register", "real+register_filtered", "real+baseline_labelled")
    counts: dict[str, list[np.ndarray]] = {arm: [] for arm in arms}
    kept, drops, sizes = [], [], {arm: [] for arm in arms}
    for index, seed in enumerate(args.seeds):
        register = synthesize(str(generators["register"][index]), args.num_synthetic, args.sampler,
                              args.num_inference_steps, None, None, seed=0)
        with torch.no_grad():
            labels = np.concatenate([labeller(torch.from_numpy(register[0][i:i + 64])[:, None]).argmax(1).numpy()
                                     for i in range(0, len(register[0]), 64)])
        decisions = filter_decisions(register[1], num_classes, filter_config, labels, rules)
        keep = np.array([d.keep for d in decisions])
        kept.append(int(keep.sum()))
        drops.append(drops_by_criterion(decisions))
        baseline = synthesize(str(generators["baseline"][index]), args.num_synthetic, args.sampler,
                              args.num_inference_steps, None, labeller, seed=0)
        sets = {"real": (train_images, train_masks),
                "real+register": register, "real+register_filtered": (register[0][keep], register[1][keep]),
                "real+baseline_labelled": baseline}
        for arm in arms:
            parts = [(train_images, train_masks)] + ([sets[arm]] if arm != "real" else [])
            images, masks = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
            sizes[arm].append(len(images))
            task = train_segmenter(images, masks, num_classes, args, seed)
            counts[arm].append(overlap_counts(task, test_images, test_masks, num_classes))
            logger.info("closed world, seed %d, %s (%d slices): mean Dice %.3f", seed, arm, len(images),
                        float(pooled_dice(counts[arm][-1]).mean()))
    stacked = {arm: np.stack(value) for arm, value in counts.items()}
    boot = hierarchical_means(stacked, args.num_bootstrap)
    results, changes = {}, {}
    for arm in arms:
        per_seed = pooled_dice(stacked[arm])  # (S, C)
        mean = per_seed.mean(0)
        results[arm] = {"dice": {name: float(mean[c]) for c, name in enumerate(class_names[1:])},
                        "mean_dice": {"value": float(mean.mean()), "low": float(np.percentile(boot[arm], 2.5)),
                                      "high": float(np.percentile(boot[arm], 97.5))},
                        "mean_dice_per_seed": [float(v) for v in per_seed.mean(1)], "training_slices": sizes[arm]}
        if arm != "real":
            diff = boot[arm] - boot["real"]
            changes[arm] = {"value": results[arm]["mean_dice"]["value"] - results["real"]["mean_dice"]["value"],
                            "low": float(np.percentile(diff, 2.5)), "high": float(np.percentile(diff, 97.5)),
                            "per_seed": [a - b for a, b in zip(results[arm]["mean_dice_per_seed"],
                                                              results["real"]["mean_dice_per_seed"], strict=True)]}
    section = {
        "setting": f"closed world: autoencoder, generators, labeller and segmenters all trained on the same "
                   f"{subjects} training subjects; scored on the real test subjects",
        "train_subjects": subjects, "train_slices": int(len(train_images)), "test_slices": int(len(test_images)),
        "seeds": list(args.seeds), "synthetic_per_generator": args.num_synthetic,
        "sampler": f"{args.sampler} {args.num_inference_steps}", "segmenter_steps": args.steps,
        "filter": {**filter_config.describe(), "kept_per_seed": kept, "dropped_by_criterion_per_seed": drops},
        "interval": "95 % hierarchical bootstrap: training seeds (generator and segmenter seed s together), "
                    "then real test slices; changes paired with real only in every replicate",
        "results": results, "change_vs_real_mean_dice": changes,
        "wall_time_s": round(time.perf_counter() - start, 1),
        "command": "make augment-bench CLOSED=1  (scripts/augment_closed.sh, then python benchmarks/augment_bench.py "
                   f"--closed-world {args.closed_world})",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
    }
    out = Path(args.out_json)
    report = json.loads(out.read_text()) if out.is_file() else {}
    report["closed_world"] = section
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(closed_world_table(section, class_names[1:]))
    print(f"wall time {section['wall_time_s']:.0f} s; wrote the closed_world section of {out}")


def closed_world_table(section: dict, names: list[str]) -> str:
    rows = ["| training data | slices | " + " | ".join(names) + " | mean Dice | vs real only | per seed |",
            "|---|---|" + "---|" * (len(names) + 3)]
    for arm, entry in section["results"].items():
        change = section["change_vs_real_mean_dice"].get(arm)
        mean = entry["mean_dice"]
        rows.append(f"| {arm} | {round(float(np.mean(entry['training_slices'])))} | "
                    + " | ".join(f"{entry['dice'][n]:.3f}" for n in names)
                    + f" | {mean['value']:.3f} [{mean['low']:.3f}, {mean['high']:.3f}] | "
                    + (f"{change['value']:+.3f} [{change['low']:+.3f}, {change['high']:+.3f}] | "
                       + ", ".join(f"{v:+.3f}" for v in change["per_seed"]) if change else "– | –") + " |")
    return "\n".join(rows)


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
