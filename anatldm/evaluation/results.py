"""The evaluation report: intervals, tables and figures from the protocol's per-sample records.

Lightning-free: :class:`~anatldm.trainers.EvaluationTask` runs the protocol (sampling and metric
states) and hands its records here.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anatldm import __version__
from anatldm.atomic import write_text_atomic
from anatldm.evaluation.report import (
    ClaimCriteria,
    GateThresholds,
    claim_verdict,
    gate_verdict,
    markdown_report,
)
from anatldm.evaluation.statistics import (
    METRICS,
    ModelRecord,
    RealRecord,
    Statistics,
    violation_rates,
)
from anatldm.evaluation.training_logs import gradient_balance
from anatldm.interpret.association import save_association
from anatldm.interpret.effects import edit_effects_markdown
from anatldm.metrics import AnatomyRules
from anatldm.models.registers import RegisterEdit
from anatldm.pipelines import AnatomicalLDMPipeline
from anatldm.visualize import save_overlay_grid

__all__ = ["CONTROLS", "as_dataclass", "as_list", "build_report", "logged_metrics", "write_edit_report",
           "write_report"]

logger = logging.getLogger(__name__)

#: slice-level controls: name -> (label, negative)
CONTROLS = {
    "reconstructed": ("autoencoder reconstructions (positive control)", False),
    "flipped": ("left-right-flipped real slices holding a lateralised class (negative)", True),
    "spliced": ("real slices, lower half from a level >= half the range away (negative)", True),
}


def as_list(value: str | list[str]) -> list[str]:
    """One checkpoint path or a list of them, as a list."""
    return [value] if isinstance(value, str) else list(value)


def as_dataclass(cls, value):
    """A dataclass argument as saved in ``hparams`` (a dict after a checkpoint round trip) -> ``cls``."""
    if value is None:
        return cls()
    return cls(**value) if isinstance(value, dict) else value


def build_report(hp: Any, models: dict[str, list[str]], early_models: dict[str, list[str]], rules: AnatomyRules,
                 class_names: list[str], num_test_slices: int, data_content_hash: str | None, wall_time_s: float,
                 records: dict[str, ModelRecord], real: RealRecord, train_features: np.ndarray, judge_dice: dict,
                 judge_dice_per_slice: dict, real_passed: np.ndarray, control_rates: dict,
                 num_samples: int) -> dict[str, Any]:
    """``report.json``: per model, pooled per arm and paired per seed pair against the baseline,
    every metric with its bootstrap interval, the judge's gate and the claim's verdict.

    ``hp``: the ``EvaluationTask`` settings (attribute access); ``models``: arm -> model names;
    ``early_models``: arm -> its early checkpoints' model names.
    """
    stats = Statistics(num_bootstrap=hp.num_bootstrap, num_bootstrap_costly=hp.num_bootstrap_costly,
                       confidence=hp.confidence, seed=hp.seed,
                       kid_subset_size=max(2, min(hp.kid_subset_size, num_samples, len(real.features))))
    results = {}
    for name, record in records.items():
        results[name] = {metric: stats.model(spec, record, real) for metric, spec in METRICS.items()
                         if stats.available(spec, [record])}
        results[name]["violation_rates"] = violation_rates(record)
        results[name]["checkpoint"] = record.checkpoint
        results[name]["nfe"] = record.nfe
        results[name]["guidance"] = record.guidance
        if record.consistency_per_class is not None:
            results[name]["head"] = {"self_consistency_per_class": record.consistency_per_class,
                                     "dice_real_by_timestep": record.head_dice_real}
            if record.consistency_reconstructions is not None:
                results[name]["head"]["self_consistency_reconstructions"] = record.consistency_reconstructions
    for names in models.values():  # final models: how their anatomy term weighed against diffusion
        for name in names:
            balance = gradient_balance(records[name].checkpoint)
            if balance is not None:
                results[name]["gradient_balance"] = balance
    arms, pairs = {}, []
    for arm, names in models.items():
        group = [records[n] for n in names]
        arms[arm] = {"models": names, "checkpoints": [records[n].checkpoint for n in names],
                     "seeds": list(hp.training_seeds) if hp.training_seeds else list(range(len(names))),
                     "pooled": {metric: stats.pooled(spec, group, real) for metric, spec in METRICS.items()
                                if stats.available(spec, group)}}
    if hp.baseline is not None:
        base = [records[n] for n in models[hp.baseline]]
        for arm, names in models.items():
            if arm == hp.baseline:
                continue
            group = [records[n] for n in names]
            changes = {}
            for metric, spec in METRICS.items():
                if not spec.paired or not (stats.available(spec, group) and stats.available(spec, base)):
                    continue
                try:
                    changes[metric] = stats.changes(spec, group, base, real)
                except ValueError as err:  # e.g. a baseline value of 0: the relative change is undefined
                    logger.warning("%s vs %s, %s: %s", arm, hp.baseline, metric, err)
            arms[arm]["change_vs_baseline"] = changes
            for k, (name, base_name) in enumerate(zip(names, models[hp.baseline], strict=True)):
                pair_changes = {m: c["pairs"][k] for m, c in changes.items()}
                pairs.append({"name": f"{name} vs {base_name}", "arm": arm, "baseline": hp.baseline,
                              "seed": arms[arm]["seeds"][k], "changes": pair_changes})
                results[name]["relative_change_vs_baseline"] = pair_changes
    early = {}
    for arm, early_names in early_models.items():
        finals = [records[n] for n in models[arm][:len(early_names)]]
        change = stats.changes(METRICS["plausibility_rate"], finals, [records[n] for n in early_names], real,
                               relative=False)
        fraction = re.search(r"fraction-([0-9.]+)\.ckpt$", records[early_names[0]].checkpoint)
        early[arm] = {**change, "checkpoints": [records[n].checkpoint for n in early_names],
                      "fraction": f"{float(fraction.group(1)):.0%}" if fraction else "early",
                      "early_pass_rate": float(np.mean([records[n].passed.mean() for n in early_names]))}
    controls = {name: {**stats.rate(control_rates[name]), "label": CONTROLS[name][0],
                       "negative": CONTROLS[name][1]} for name in CONTROLS if name in control_rates}
    for name in CONTROLS:
        if name not in control_rates:  # e.g. no lateralised class: a flip changes no anatomy
            controls[name] = {"value": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0,
                              "label": CONTROLS[name][0], "negative": False, "note": "not applicable"}
    gate = gate_verdict(as_dataclass(GateThresholds, hp.gate), judge_dice, stats.rate(real_passed), controls, early)
    layout = rules.layout
    layout_text = f"; layout (k = {layout.k}, quantile {layout.quantile:.3g})" if layout else ""
    report = {
        "anatldm_version": __version__,
        "gate": gate,
        "protocol": "docs/method.md, 'Evaluation protocol': judge trained on real slices only; plausibility rules calibrated on "
                    f"{rules.source}; paired bootstrap over sampling seeds, hierarchical over training seeds",
        "rules_source": f"{rules.source}; per class {', '.join(rules.range_rules)}; co-occurrence"
                        f"{layout_text}"
                        f"; components below {rules.min_component_pixels} px ignored",
        "feature_source": "inception_v3" if hp.inception_weights else "judge bottleneck (domain encoder)",
        "sampler": hp.sampler, "num_inference_steps": hp.num_inference_steps, "seed": hp.seed,
        "num_samples": num_samples, "num_samples_per_model": num_samples,
        "num_real_test_slices": num_test_slices, "confidence": hp.confidence,
        "num_bootstrap": hp.num_bootstrap, "baseline": hp.baseline,
        "data_content_hash": data_content_hash,
        "generators": {arm: as_list(paths) for arm, paths in hp.generators.items()},
        "segmenter": hp.segmenter, "class_names": class_names,
        "real_test": {"plausibility_rate": stats.rate(real_passed), "segmenter_dice": judge_dice,
                      "segmenter_dice_per_slice": judge_dice_per_slice},
        "real_floor": stats.real_floor(train_features, real),
        "arms": arms, "pairs": pairs, "results": results,
        "evaluation_wall_time_s": wall_time_s,
    }
    if hp.claim is not None:
        report["claim"] = claim_verdict(as_dataclass(ClaimCriteria, hp.claim), hp.baseline, arms, gate["passed"],
                                        results)
    return report


def write_report(output_dir: str | Path, report: dict, rules: AnatomyRules, kept: dict[str, dict],
                 class_names: list[str], seed: int, world_size: int) -> None:
    """``rules.json``, ``report.json``, ``report.md`` and the sample grids of every model (each
    kept sample ``i`` of a rank has seed ``seed + i * world_size``)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "rules.json", json.dumps(rules.to_dict()))
    write_text_atomic(out / "report.json", json.dumps(report, indent=1, default=float))
    write_text_atomic(out / "report.md", markdown_report(report, METRICS))
    for name, samples in kept.items():
        if not samples["image"]:
            continue
        stem = name.replace("/", "_").replace("@", "_")
        images = torch.cat(samples["image"])[:16, 0].numpy()
        masks = torch.cat(samples["segmenter_mask"])[:16].numpy()
        titles = [f"seed {seed + i * world_size}" for i in range(len(images))]
        save_overlay_grid(images, masks, class_names, out / f"samples_{stem}.png", titles=titles,
                          title=f"{name}: samples with the judge's masks")
        if samples["head_mask"][0] is not None:
            heads = torch.cat(samples["head_mask"])[:16].numpy()
            save_overlay_grid(images, heads, class_names, out / f"samples_{stem}_head.png", titles=titles,
                              title=f"{name}: samples with the anatomy head's masks")
    logger.info("wrote %s", out / "report.md")


