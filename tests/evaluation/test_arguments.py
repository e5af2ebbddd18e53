"""The eager checks of ``EvaluationTask``'s arguments and its model names, without Lightning or files."""

from __future__ import annotations

from pathlib import Path

import pytest

from anatldm.errors import ConfigError
from anatldm.evaluation.arguments import (
    check_evaluation_arguments,
    collect_models,
    model_names,
    module_key,
)
from anatldm.models.registers import RegisterEdit


def _arguments(tmp_path: Path, **overrides) -> dict:
    return {"generators": {"register": ["r0.ckpt", "r1.ckpt"], "baseline": ["b0.ckpt", "b1.ckpt"]},
            "baseline": "baseline", "training_seeds": None, "early_checkpoints": None, "num_samples": 8,
            "num_inference_steps": 2, "sample_batch_size": 4, "calibration_subjects": 0, "claim": None,
            "num_bootstrap": 10, "num_bootstrap_costly": 5, "confidence": 0.95, "output_dir": str(tmp_path / "out"),
            "edits": None, "edit_generator": None, "edit_samples": None, "rules": None, **overrides}


def test_valid_arguments_return_the_edits_as_register_edits(tmp_path: Path) -> None:
    edits = check_evaluation_arguments(**_arguments(tmp_path, edits={"off": [{"operation": "ablate", "registers": [0]}]}))
    assert list(edits) == ["off"] and isinstance(edits["off"][0], RegisterEdit) and edits["off"][0].registers == [0]
    assert check_evaluation_arguments(**_arguments(tmp_path)) == {}
    assert not (tmp_path / "out").exists()  # checked, not created


@pytest.mark.parametrize("overrides, message", [
    ({"generators": {}}, "model.generators is empty"),
    ({"generators": {"register": [], "baseline": ["b.ckpt"]}}, "model.generators: every arm needs at least one"),
    ({"baseline": "nope"}, "model.baseline 'nope' is not one of the generators ['baseline', 'register']"),
    ({"generators": {"register": ["r0.ckpt", "r1.ckpt"], "baseline": "b.ckpt"}}, "one checkpoint per training seed"),
    ({"training_seeds": [0, 1, 2]}, "model.training_seeds has 3 entries for 2 checkpoints per arm"),
    ({"early_checkpoints": {"other": "e.ckpt"}}, "model.early_checkpoints: 'other' is not one of the generators"),
    ({"early_checkpoints": {"register": ["a", "b", "c"]}}, "model.early_checkpoints.register: more early"),
    ({"claim": {"arm": "baseline"}}, "model.claim.arm 'baseline' must be a generator other than model.baseline"),
    ({"num_inference_steps": 0}, "model.num_inference_steps must be at least 1, got 0"),
    ({"num_bootstrap_costly": 0}, "model.num_bootstrap_costly must be at least 1"),
    ({"calibration_subjects": -1}, "model.calibration_subjects must be >= 0, got -1"),
    ({"edit_generator": "x"}, "model.edit_generator 'x' is not one of the generators"),
    ({"edit_samples": 0}, "model.edit_samples must be at least 1, got 0"),
    ({"confidence": 1.0}, "model.confidence must lie in (0, 1), got 1.0"),
])
def test_every_bad_argument_names_its_key(tmp_path: Path, overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        check_evaluation_arguments(**_arguments(tmp_path, **overrides))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_an_unwritable_output_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="model.output_dir: .* is a file, not a folder"):
        check_evaluation_arguments(**_arguments(tmp_path, output_dir=str(tmp_path / "file" / "out")))


def test_model_names_keys_and_collection() -> None:
    generators = {"register": ["r0.ckpt", "r1.ckpt"], "baseline": "b.ckpt"}
    assert model_names(generators, [3, 4]) == {"register": ["register/seed3", "register/seed4"],
                                               "baseline": ["baseline"]}
    assert model_names(generators, None)["register"] == ["register/seed0", "register/seed1"]
    assert module_key("register/seed3@early") == "register__seed3___early" and module_key("a.b") == "a_b"
    arms = model_names(generators, [3, 4])
    models, checkpoints, early = collect_models(generators, {"register": "e.ckpt"}, arms,
                                                lambda path, key: (path, key))
    assert models["register/seed4"] == ("r1.ckpt", "model.generators.register[1]")
    assert models["baseline"] == ("b.ckpt", "model.generators.baseline")
    assert models["register/seed3@early"] == ("e.ckpt", "model.early_checkpoints.register")
    assert early == {"register": ["register/seed3@early"]} and checkpoints["register/seed3"] == "r0.ckpt"
