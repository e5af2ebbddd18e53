"""The data card of an exported data set: ``datacard.json`` and ``DATACARD.md`` (no Lightning).

What a user of the data needs to judge it: which model made it (checkpoint sha256), from which
training data, with which seeds, sampler, steps and register edits, what the classes are and how
often they occur, how good the model was (the evaluation report, when given), whether samples
copy training slices (the memorisation audit), which samples the quality filter dropped and why,
and the licence note.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

__all__ = ["evaluation_section", "file_sha256", "licence_note", "render_datacard", "training_data_description"]


def _guidance_line(guidance: dict | None) -> str:
    """The data card's guidance line: ``none``, or the kind, the weight and the guide."""
    if not guidance or guidance.get("kind", "none") == "none":
        return "none"
    guide = f", guide `{guidance['guide']}`" if guidance.get("guide") else ""
    return f"{guidance['kind']}, weight {guidance['weight']}{guide}"


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def training_data_description(hparams: dict) -> str:
    """A sentence naming the data an ``AnatomyDataModule`` with ``hparams`` reads."""
    if hparams.get("source", "phantom") == "phantom":
        return (f"anatldm's built-in procedural '{hparams.get('phantom_family', 'ct_abdomen')}' phantoms "
                f"({hparams.get('num_subjects')} subjects x {hparams.get('num_slices')} slices, phantom seed "
                f"{hparams.get('phantom_seed', 0)}; generated, no patient data)")
    where = hparams.get("root") or hparams.get("manifest")
    return f"the labelled volumes of {where} (preset {hparams.get('preset')!r}, slice axis {hparams.get('slice_axis', 2)})"


def licence_note(description: str) -> str:
    return (f"Synthetic data derived from {description}; its licence terms may apply. Check them before "
            f"sharing, and see the memorisation audit for samples close to a training slice.")


def evaluation_section(report_path: str | os.PathLike, model_name: str | None, checkpoint: str | None,
                       key: str = "report") -> dict:
    """The gate and the model's results from an ``anatldm test`` ``report.json``.

    ``model_name`` picks the model in ``report["results"]``; without it the model whose
    ``checkpoint`` equals ``checkpoint`` (same file, or the same path as written) is used.
    """
    from anatldm.errors import ConfigError, read_json

    path = Path(report_path)
    report = read_json(path, ConfigError, key)
    try:
        results = report["results"]
    except (KeyError, TypeError) as err:
        raise ConfigError(f"{key}: {path} is not an anatldm evaluation report.json ({type(err).__name__}: {err})") from None
    if model_name is None:
        def same(candidate: str | None) -> bool:
            if not candidate or not checkpoint:
                return False
            if str(candidate) == str(checkpoint):
                return True
            try:
                return os.path.samefile(candidate, checkpoint)
            except OSError:
                return False
        matches = [name for name, result in results.items() if same(result.get("checkpoint"))]
        if len(matches) != 1:
            raise ConfigError(f"{key}_model: name the model of {path} to use (one of {', '.join(results)}); "
                              f"its checkpoint paths do not single out {checkpoint}")
        model_name = matches[0]
    if model_name not in results:
        raise ConfigError(f"{key}_model: {model_name!r} is not in {path} (models: {', '.join(results)})")
    result = results[model_name]
    metrics = {name: value for name, value in result.items()
               if isinstance(value, dict) and {"value", "low", "high"} <= set(value)}
    gate = report.get("gate", {})
    return {"report": str(path), "model": model_name, "checkpoint_in_report": result.get("checkpoint"),
            "gate_passed": gate.get("passed"), "judge_dice": gate.get("judge_dice"),
            "confidence": report.get("confidence"), "num_samples": report.get("num_samples_per_model"),
            "metrics": metrics}


def _value(entry: dict) -> str:
    return f"{entry['value']:.4g} [{entry['low']:.4g}, {entry['high']:.4g}]"


