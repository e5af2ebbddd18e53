"""The register-edit arm of the evaluation protocol (no Lightning): every edit measured against
the unedited samples of the same seeds."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from anatldm.evaluation.protocol import EvaluationProtocol
from anatldm.interpret import NoRegisterForClassError
from anatldm.interpret.effects import edit_effect, edit_specificity
from anatldm.models.registers import RegisterEdit
from anatldm.pipelines import AnatomicalLDMPipeline

__all__ = ["evaluate_edits"]

logger = logging.getLogger(__name__)


def evaluate_edits(protocol: EvaluationProtocol, generator: AnatomicalLDMPipeline, generator_name: str,
                   edits: dict[str, list[RegisterEdit]], seeds: Sequence[int], class_names: list[str],
                   num_bootstrap: int, confidence: float, seed: int) -> tuple[dict, dict]:
    """Every edit of ``edits`` on ``generator`` against its unedited samples of the same ``seeds``:
    the results per edit and the kept samples (``"unedited"`` and one entry per edit)."""
    logger.info("register edits of %s: %d samples each", generator_name, len(seeds))
    base_areas, base_plausible, *base_kept = protocol.segmented_samples(generator, seeds,
                                                                        generator.denoiser.registers.tokens)
    results, kept = {}, {"unedited": base_kept}
    for name, edit_list in edits.items():
        try:
            edited = generator.edit_registers(list(edit_list), "model.register_edits")
        except NoRegisterForClassError as err:  # the trained model has no register for that class
            logger.warning("edit %s skipped: %s", name, err)
            results[name] = {"generator": generator_name, "edits": [dataclasses.asdict(e) for e in edit_list],
                             "skipped": str(err)}
            continue
        areas, plausible, *kept[name] = protocol.segmented_samples(generator, seeds, edited.tokens)
        effect = edit_effect(base_areas.numpy(), areas.numpy(), base_plausible.numpy(), plausible.numpy(),
                             class_names, num_bootstrap, confidence, seed)
        results[name] = {"generator": generator_name,
                         "edits": [dataclasses.asdict(edit) for edit in edit_list],
                         "resolved": list(edited.applied), "effect": effect}
        targets = list(dict.fromkeys(c for edit in edit_list for c in edit.classes or []))
        if targets:  # off-target / target |area change| (lower is more specific)
            results[name]["specificity"] = edit_specificity(base_areas.numpy(), areas.numpy(), class_names,
                                                            targets, num_bootstrap, confidence, seed)
    return results, kept