def write_edit_report(output_dir: str | Path, results: dict, kept: dict, generator: AnatomicalLDMPipeline,
                      edits: dict[str, list[RegisterEdit]], edit_generator: str, class_names: list[str],
                      confidence: float, seed: int, world_size: int) -> None:
    """``edits.md``, the association the edits by class were chosen from and ``edits_<arm>.png``."""
    out = Path(output_dir)
    write_text_atomic(out / "edits.md", edit_effects_markdown(results, class_names, confidence))
    if generator.register_groups is None and any(  # the table they were chosen from (not bound ones)
            edit.classes for edit_list in edits.values() for edit in edit_list):
        save_association(generator.register_association(), class_names, out, source="anatomy head",
                         num_samples=generator.sampling.association_samples, stem=f"association_{edit_generator}")
    columns = min(6, len(kept["unedited"][0]))
    images = torch.cat([images[:columns, 0] for images, _ in kept.values()]).numpy()
    masks = torch.cat([masks[:columns] for _, masks in kept.values()]).numpy()
    titles = [f"{name} · seed {seed + i * world_size}"
              for name in kept for i in range(columns)]
    save_overlay_grid(images, masks, class_names, out / f"edits_{edit_generator}.png", titles=titles,
                      columns=columns, title=f"{edit_generator}: register edits, same seeds "
                                             "(segmenter masks)")


def logged_metrics(report: dict) -> dict[str, float]:
    """``<model>/<metric>`` -> value of every metric of ``report`` that has one (for the experiment loggers)."""
    return {f"{name}/{metric}": values["value"] for name, metrics in report["results"].items()
            for metric, values in metrics.items() if isinstance(values, dict) and "value" in values}