def render_datacard(card: dict) -> str:
    """``DATACARD.md``: the card in words and tables."""
    dataset, model, generation = card["dataset"], card["model"], card["generation"]
    lines = [f"# Data card: {dataset['folder']}", "",
             f"{dataset['num_cases']} (image, label) slices for segmentation: {dataset['num_synthetic']} synthetic"
             + (f", {dataset['num_real']} real training slices (case ids `real_*`)" if dataset["num_real"] else "")
             + f". nnU-Net v2 raw dataset (`dataset.json`, `imagesTr/`, `labelsTr/`) and a MONAI / Decathlon "
               f"datalist (`datalist.json`). Written by anatldm {card['anatldm_version']} on {card['created']}.", "",
             "## Files and geometry", "",
             f"- Images: {dataset['intensity']}; nnU-Net channel name `{dataset['channel_name']}`.",
             f"- Labels: {dataset['label_dtype']}, values 0..{len(card['classes']) - 1} (table below).",
             f"- Geometry: {dataset['geometry']}", "",
             "## Model", "",
             f"- Checkpoint: `{model['checkpoint']}` (sha256 `{model['sha256']}`)",
             f"- {model['description']}",
             f"- Training data: {card['training_data']['description']}"
             + (f", slice cache content hash `{card['training_data']['content_hash']}`"
                if card["training_data"].get("content_hash") else ""), "",
             "## Generation", "",
             f"- Seeds: {generation['seeds']['first']}..{generation['seeds']['last']} ({generation['seeds']['count']} samples; "
             f"sample i depends only on its seed)",
             f"- Sampler: {generation['sampler']}, {generation['num_inference_steps']} steps",
             f"- Guidance: {_guidance_line(generation.get('guidance'))}",
             f"- Label maps: {generation['labels']}",
             f"- Register edits: {json.dumps(generation['register_edits']) if generation['register_edits'] else 'none'}", "",
             "## Classes", "", "| value | class | cases containing it | pixels |", "|---|---|---|---|"]
    lines += [f"| {c['value']} | {c['name']} | {c['cases']} | {c['pixels']} |" for c in card["classes"]]
    evaluation = card.get("evaluation")
    lines += ["", "## Evaluation of the model", ""]
    if evaluation:
        lines += [f"From `{evaluation['report']}` (model `{evaluation['model']}`; judge gate "
                  f"{'passed' if evaluation['gate_passed'] else '**failed**'}; "
                  f"{evaluation['num_samples']} samples, {evaluation['confidence']} intervals):", "",
                  "| metric | value [interval] |", "|---|---|"]
        lines += [f"| {name} | {_value(entry)} |" for name, entry in evaluation["metrics"].items()]
    else:
        lines += ["No evaluation report was given (`DatasetWriter.report`)."]
    audit = card.get("memorisation")
    lines += ["", "## Memorisation audit", ""]
    if audit and audit.get("num_samples"):
        low, high = audit["flagged_fraction_interval"]
        lines += [f"Distance: {audit['distance']}. Reference: {audit['num_held_out_slices']} real slices of subjects "
                  f"the model never saw (validation and test split) against {audit['num_training_slices']} training "
                  f"slices; threshold = their {100 * audit['quantile']:g} % quantile, {audit['threshold']:.4f} "
                  f"(held-out median {audit['held_out_distance']['median']:.4f}; samples' median "
                  f"{audit['sample_distance']['median']:.4f}).", "",
                  f"**Flagged: {audit['num_flagged']} of {audit['num_samples']} samples = "
                  f"{100 * audit['flagged_fraction']:.1f} % [{100 * low:.1f} %, {100 * high:.1f} %]** "
                  f"({100 * audit['confidence']:g} % {audit['interval_method']} interval; about "
                  f"{100 * audit['quantile']:g} % is expected without memorisation).", ""]
        if audit["flagged"]:
            lines += [("The flagged samples were **dropped** from this export." if card["dropped_flagged"] else
                       "The flagged samples are **in** this export (`drop_memorised: true` drops them)."),
                      "Side by side: `memorisation_flagged.png`. Pixel RMSE also rates smooth, low-contrast "
                      "samples as close to everything: look at the pairs before calling a sample a copy.", "",
                      "| case | seed | RMSE | nearest training slice |", "|---|---|---|---|"]
            lines += [f"| {f['case']} | {f['seed']} | {f['distance']:.4f} | {f['nearest_training_slice']} |"
                      for f in audit["flagged"]]
    else:
        lines += ["Not run (`DatasetWriter.memorisation_audit: false`)."]
    lines += ["", "## Quality filter", ""] + _quality_filter_lines(card.get("quality_filter"))
    lines += ["", "## Licence", "", card["licence"], ""]
    return "\n".join(lines)


def _quality_filter_lines(section: dict | None) -> list[str]:
    if not section:
        return ["Not used (`DatasetWriter.quality_filter`): every generated sample is in this export."]
    settings = section["settings"]
    criteria = []
    if settings["segmenter"]:
        criteria.append(f"mean foreground Dice >= {settings['min_dice']:g} between the anatomy head's mask and the "
                        f"mask of the segmenter `{settings['segmenter']}` (sha256 `{settings['segmenter_sha256']}`, "
                        f"trained on the user's own training split, not the evaluation judge)")
    if settings["rules"]:
        criteria.append(f"the anatomy rules fitted on the {section['rules_fitted_on']}")
    lines = [f"A sample was kept only if its mask passed: {'; and '.join(criteria)}.", "",
             f"**Kept {section['num_kept']} of {section['num_generated']} generated samples; dropped "
             f"{section['num_dropped']}**"
             + (f" ({', '.join(f'{name}: {n}' for name, n in section['dropped_by_criterion'].items())})"
                if section["dropped_by_criterion"] else "") + "."]
    if section["kept_dice_median"] is not None:
        lines[-1] += f" Median Dice of the kept samples: {section['kept_dice_median']:.3f}."
    if section["dropped"]:
        lines += ["", "| case | seed | Dice | reasons |", "|---|---|---|---|"]
        lines += [f"| {d['case']} | {d['seed']} | {'-' if d['dice'] is None else format(d['dice'], '.3f')} | "
                  f"{'; '.join(d['reasons'])} |" for d in section["dropped"]]
    return lines
