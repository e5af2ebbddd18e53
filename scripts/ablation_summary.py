"""Summaries of the recipe ablation (configs/ablation/README.md).

    python scripts/ablation_summary.py VARIANT RUN_DIR OUT.json    # one variant's summary
    python scripts/ablation_summary.py --table FOLDER OUT.json     # every summary -> one table

A summary holds what the ablation table of docs/results.md shows: pooled plausibility change vs the
baseline (hierarchical interval and per seed pair), KID ratio, self-consistency Dice, edit
specificity and target area change of each edit, and the gate.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from anatldm.atomic import write_text_atomic


def summarise(variant: str, run_dir: Path) -> dict:
    report = json.loads((run_dir / "report.json").read_text())
    claim = report["claim"]
    arm = report["arms"]["register_ldm"]["pooled"]
    edits = {}
    for name, edit in (report.get("edits") or {}).items():
        if "skipped" in edit:
            edits[name] = {"skipped": edit["skipped"]}
            continue
        targets = [c for e in edit["edits"] for c in e.get("classes") or []]
        edits[name] = {"registers": edit["resolved"], "specificity": edit.get("specificity"),
                       "target_area_change": {c: edit["effect"]["area"][c]["relative_change"] for c in targets},
                       "area_change": {c: v["relative_change"] for c, v in edit["effect"]["area"].items()}}
    return {
        "variant": variant,
        "screen": report["num_samples_per_model"] < 1000 or len(report["arms"]["register_ldm"]["seeds"]) < 3,
        "training_seeds": report["arms"]["register_ldm"]["seeds"],
        "num_samples_per_model": report["num_samples_per_model"],
        "sampler": report["sampler"],
        "gate_passed": report["gate"]["passed"],
        "plausibility": {"register": arm["plausibility_rate"],
                         "baseline": report["arms"]["baseline_ldm"]["pooled"]["plausibility_rate"]},
        "relative_plausibility_change": claim["relative_plausibility_gain"],
        "kid_ratio": claim["kid_ratio"],
        "self_consistency_dice": arm.get("self_consistency_dice"),
        "fid": arm["fid"],
        "edits": edits,
        "verdict": claim["verdict"],
        "evaluation_wall_time_s": report.get("evaluation_wall_time_s"),
        "source": str(run_dir / "report.json"),
    }


def _interval(value: dict | None, percent: bool = True) -> str:
    if not value:
        return "-"
    if percent:
        return f"{value['value']:+.1%} [{value['low']:+.1%}, {value['high']:+.1%}]"
    return f"{value['value']:.2f} [{value['low']:.2f}, {value['high']:.2f}]"


def table(summaries: list[dict]) -> str:
    header = ["variant", "seeds x samples", "plausibility change vs baseline (pooled)", "per seed pair",
              "KID ratio", "self-consistency Dice", "liver_x2: liver area / specificity",
              "spleen_off: spleen area / specificity"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summaries:
        change = s["relative_plausibility_change"]
        pairs = ", ".join(f"{p['value']:+.1%}" for p in change.get("pairs", []))
        cells = []
        for name, target in (("liver_x2", "liver"), ("spleen_off", "spleen")):
            edit = s["edits"].get(name)
            if not edit or "skipped" in edit:
                cells.append("-" if not edit else "skipped")
                continue
            cells.append(f"{_interval(edit['target_area_change'].get(target))} / "
                         f"{_interval(edit['specificity'], percent=False)}")
        consistency = s["self_consistency_dice"]
        lines.append("| " + " | ".join([
            s["variant"] + (" (screen)" if s["screen"] else ""),
            f"{len(s['training_seeds'])} x {s['num_samples_per_model']}", _interval(change), pairs,
            f"{s['kid_ratio']:.3f}", f"{consistency['value']:.3f}" if consistency else "-", *cells]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", nargs=2, metavar=("FOLDER", "OUT.json"),
                        help="write the table of every summary in FOLDER instead of one summary")
    parser.add_argument("variant", nargs="?", help="the variant's name")
    parser.add_argument("run_dir", nargs="?", type=Path, help="the variant's run folder")
    parser.add_argument("out", nargs="?", type=Path, help="where its summary goes (JSON)")
    options = parser.parse_args(argv)
    if options.table:
        folder, out = map(Path, options.table)
        summaries = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
        write_text_atomic(out, json.dumps({s["variant"]: s for s in summaries}, indent=1))
        write_text_atomic(out.with_suffix(".md"), table(summaries))
        print(table(summaries))
        return
    if options.out is None:
        parser.error("VARIANT RUN_DIR OUT.json are required without --table")
    variant, out = options.variant, options.out
    summary = summarise(variant, options.run_dir)
    write_text_atomic(Path(out), json.dumps(summary, indent=1))
    print(f"{variant}: plausibility change {_interval(summary['relative_plausibility_change'])}, "
          f"KID ratio {summary['kid_ratio']:.3f}, gate {'passed' if summary['gate_passed'] else 'FAILED'}")


if __name__ == "__main__":
    main()
