"""Screen of quickstart recipes: how good is an autoencoder or an LDM, in seconds instead of a report?

    python benchmarks/screen_quickstart.py autoencoder runs/quickstart/vae/export [more bundles ...]
    python benchmarks/screen_quickstart.py ldm runs/quickstart/ldm/tensorboard/version_0/pipeline [...]
    python benchmarks/screen_quickstart.py judge runs/quickstart/segmenter/checkpoints/last.ckpt [...]

Both use a judge and the plausibility rules of one evaluation run (``--judge``, ``--rules``;
default: the quickstart's, so run ``make quickstart`` first) on the quickstart's data
(``--data-config``):

- ``autoencoder``: the share of reconstructions (posterior mean, decoded) of the real test slices
  that pass the rules (the evaluation's positive control, the ceiling of any LDM on this
  autoencoder), their PSNR, and the judge's Dice per class on them against the slices' ground
  truth (how much anatomy survives the autoencoder: it bounds both the plausibility of samples
  and the head-vs-judge self-consistency; the judge's Dice on the real slices is printed beside it);
- ``judge``: which rules the real test slices fail, with the judge's labels (the gate's real pass
  rate) and with their ground-truth masks (what the rules alone reject): the judge's share of the
  gate's margin (the rules of ``--rules`` were calibrated on the evaluation's own judge: for
  another judge checkpoint the evaluation would calibrate its own);
- ``ldm``: the share of ``--samples`` samples (seeds 0..N-1, the pipeline's sampler) that pass,
  with a normal-approximation 95 % half-width; for a model with a head, the self-consistency
  Dice per class (head vs judge on the samples, :class:`~anatldm.metrics.SelfConsistencyDice`)
  and the head's Dice against ground truth on the real test slices noised to t = 0, 50, 200, 500
  (:func:`~anatldm.evaluation.head.head_dice_by_timestep`).

A screen, not the protocol: one model each, no paired statistics, no controls; ``anatldm test``
is the measurement. One JSON line per model is printed (and appended to ``--out``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from bench_sampling import real_test_slices  # benchmarks/ is on sys.path when run as a script

from anatldm.evaluation.head import head_dice_by_timestep
from anatldm.metrics import AnatomyRules, SelfConsistencyDice, per_class_dice
from anatldm.models.autoencoder_bundle import load_autoencoder_bundle
from anatldm.pipelines import AnatomicalLDMPipeline
from anatldm.trainers import SegmenterTask
from anatldm.trainers.base import load_task

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "runs" / "quickstart"


def judge_dice(judge, images: torch.Tensor, masks: torch.Tensor, class_names: list[str]) -> dict[str, float]:
    """The judge's Dice per class (mean over the slices where the class is in either map) and its mean."""
    labels = torch.cat([judge(images[s:s + 64]).argmax(1) for s in range(0, len(images), 64)])
    per_class = per_class_dice(labels, masks, len(class_names)).nanmean(0)
    dice = {name: round(float(v), 3) for name, v in zip(class_names[1:], per_class, strict=True)}
    return {**dice, "mean": round(float(per_class.mean()), 3)}


def screen_autoencoder(path: str, judge, rules: AnatomyRules, images: torch.Tensor, masks: torch.Tensor) -> dict:
    autoencoder, bundle = load_autoencoder_bundle(path)
    autoencoder.eval()
    reconstructions = torch.cat([autoencoder.decode(autoencoder.encode(images[s:s + 64])[0]).clamp(-1, 1)
                                 for s in range(0, len(images), 64)])
    mse = (reconstructions - images).pow(2).flatten(1).mean(1)
    passed = rules.check_batch(judge(reconstructions).argmax(1))[0]
    class_names = list(bundle["class_names"])
    return {"model": path, "slices": len(images), "reconstruction_pass_rate": round(float(passed.mean()), 3),
            "psnr_db": round(float((10 * torch.log10(4.0 / mse)).mean()), 2),
            "judge_dice_reconstructions": judge_dice(judge, reconstructions, masks, class_names),
            "judge_dice_real": judge_dice(judge, images, masks, class_names)}


def screen_judge(path: str, rules: AnatomyRules, images: torch.Tensor, masks: torch.Tensor) -> dict:
    judge = load_task(SegmenterTask, path, "judge").eval()
    labels = torch.cat([judge(images[s:s + 64]).argmax(1) for s in range(0, len(images), 64)])
    row = {"model": path, "slices": len(images)}
    for name, label_maps in (("judge_labels", labels), ("ground_truth", masks)):
        passed, violations = rules.check_batch(label_maps)
        row[name] = {"pass_rate": round(float(passed.mean()), 3),
                     "failures_by_rule": {rule: int(v.sum()) for rule, v in violations.items() if v.sum() > 0}}
    return row


def screen_ldm(path: str, judge, rules: AnatomyRules, samples: int, real: tuple | None, batch: int = 64) -> dict:
    pipeline = AnatomicalLDMPipeline.from_pretrained(path).eval()
    passed, consistency = [], SelfConsistencyDice(len(pipeline.class_names))
    for out in pipeline.generate_batches(range(samples), batch):
        labels = judge(out.images).argmax(1)
        passed.append(rules.check_batch(labels)[0])
        if out.masks is not None:
            consistency.update(out.masks, labels)
    passed = np.concatenate(passed)
    rate = float(passed.mean())
    row = {"model": path, "samples": samples, "sampler": pipeline.sampling.sampler,
           "steps": pipeline.sampling.num_inference_steps,
           "plausibility_rate": round(rate, 3),
           "half_width_95": round(1.96 * float(np.sqrt(rate * (1 - rate) / samples)), 3)}
    if pipeline.denoiser.head is not None:
        row["self_consistency_dice"] = round(float(consistency.compute()), 3)
        row["self_consistency_per_class"] = {name: round(float(v), 3) for name, v in
                                             zip(pipeline.class_names[1:], consistency.per_class(), strict=True)}
        if real is not None:
            row["head_dice_real"] = head_dice_by_timestep(pipeline, *real)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["autoencoder", "ldm", "judge"])
    parser.add_argument("models", nargs="+", help="autoencoder export bundles, exported LDM pipelines, or judge checkpoints")
    parser.add_argument("--judge", type=Path, default=QUICKSTART / "segmenter" / "checkpoints" / "last.ckpt")
    parser.add_argument("--rules", type=Path, default=QUICKSTART / "eval" / "rules.json")
    parser.add_argument("--data-config", type=Path, default=ROOT / "configs" / "quickstart" / "vae.yaml")
    parser.add_argument("--samples", type=int, default=192)
    parser.add_argument("--out", type=Path, default=None, help="append the JSON lines here")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    judge = load_task(SegmenterTask, str(args.judge), "--judge").eval()
    rules = AnatomyRules.from_dict(json.loads(args.rules.read_text(encoding="utf-8")))
    real = real_test_slices(args.data_config)
    for model in args.models:
        if args.what == "autoencoder":
            row = screen_autoencoder(model, judge, rules, real[0], real[1])
        elif args.what == "judge":
            row = screen_judge(model, rules, real[0], real[1])
        else:
            row = screen_ldm(model, judge, rules, args.samples, real)
        line = json.dumps(row)
        print(line, flush=True)
        if args.out is not None:
            with args.out.open("a", encoding="utf-8") as handle:
                handle.write(line + "\n")


if __name__ == "__main__":
    main()
