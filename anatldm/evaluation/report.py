"""The gate, the claim's verdict and ``report.md``: what an evaluation concludes, written plainly.

The gate is pre-registered (docs/method.md, 'The gate'): before any generator number means anything, the
judge must segment real test slices well (Dice per class), pass real test slices, fail
anatomically wrong slices (negative controls) and rank an early checkpoint of a generator below
its final one. ``report.md`` opens with its verdict; a failed gate is written in bold above every
table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ClaimCriteria", "GateThresholds", "claim_verdict", "gate_verdict", "markdown_report"]


@dataclass(frozen=True)
class GateThresholds:
    """The judge's pre-registered gate.

    Args:
        min_real_pass_rate: real test slices must pass the rules at least this often.
        max_negative_pass_rate: every slice-level negative control must pass at most this often.
        min_judge_dice: the judge's Dice on real test slices, for every class.
    """

    min_real_pass_rate: float = 0.90
    max_negative_pass_rate: float = 0.30
    min_judge_dice: float = 0.85


@dataclass(frozen=True)
class ClaimCriteria:
    """The claim's success criteria, written down before the run (``configs/claim/README.md``).

    Args:
        arm: the method's arm.
        min_relative_gain: pooled relative plausibility gain over the baseline arm (0.115 = half
            of the claimed +23 %), with a confidence interval excluding 0 and the same sign in
            every seed pair.
        max_kid_ratio: pooled KID of ``arm`` at most this multiple of the baseline's.
        min_self_consistency: pooled self-consistency Dice (head vs judge on the samples) of
            ``arm`` at least this (claim v2: 0.75); ``None``: not a criterion.
        min_class_self_consistency: every class's self-consistency, averaged over the arm's
            models, at least this (claim v2: 0.65); ``None``: not a criterion.
        min_memorisation_change: guard against a gain bought by copying: the pooled relative
            change of the nearest-training-slice RMSE vs the baseline at least this (-0.10: the
            samples are not 10 % closer to the training slices); ``None``: not a criterion.
        max_diversity_ratio: guard against a gain bought by collapse: the arm's pooled pairwise
            MS-SSIM at most this multiple of the baseline's (1.10); ``None``: not a criterion.
    """

    arm: str
    min_relative_gain: float = 0.115
    max_kid_ratio: float = 1.10
    min_self_consistency: float | None = None
    min_class_self_consistency: float | None = None
    min_memorisation_change: float | None = None
    max_diversity_ratio: float | None = None


def gate_verdict(thresholds: GateThresholds, judge_dice: dict[str, float], real_pass_rate: dict,
                 controls: dict[str, dict], early: dict[str, dict]) -> dict[str, Any]:
    """The gate's checks and verdict.

    Args:
        judge_dice: per-class Dice of the judge on real test slices.
        real_pass_rate: ``{"value", "low", "high"}`` of real test slices.
        controls: ``{name: {"value", ..., "negative": bool}}`` slice-level controls.
        early: ``{arm: change of the final vs the early checkpoint}`` (absolute, with ``low``).
    """
    checks = {f"judge_dice/{name}": value >= thresholds.min_judge_dice for name, value in judge_dice.items()}
    checks["real_pass_rate"] = real_pass_rate["value"] >= thresholds.min_real_pass_rate
    for name, control in controls.items():
        if control.get("negative"):
            checks[f"control/{name}"] = control["value"] <= thresholds.max_negative_pass_rate
    for arm, change in early.items():
        checks[f"early_checkpoint/{arm}"] = change["value"] > 0 and change["low"] > 0
    gate = {"thresholds": vars(thresholds), "judge_dice": dict(judge_dice),
            "real_pass_rate": real_pass_rate["value"], "real_pass_rate_interval": real_pass_rate,
            **{f"{name}_pass_rate": control["value"] for name, control in controls.items()},
            "controls": controls, "early_checkpoint": early, "checks": checks,
            "passed": bool(checks) and all(checks.values())}
    if not early:
        gate["note"] = "no early checkpoint given: the generator negative control was not run"
    return gate


def _self_consistency_checks(criteria: ClaimCriteria, arm: dict, models: dict | None) -> dict[str, bool]:
    """The claim's optional self-consistency checks (``models``: the report's per-model results)."""
    checks = {}
    if criteria.min_self_consistency is not None:
        pooled = arm["pooled"].get("self_consistency_dice", {}).get("value", math.nan)
        checks["self_consistency"] = bool(pooled >= criteria.min_self_consistency)
    if criteria.min_class_self_consistency is not None:
        per_model = [models[name]["head"]["self_consistency_per_class"] for name in arm["models"]
                     if models and (models.get(name) or {}).get("head")]
        classes = per_model[0] if per_model else {}
        means = [float(np.nanmean([m[c] for m in per_model])) for c in classes]
        checks["self_consistency_every_class"] = bool(means) and min(means) >= criteria.min_class_self_consistency
    return checks


def _guard_checks(criteria: ClaimCriteria, arm: dict, baseline: dict) -> dict[str, bool]:
    """The claim's optional guards: no gain bought by copying the training slices or by collapse."""
    checks = {}
    if criteria.min_memorisation_change is not None:
        change = arm.get("change_vs_baseline", {}).get("memorisation_rmse", {}).get("value", math.nan)
        checks["guard_memorisation"] = bool(change >= criteria.min_memorisation_change)
    if criteria.max_diversity_ratio is not None:
        ours = arm["pooled"].get("diversity_msssim", {}).get("value", math.nan)
        theirs = baseline["pooled"].get("diversity_msssim", {}).get("value", math.nan)
        checks["guard_diversity"] = bool(ours <= criteria.max_diversity_ratio * theirs)
    return checks


