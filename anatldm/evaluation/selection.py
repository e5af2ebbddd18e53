"""Choosing each arm's guidance on selection seeds (claim v2; no Lightning).

The selection evaluation (``configs/claim/select_v2.yaml``) samples every arm's seed-0 model once
per guidance it may use, each named ``<arm>@<kind>_<weight>``, on sampling seeds disjoint from
the evaluation's. :func:`choose_guidance` keeps, per arm, the guidance with the highest pooled
plausibility rate (ties: the lower weight) and writes it into the evaluation config, giving each
training seed of an autoguided arm its own early checkpoint as the guide (``_seed0/`` ->
``_seed<s>/`` in the guide's path).
"""

from __future__ import annotations

from typing import Any

from anatldm.errors import ConfigError

__all__ = ["choose_guidance"]


def choose_guidance(selection: dict[str, Any], report: dict[str, Any], evaluation: dict[str, Any],
                    seeds: list[int]) -> tuple[dict[str, Any], dict[str, dict]]:
    """The evaluation config with each arm's chosen guidance, and the choice per arm.

    Args:
        selection: the selection config's ``model.init_args`` (``generators``, ``guidance``).
        report: the selection's ``report.json``.
        evaluation: the evaluation config (whole YAML); a copy is returned with
            ``model.init_args.guidance`` set for every arm of the selection.
        seeds: the evaluation's training seeds, in the order of its checkpoint lists.
    """
    candidates: dict[str, list[tuple[float, float, str, dict]]] = {}
    for name, guidance in (selection.get("guidance") or {}).items():
        arm = name.split("@")[0]
        if name not in report["arms"]:
            raise ConfigError(f"selection report: no arm '{name}' (was the report written by this selection config?)")
        rate = report["arms"][name]["pooled"]["plausibility_rate"]["value"]
        candidates.setdefault(arm, []).append((rate, float(guidance.get("weight", 1.0)), name, guidance))
    config = {**evaluation, "model": {**evaluation["model"], "init_args": dict(evaluation["model"]["init_args"])}}
    args = config["model"]["init_args"]
    missing = sorted(set(candidates) - set(args["generators"]))
    if missing:
        raise ConfigError(f"model.generators of the evaluation lacks the selected arms {missing}")
    guidance_out, chosen = {}, {}
    for arm, options in candidates.items():
        rate, _, name, guidance = sorted(options, key=lambda option: (-option[0], option[1]))[0]
        chosen[arm] = {"choice": name, "plausibility_rate": rate, "candidates": {o[2]: o[0] for o in options}}
        if guidance.get("kind") == "autoguidance":
            guidance_out[arm] = [{**guidance, "guide": guidance["guide"].replace("_seed0/", f"_seed{s}/")}
                                 for s in seeds]
        else:
            guidance_out[arm] = dict(guidance)
    args["guidance"] = guidance_out
    return config, chosen
