"""Statistics per model, pooled per arm and paired per seed pair, on synthetic records with a known effect."""

from __future__ import annotations

import numpy as np
import pytest

from anatldm.evaluation.statistics import (
    METRICS,
    ModelRecord,
    RealRecord,
    Statistics,
    violation_rates,
)

PLAUSIBILITY = METRICS["plausibility_rate"]
N = 400
REAL = RealRecord(areas=np.zeros((10, 2)), features=np.zeros((10, 3)))
STATS = Statistics(num_bootstrap=300, num_bootstrap_costly=20)


def _record(passed: np.ndarray) -> ModelRecord:
    passed = np.asarray(passed, dtype=np.float64)
    return ModelRecord(passed=passed, violations={"liver/area": 1.0 - passed, "cooccurrence": np.zeros_like(passed)},
                       areas=np.zeros((len(passed), 2)), features=np.zeros((len(passed), 3)),
                       memorisation=np.ones(len(passed)), diversity=np.ones(4))


def _exact(rate: float, shift: int = 0) -> ModelRecord:
    """Sample ``i`` passes for the first ``rate * N`` seeds (rolled by ``shift``): the rate exactly."""
    return _record(np.roll(np.arange(N) < rate * N, shift))


def _paired(rng: np.random.Generator, base_rate: float, extra: float) -> tuple[ModelRecord, ModelRecord]:
    """A baseline and a model sampled with the same seeds: the model passes wherever the
    baseline does, and on a further ``extra`` share of the seeds the baseline fails."""
    base = rng.random(N) < base_rate
    model = base | (rng.random(N) < extra)
    return _record(model), _record(base)


def test_one_model_interval_holds_its_rate() -> None:
    result = STATS.model(PLAUSIBILITY, _exact(0.5), REAL)
    assert result["value"] == 0.5 and result["n"] == N
    assert 0.44 < result["low"] < 0.5 < result["high"] < 0.56  # binomial sd at n = 400: 0.025


def test_paired_change_covers_a_known_effect_and_excludes_zero() -> None:
    rng = np.random.default_rng(0)
    model, base = _paired(rng, 0.4, 0.25)  # expected relative gain 0.6 * 0.25 / 0.4 = 0.375
    change = STATS.changes(PLAUSIBILITY, [model], [base], REAL)
    assert change["relative"] and len(change["pairs"]) == 1
    assert change["low"] <= 0.375 <= change["high"] and change["low"] > 0
    point = (model.passed.mean() - base.passed.mean()) / base.passed.mean()
    assert change["value"] == pytest.approx(point)
    absolute = STATS.changes(PLAUSIBILITY, [model], [base], REAL, relative=False)
    assert absolute["value"] == pytest.approx(model.passed.mean() - base.passed.mean())
    assert absolute["low"] <= 0.15 <= absolute["high"] and not absolute["relative"]


def test_zero_effect_interval_includes_zero() -> None:
    rolled = STATS.changes(PLAUSIBILITY, [_exact(0.5, shift=7)], [_exact(0.5)], REAL)  # same rate, other seeds
    assert rolled["value"] == 0.0 and rolled["low"] < 0 < rolled["high"]
    rng = np.random.default_rng(1)
    independent = STATS.changes(PLAUSIBILITY, [_record(rng.random(N) < 0.5)], [_record(rng.random(N) < 0.5)], REAL)
    assert independent["low"] < 0 < independent["high"]


def test_pooled_arm_is_the_mean_over_seeds_with_the_seed_spread_in_its_interval() -> None:
    pooled = STATS.pooled(PLAUSIBILITY, [_exact(0.3), _exact(0.5), _exact(0.7)], REAL)
    assert pooled["value"] == pytest.approx(0.5) and pooled["num_models"] == 3
    one = STATS.model(PLAUSIBILITY, _exact(0.5), REAL)
    assert pooled["low"] < 0.4 and pooled["high"] > 0.6  # seeds disagree by +-0.2: far wider than one model's
    assert pooled["high"] - pooled["low"] > 3 * (one["high"] - one["low"])
    agreeing = STATS.pooled(PLAUSIBILITY, [_exact(0.5), _exact(0.5, shift=3), _exact(0.5, shift=11)], REAL)
    assert agreeing["high"] - agreeing["low"] < pooled["high"] - pooled["low"]


def test_every_seed_pair_difference_is_reported() -> None:
    change = STATS.changes(PLAUSIBILITY, [_exact(0.5), _exact(0.6)], [_exact(0.4), _exact(0.4)], REAL)
    assert [pair["value"] for pair in change["pairs"]] == pytest.approx([0.25, 0.5])  # 0.1 / 0.4, 0.2 / 0.4
    assert change["value"] == pytest.approx((0.55 - 0.4) / 0.4)  # pooled: the change of the arms' means
    for pair in change["pairs"]:
        assert pair["low"] <= pair["value"] <= pair["high"]
    absolute = STATS.changes(PLAUSIBILITY, [_exact(0.5), _exact(0.6)], [_exact(0.4), _exact(0.4)], REAL,
                             relative=False)
    assert [pair["value"] for pair in absolute["pairs"]] == pytest.approx([0.1, 0.2])


def test_rate_resamples_and_violation_rates() -> None:
    assert STATS.rate(np.array([1.0, 1.0, 0.0, 0.0]))["value"] == 0.5
    assert STATS.resamples(PLAUSIBILITY) == 300 and STATS.resamples(METRICS["fid"]) == 20
    assert STATS.resamples(METRICS["area_w1"]) == 300
    assert violation_rates(_exact(0.25)) == {"liver/area": 0.75, "cooccurrence": 0.0}


def test_availability_of_optional_fields() -> None:
    consistency = METRICS["self_consistency_dice"]
    record = _exact(0.5)
    assert not STATS.available(consistency, [record])  # no head: no self-consistency
    record.consistency = np.full(N, 0.8)
    assert STATS.available(consistency, [record]) and not STATS.available(consistency, [record, _exact(0.5)])
    assert STATS.model(consistency, record, REAL)["value"] == pytest.approx(0.8)


def test_real_floor_of_identical_sets_is_zero() -> None:
    features = np.random.default_rng(2).normal(size=(60, 3))
    floor = Statistics(num_bootstrap=50, num_bootstrap_costly=10, kid_subset_size=20, kid_subsets=2).real_floor(
        features, RealRecord(areas=np.zeros((60, 2)), features=features))
    assert floor["fid"]["value"] == pytest.approx(0.0, abs=1e-6) and floor["fid"]["n"] == 60
    assert floor["kid"]["low"] <= 0.0 <= floor["kid"]["high"]  # unbiased KID: 0 in expectation, either sign