def claim_verdict(criteria: ClaimCriteria, baseline: str, arms: dict[str, dict], gate_passed: bool,
                  models: dict | None = None) -> dict:
    """Whether the pooled comparison of ``criteria.arm`` vs ``baseline`` meets the criteria
    (``models``: the report's per-model results, read by the self-consistency criteria)."""
    arm = arms[criteria.arm]
    change = arm.get("change_vs_baseline", {}).get("plausibility_rate")
    if change is None:
        nan = {"value": math.nan, "low": math.nan, "high": math.nan, "pairs": []}
        return {"criteria": vars(criteria), "baseline": baseline, "relative_plausibility_gain": nan,
                "kid_ratio": math.nan, "checks": dict.fromkeys(("primary_gain", "primary_interval_excludes_0",
                                                                "same_sign_every_pair", "kid_ratio"), False),
                "met": False, "verdict": "not assessable: the baseline's plausibility rate is 0, so its relative "
                                         "change is undefined"}
    pairs = [p["value"] for p in change["pairs"]]
    kid_ratio = arm["pooled"]["kid"]["value"] / arms[baseline]["pooled"]["kid"]["value"] \
        if arms[baseline]["pooled"]["kid"]["value"] > 0 else math.inf
    checks = {
        "primary_gain": change["value"] >= criteria.min_relative_gain,
        "primary_interval_excludes_0": change["low"] > 0 or change["high"] < 0,
        "same_sign_every_pair": all(p > 0 for p in pairs) or all(p < 0 for p in pairs),
        "kid_ratio": kid_ratio <= criteria.max_kid_ratio,
        **_self_consistency_checks(criteria, arm, models),
        **_guard_checks(criteria, arm, arms[baseline]),
    }
    met = all(checks.values()) and change["value"] > 0
    if not gate_passed:
        verdict = "not assessable: the judge failed its gate"
    else:
        verdict = "claim supported" if met else "claim not supported"
    return {"criteria": vars(criteria), "baseline": baseline, "relative_plausibility_gain": change,
            "kid_ratio": kid_ratio, "checks": checks, "met": met, "verdict": verdict}


