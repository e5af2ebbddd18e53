"""The measured effect of a register edit: paired comparison of edited and unedited samples.

Edited and unedited samples share their seeds (same initial noise, same sampler), so sample
``i`` of both sets forms a pair. Intervals are paired percentile bootstraps: the pairs are
resampled together, which removes the between-seed variation from the comparison.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from anatldm.metrics import bootstrap_ci

__all__ = ["edit_effect", "edit_effects_markdown", "edit_specificity"]


def _ci(statistic, pairs: np.ndarray, num_bootstrap: int, confidence: float, seed: int) -> dict[str, float]:
    value, low, high = bootstrap_ci(statistic, [pairs], num_bootstrap, confidence, seed)
    return {"value": float(value), "low": float(low), "high": float(high)}


def _relative(pairs: np.ndarray) -> float:
    base = pairs[:, 0].mean()
    return float(pairs[:, 1].mean() / base - 1) if base > 0 else float("nan")


def edit_specificity(unedited_areas: np.ndarray, edited_areas: np.ndarray, class_names: Sequence[str],
                     targets: Sequence[str], num_bootstrap: int = 1000, confidence: float = 0.95,
                     seed: int = 0) -> dict[str, float]:
    """How specific an edit of ``targets`` is: off-target over target absolute area change.

    With ``r_c = mean(edited area_c) / mean(unedited area_c) - 1`` per foreground class (classes
    absent from the unedited samples left out)::

        specificity = mean_{c not in targets} |r_c| / mean_{c in targets} |r_c|

    0 is a perfectly specific edit, 1 moves every class as much as the target; lower is better.
    The interval is a paired bootstrap over samples (edited and unedited of the same seed
    resampled together).
    """
    unedited_areas, edited_areas = np.asarray(unedited_areas, float), np.asarray(edited_areas, float)
    foreground = list(class_names[1:])
    unknown = [name for name in targets if name not in foreground]
    if unknown or not targets:
        raise ValueError(f"edit targets {list(targets)} must be foreground classes of {foreground}")
    target = np.array([name in targets for name in foreground])
    count = unedited_areas.shape[1]

    def statistic(pairs: np.ndarray) -> float:
        base, edited = pairs[:, :count].mean(0), pairs[:, count:].mean(0)
        present = base > 0
        change = np.abs(np.where(present, edited / np.where(present, base, 1.0) - 1, np.nan))
        on, off = change[target & present], change[~target & present]
        if not len(on) or not len(off) or not np.nanmean(on) > 0:
            return float("nan")
        return float(np.mean(off) / np.mean(on))

    return _ci(statistic, np.concatenate([unedited_areas, edited_areas], axis=1), num_bootstrap, confidence, seed)


def edit_effect(unedited_areas: np.ndarray, edited_areas: np.ndarray, unedited_plausible: np.ndarray,
                edited_plausible: np.ndarray, class_names: Sequence[str], num_bootstrap: int = 1000,
                confidence: float = 0.95, seed: int = 0) -> dict:
    """Per-class area change and plausibility change of an edit, each with a paired interval.

    Args:
        unedited_areas: ``(N, C - 1)`` area fractions of the foreground classes (segmenter masks).
        edited_areas: the same for the edited samples of the same seeds.
        unedited_plausible: ``(N,)`` 1.0 where a sample passes every anatomy rule.
        edited_plausible: the same for the edited samples.
        class_names: all ``C`` class names (background first).

    Returns:
        ``{"area": {class: {"unedited", "edited", "relative_change": {value, low, high},
        "difference": {...}}}, "plausibility": {"unedited", "edited", "difference": {...}}, "n"}``;
        relative changes are fractions (0.1 = +10 %), differences are in area fraction / rate.
    """
    unedited_areas, edited_areas = np.asarray(unedited_areas, float), np.asarray(edited_areas, float)
    if unedited_areas.shape != edited_areas.shape or unedited_areas.shape[1] != len(class_names) - 1:
        raise ValueError(f"area arrays {unedited_areas.shape} and {edited_areas.shape} do not pair up for "
                         f"{len(class_names) - 1} foreground classes")
    area = {}
    for c, name in enumerate(class_names[1:]):
        pairs = np.stack([unedited_areas[:, c], edited_areas[:, c]], axis=1)  # (N, 2)
        area[name] = {
            "unedited": float(pairs[:, 0].mean()), "edited": float(pairs[:, 1].mean()),
            "relative_change": _ci(_relative, pairs, num_bootstrap, confidence, seed),
            "difference": _ci("mean", pairs[:, 1:] - pairs[:, :1], num_bootstrap, confidence, seed),
        }
    plausible = np.stack([np.asarray(unedited_plausible, float), np.asarray(edited_plausible, float)], axis=1)
    return {
        "n": int(len(plausible)),
        "area": area,
        "plausibility": {"unedited": float(plausible[:, 0].mean()), "edited": float(plausible[:, 1].mean()),
                         "difference": _ci("mean", plausible[:, 1:] - plausible[:, :1], num_bootstrap,
                                           confidence, seed)},
    }


def _percent(values: dict) -> str:
    if values["value"] != values["value"]:  # NaN: class absent from the unedited samples
        return "–"
    return f"{values['value']:+.1%} [{values['low']:+.1%}, {values['high']:+.1%}]"


def edit_effects_markdown(edits: dict, class_names: Sequence[str], confidence: float) -> str:
    """A table: one row per edit; plausibility change and relative area change per class."""
    conf = int(round(confidence * 100))
    header = ["edit", "registers", "plausibility (unedited → edited, Δ)", *[f"{n} area Δ" for n in class_names[1:]],
              "specificity (off / target)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, edit in edits.items():
        if "skipped" in edit:
            lines.append(f"| {name} | skipped: {edit['skipped']} |" + " |" * (len(header) - 2))
            continue
        plaus = edit["effect"]["plausibility"]
        delta = plaus["difference"]
        row = [name, "; ".join(f"{', '.join(r['classes'])}: {r['registers']}" for r in edit["resolved"]) or "by index",
               f"{plaus['unedited']:.3f} → {plaus['edited']:.3f} ({delta['value']:+.3f} [{delta['low']:+.3f}, "
               f"{delta['high']:+.3f}])",
               *[_percent(edit["effect"]["area"][n]["relative_change"]) for n in class_names[1:]]]
        spec = edit.get("specificity")
        row.append(f"{spec['value']:.2f} [{spec['low']:.2f}, {spec['high']:.2f}]" if spec else "–")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join([f"Register edits of `{next(iter(edits.values()))['generator']}`: same seeds edited vs "
                      f"unedited, segmenter masks; relative area change per class and plausibility change, "
                      f"[{conf} % paired bootstrap interval]; specificity: mean off-target |area change| / "
                      f"mean target |area change| (0: only the target moves; lower is better).", "", *lines, ""])
