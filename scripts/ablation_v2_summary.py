"""The verdict of the ablation v2 at claim size (configs/ablation/README.md, "Ablation v2 at claim size").

    python scripts/ablation_v2_summary.py runs/ablation_v2/report.json docs/results/ablation_v2 \\
        --variants balance anatomy v2_anatomy --parents register_literal register_literal register_v2

Reads one evaluation report (every arm against the compute-matched baseline, the same sampling seeds) and
applies the pre-registered rule to each option: its variant against its parent, the same recipe without it
(and the dropout option as ``register_v2`` against ``balance`` when both are in the report). Writes
``OUT.json`` and ``OUT.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from anatldm.atomic import write_text_atomic
from anatldm.evaluation.report import ClaimCriteria, claim_verdict

#: the pre-registered rule (configs/ablation/README.md, 2026-12-07 18:25 UTC)
MIN_POINTS = 0.05            # an option helps: its variant's change exceeds its parent's by 5 points
MAX_KID_RATIO_TO_PARENT = 1.10
MIN_MEMORISATION_CHANGE = -0.10
MAX_DIVERSITY_RATIO = 1.10
# a claim v3 candidate: the claim's own criteria (ClaimCriteria's defaults: gain >= +11.5 %, KID ratio <= 1.10), unguided


def arm_summary(report: dict, arm: str) -> dict:
    """One arm against the report's reference: plausibility, its change (interval, seed pairs), KID and
    MS-SSIM ratios, nearest-training RMSE change."""
    baseline = report["arms"][report["baseline"]]["pooled"]
    pooled = report["arms"][arm]["pooled"]
    change = report["arms"][arm]["change_vs_baseline"]
    gain = change["plausibility_rate"]
    return {
        "plausibility": pooled["plausibility_rate"],
        "change": {k: gain[k] for k in ("value", "low", "high")},
        "pairs": [p["value"] for p in gain.get("pairs", [])],
        "kid_ratio": pooled["kid"]["value"] / baseline["kid"]["value"],
        "diversity_ratio": pooled["diversity_msssim"]["value"] / baseline["diversity_msssim"]["value"],
        "memorisation_change": change["memorisation_rmse"]["value"],
        "self_consistency_dice": (pooled.get("self_consistency_dice") or {}).get("value"),
    }


def option_verdict(variant: dict, parent: dict) -> dict:
    """The rule: does the option (variant = parent + option) help?"""
    points = variant["change"]["value"] - parent["change"]["value"]
    checks = {
        "points_at_least_5": points >= MIN_POINTS,
        "kid_ratio_vs_parent": variant["kid_ratio"] / parent["kid_ratio"] <= MAX_KID_RATIO_TO_PARENT,
        "memorisation_guard": variant["memorisation_change"] >= MIN_MEMORISATION_CHANGE,
        "diversity_guard": variant["diversity_ratio"] <= MAX_DIVERSITY_RATIO,
    }
    return {"points_vs_parent": points, "kid_ratio_vs_parent": variant["kid_ratio"] / parent["kid_ratio"],
            "checks": checks, "helps": all(checks.values())}


def summarise(report: dict, variants: list[str], parents: list[str]) -> dict:
    arms = {name: arm_summary(report, name) for name in report["arms"] if name != report["baseline"]}
    options = {}
    for variant, parent in zip(variants, parents, strict=True):
        options[variant] = {"variant": variant, "parent": parent, **option_verdict(arms[variant], arms[parent])}
    if "balance" in arms and "register_v2" in arms:  # register_v2 = balance + register dropout
        options["dropout"] = {"variant": "register_v2", "parent": "balance",
                              **option_verdict(arms["register_v2"], arms["balance"])}
    return {
        "protocol": {"sampler": report["sampler"], "num_inference_steps": report["num_inference_steps"],
                     "guidance": "none", "num_samples_per_model": report["num_samples_per_model"],
                     "training_seeds": report["arms"][variants[0]]["seeds"], "reference": report["baseline"],
                     "data_content_hash": report["data_content_hash"], "pre_registered":
                         "configs/ablation/README.md, Ablation v2 at claim size (2026-12-07 18:25 UTC)"},
        "gate_passed": report["gate"]["passed"],
        "reference_plausibility": report["arms"][report["baseline"]]["pooled"]["plausibility_rate"],
        "arms": arms,
        "options": options,
        "claim_v3_candidates": {name: claim_verdict(ClaimCriteria(arm=name), report["baseline"], report["arms"],
                                                    report["gate"]["passed"]) for name in arms},
        "evaluation_wall_time_s": report.get("evaluation_wall_time_s"),
    }


def _pct(value: float) -> str:
    return f"{value:+.1%}"


def markdown(summary: dict) -> str:
    protocol = summary["protocol"]
    lines = [
        "# Ablation v2 at claim size",
        "",
        f"Pre-registered: {protocol['pre_registered']}. {len(protocol['training_seeds'])} training seeds x "
        f"{protocol['num_samples_per_model']} samples per model, {protocol['sampler']} {protocol['num_inference_steps']} "
        f"steps, unguided, every arm against `{protocol['reference']}` "
        f"(plausibility {summary['reference_plausibility']['value']:.3f}); gate "
        f"{'passed' if summary['gate_passed'] else 'FAILED'}; data hash {protocol['data_content_hash']}.",
        "",
        "| arm | plausibility | change vs reference [95 %] | seed pairs | KID ratio | MS-SSIM ratio "
        "| nearest-training RMSE | self-consistency | claim v3 candidate |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, arm in summary["arms"].items():
        change = arm["change"]
        consistency = arm["self_consistency_dice"]
        lines.append(
            f"| {name} | {arm['plausibility']['value']:.3f} | {_pct(change['value'])} [{_pct(change['low'])}, "
            f"{_pct(change['high'])}] | {', '.join(_pct(p) for p in arm['pairs'])} | {arm['kid_ratio']:.2f} | "
            f"{arm['diversity_ratio']:.3f} | {_pct(arm['memorisation_change'])} | "
            f"{'-' if consistency is None else f'{consistency:.3f}'} | "
            f"{'yes' if summary['claim_v3_candidates'][name]['met'] else 'no'} |")
    lines += ["", "| option | variant vs parent | points vs parent (>= +5) | KID ratio vs parent (<= 1.10) "
              "| guards | helps |", "|---|---|---|---|---|---|"]
    for name, option in summary["options"].items():
        checks = option["checks"]
        guards = "pass" if checks["memorisation_guard"] and checks["diversity_guard"] else "FAIL"
        lines.append(f"| {name} | {option['variant']} vs {option['parent']} | {option['points_vs_parent'] * 100:+.1f} "
                     f"| {option['kid_ratio_vs_parent']:.2f} | {guards} | {'yes' if option['helps'] else 'no'} |")
    helped = [name for name, option in summary["options"].items() if option["helps"]]
    candidates = [name for name, c in summary["claim_v3_candidates"].items() if c["met"]]
    lines += ["", f"Options that help by the rule: {', '.join(helped) if helped else 'none'}. "
              f"Claim v3 candidates: {', '.join(candidates) if candidates else 'none'}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path)
    parser.add_argument("out", type=Path, help="output path without suffix (.json and .md are written)")
    parser.add_argument("--variants", nargs="+", required=True)
    parser.add_argument("--parents", nargs="+", required=True)
    args = parser.parse_args()
    if len(args.variants) != len(args.parents):
        parser.error("--variants and --parents must have the same length")
    report = json.loads(args.report.read_text())
    missing = [a for a in [*args.variants, *args.parents] if a not in report["arms"]]
    if missing:
        parser.error(f"{args.report} has no arm {missing}")
    summary = summarise(report, args.variants, args.parents)
    summary["source"] = str(args.report)
    write_text_atomic(args.out.with_suffix(".json"), json.dumps(summary, indent=2) + "\n")
    write_text_atomic(args.out.with_suffix(".md"), markdown(summary))
    print(markdown(summary))


if __name__ == "__main__":
    main()