def _cell(values: dict | None, percent: bool = False) -> str:
    if not values or values.get("value") is None or (isinstance(values["value"], float) and math.isnan(values["value"])):
        return "–"
    if percent:
        return f"{values['value']:+.1%} [{values['low']:+.1%}, {values['high']:+.1%}]"
    return f"{values['value']:.3g} [{values['low']:.3g}, {values['high']:.3g}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _head_table(models: dict) -> list[str]:
    """Per model with a head, per class: self-consistency on its samples (head vs judge) and
    the head's Dice against ground truth on real test slices noised to each timestep."""
    heads = {name: result["head"] for name, result in models.items() if result.get("head")}
    if not heads:
        return []
    first = next(iter(heads.values()))
    classes = list(first["self_consistency_per_class"])
    timesteps = list(first.get("dice_real_by_timestep") or {})
    lines = ["", "Anatomy head, per class: self-consistency on the samples (head vs judge); the same on the "
                 "decoded latents of the real test slices (reconstructions: what a sample as good as a reconstruction "
                 "would get, the ceiling of the row above); "
                 "Dice against the ground truth on real test slices noised to t (per subject, as the judge's gate; "
                 "t = 0 labels every sample):", ""]
    rows = []
    for name, head in heads.items():
        consistency = head["self_consistency_per_class"]
        rows.append([name, "self-consistency", *[f"{consistency[c]:.3f}" for c in classes],
                     f"{np.nanmean(list(consistency.values())):.3f}"])
        ceiling = head.get("self_consistency_reconstructions")
        if ceiling is not None:
            rows.append([name, "self-consistency, reconstructions", *[f"{ceiling[c]:.3f}" for c in classes],
                         f"{np.nanmean([ceiling[c] for c in classes]):.3f}"])
        for t in timesteps:
            real = (head.get("dice_real_by_timestep") or {}).get(t)
            if real is None:  # e.g. no real test slice reached this model's diagnostic
                continue
            rows.append([name, f"real, {t}", *[f"{real[c]:.3f}" for c in classes], f"{real['mean']:.3f}"])
    return lines + _table(["model", "measure", *classes, "mean"], rows)


def _gradient_table(models: dict) -> list[str]:
    """Per model with an anatomy term: the anatomy / diffusion gradient-norm ratio over training."""
    balances = {name: result["gradient_balance"] for name, result in models.items() if result.get("gradient_balance")}
    if not balances:
        return []
    fractions = list(next(iter(balances.values()))["ratio_at"])
    rows = []
    for name, balance in balances.items():
        clipped = balance.get("clipped_share_at") or {}
        rows.append([name, *[f"{balance['ratio_at'][f]:.2f}" + (f" ({clipped[f]:.0%})" if f in clipped else "")
                             for f in fractions], f"{balance['max']:.1f}"])
    return ["", "Anatomy / diffusion gradient-norm ratio over training (the weighted terms as trained, from the run's "
                "TensorBoard logs; in brackets the share of steps clipped by gradient_clip_val):", "",
            *_table(["model", *[f"at {f}" for f in fractions], "max"], rows)]


def markdown_report(report: dict, metrics: dict) -> str:
    """``report.md``: gate first, then the claim, the arms, every model, the controls."""
    gate, conf = report["gate"], int(round(report["confidence"] * 100))
    lines = []
    if gate["passed"]:
        lines.append(f"Gate: PASSED (judge Dice >= {gate['thresholds']['min_judge_dice']} per class, real pass rate "
                     f"{gate['real_pass_rate']:.3f}, every negative control <= "
                     f"{gate['thresholds']['max_negative_pass_rate']}).")
    else:
        failed = ", ".join(name for name, ok in gate["checks"].items() if not ok)
        lines.append(f"**GATE FAILED ({failed}): the judge cannot be trusted on this data; the numbers below "
                     f"are reported, not evidence.**")
    if "claim" in report:
        claim = report["claim"]
        gain = claim["relative_plausibility_gain"]
        lines += ["", f"**Verdict: {claim['verdict']}.** Pooled plausibility change of {claim['criteria']['arm']} vs "
                      f"{claim['baseline']}: {_cell(gain, percent=True)} (criterion >= "
                      f"{claim['criteria']['min_relative_gain']:+.1%}, interval excluding 0, same sign in every seed "
                      f"pair); KID ratio {claim['kid_ratio']:.3f} (criterion <= {claim['criteria']['max_kid_ratio']}). "
                      f"Checks: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in claim["checks"].items()) + "."]
    lines += ["", f"Samples per model: {report['num_samples_per_model']} ({report['sampler']}, "
                  f"{report['num_inference_steps']} steps, seeds from {report['seed']}, the same for every model); "
                  f"real test slices: {report['num_real_test_slices']}; features: {report['feature_source']}; "
                  f"data content hash: {report.get('data_content_hash') or '–'}. Cells: value [{conf} % interval].", ""]
    arms, baseline = report["arms"], report["baseline"]
    names = list(arms)
    header = ["metric (pooled over training seeds)", *[f"{n} ({len(arms[n]['models'])} seeds)" for n in names]]
    others = [n for n in names if n != baseline and baseline is not None]
    header += [f"{n} vs {baseline}" for n in others]
    rows = []
    for metric, spec in metrics.items():
        if not any(metric in arms[n]["pooled"] for n in names):
            continue
        row = [f"{spec.label} {'↑' if spec.higher_is_better else '↓'}"]
        row += [_cell(arms[n]["pooled"].get(metric)) for n in names]
        row += [_cell(arms[n].get("change_vs_baseline", {}).get(metric), percent=True) for n in others]
        rows.append(row)
    lines += _table(header, rows)
    if others and report["pairs"]:
        lines += ["", "Per seed pair (paired bootstrap over sampling seeds), relative change vs the baseline:", ""]
        pair_metrics = [m for m in metrics if m in report["pairs"][0]["changes"]]
        lines += _table(["pair", *pair_metrics],
                        [[pair["name"], *[_cell(pair["changes"][m], percent=True) for m in pair_metrics]]
                         for pair in report["pairs"]])
    lines += ["", "Every model:", ""]
    models = report["results"]
    model_metrics = [m for m in metrics if any(m in models[n] for n in models)]
    lines += _table(["model", *model_metrics],
                    [[n, *[_cell(models[n].get(m)) for m in model_metrics]] for n in models])
    lines += _head_table(models)
    lines += _gradient_table(models)
    lines += ["", "Judge and controls (pass rate of the plausibility rules):", ""]
    rows = [["real test slices", _cell(gate["real_pass_rate_interval"]), f">= {gate['thresholds']['min_real_pass_rate']}"]]
    for name, control in gate["controls"].items():
        bound = f"<= {gate['thresholds']['max_negative_pass_rate']}" if control.get("negative") else "(ceiling, not gated)"
        rows.append([control.get("label", name), _cell(control), bound])
    for arm, change in gate["early_checkpoint"].items():
        rows.append([f"{arm}: final - early checkpoint ({change.get('fraction', '?')} of training)",
                     _cell(change), "> 0, interval excluding 0"])
    lines += _table(["control", "value", "gate"], rows)
    dice = ", ".join(f"{k} {v:.3f}" for k, v in gate["judge_dice"].items())
    floor = report.get("real_floor", {})
    per_slice = ", ".join(f"{k} {v:.3f}" for k, v in report["real_test"].get("segmenter_dice_per_slice", {}).items())
    reconstructions = ", ".join(f"{k} {v:.3f}" for k, v in
                                report["real_test"].get("segmenter_dice_reconstructions", {}).items())
    lines += ["", f"Judge Dice on real test slices, per subject (gate >= {gate['thresholds']['min_judge_dice']}): "
                  f"{dice}; slice-wise mean: {per_slice or '–'}.",
              f"Judge Dice on the autoencoder's reconstructions of the same slices, per subject (what a mask "
              f"read from a latent reaches with this judge): {reconstructions or '–'}.",
              f"Real-vs-real floor (training vs test slices, judge features): FID {_cell(floor.get('fid'))}, "
              f"KID {_cell(floor.get('kid'))}.",
              f"Rules: {report['rules_source']}.", ""]
    return "\n".join(lines)
