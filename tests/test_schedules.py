import json
import math

import pytest

from kbk.errors import SettingError
from kbk.training.schedules import EXP_FLOOR_RATIO, KoopmanWeightSchedule, ScheduleConfig


def test_linear_reproduces_the_seed_colab_table():
    # 5 epochs counted from 0, Koopman from epoch 3, max 0.1: the run logged 0, 0, 0, 0, 0.05.
    s = KoopmanWeightSchedule("linear", min_weight=0.0, max_weight=0.1, warmup=3, total=5, unit="epoch")
    assert [s.weight(e) for e in range(5)] == pytest.approx([0, 0, 0, 0, 0.05], abs=1e-15)
    assert [s.active(e) for e in range(5)] == [False, False, False, True, True]
    assert [s.phase(e) for e in range(5)] == ["gradient_warmup"] * 3 + ["hybrid"] * 2


def test_linear_also_gives_the_seed_test_progression_for_one_guessed_setting():
    s = KoopmanWeightSchedule("linear", max_weight=0.5, warmup=2, total=10, unit="epoch")
    assert [s.weight(e) for e in (2, 5, 10)] == pytest.approx([0.0, 0.1875, 0.5], abs=1e-15)


def test_linear_closed_form_with_fractional_progress_and_positive_min():
    s = KoopmanWeightSchedule("linear", min_weight=0.02, max_weight=0.3, warmup=1.5, total=7.5, unit="epoch")
    assert s.weight(1.4999) == 0.0  # off before warm-up, whatever min_weight is
    assert s.weight(1.5) == pytest.approx(0.02)
    for p in (1.5, 2.0, 3.3, 6.0, 7.4999):
        assert s.weight(p) == pytest.approx(0.02 + 0.28 * (p - 1.5) / 6.0, rel=1e-12)
    assert s.weight(7.5) == s.weight(100.0) == 0.3


def test_continuous_progress_ramps_within_epochs_and_reaches_max_at_the_end():
    s = KoopmanWeightSchedule("linear", max_weight=0.1, warmup=3, total=5, unit="epoch")
    n = 498  # the Colab run's batches per epoch
    means = [sum(s.weight(e + b / n) for b in range(n)) / n for e in (3, 4)]  # progress epoch + batch / batches
    assert means == pytest.approx([0.025, 0.075], abs=1e-4)
    assert s.weight(4 + (n - 1) / n) == pytest.approx(0.1 * (1 + (n - 1) / n) / 2)


@pytest.mark.parametrize("min_weight", [0.0, 1e-5])
def test_exponential_from_zero_or_tiny_min_starts_at_floor_monotone_convex_below_linear(min_weight):
    hi = 0.2
    s = KoopmanWeightSchedule("exponential", min_weight=min_weight, max_weight=hi, warmup=2, total=12, unit="epoch")
    floor = hi * EXP_FLOOR_RATIO  # 1e-5 < max/1000, so the floor wins in both cases
    assert s.weight(2) == pytest.approx(floor, rel=1e-12)
    assert s.weight(12 - 1e-9) == pytest.approx(hi, rel=1e-8)  # continuous into the plateau
    assert s.weight(12) == hi
    rs = [i / 1000 for i in range(1001)]
    w = [s.weight(2 + 10 * r) for r in rs]
    assert all(b > a for a, b in zip(w, w[1:], strict=False))
    assert all(w[i - 1] - 2 * w[i] + w[i + 1] >= -1e-15 for i in range(1, 1000))  # convex
    lin = KoopmanWeightSchedule("linear", min_weight=min_weight, max_weight=hi, warmup=2, total=12, unit="epoch")
    assert all(s.weight(2 + 10 * r) < lin.weight(2 + 10 * r) for r in rs[10:-1])  # slower than linear early
    # Half-way is the geometric mean of floor and max.
    assert s.weight(2 + 10 * 0.5) == pytest.approx(hi * math.sqrt(EXP_FLOOR_RATIO), rel=1e-12)


def test_exponential_with_positive_min_is_geometric_between_min_and_max():
    s = KoopmanWeightSchedule("exponential", min_weight=0.01, max_weight=0.16, warmup=0, total=4, unit="step")
    assert [s.weight(p) for p in (0, 1, 2, 3, 4)] == pytest.approx([0.01, 0.02, 0.04, 0.08, 0.16], rel=1e-12)


def test_exponential_and_step_with_zero_max_stay_zero():
    for kind in ("exponential", "step", "linear", "constant"):
        s = KoopmanWeightSchedule(kind, min_weight=0.0, max_weight=0.0, warmup=1, total=3, unit="epoch")
        assert all(s.weight(p) == 0.0 for p in (0, 1, 1.5, 2.9, 3, 9))


def test_step_thirds_at_exact_quarter_boundaries():
    s = KoopmanWeightSchedule("step", min_weight=0.03, max_weight=0.09, warmup=3, total=5, unit="epoch")
    third = (0.09 - 0.03) / 3
    eps = 1e-9
    assert s.weight(3) == s.weight(3.5 - eps) == 0.03
    assert s.weight(3.5) == s.weight(4 - eps) == pytest.approx(0.03 + third)
    assert s.weight(4) == s.weight(4.5 - eps) == pytest.approx(0.03 + 2 * third)
    assert s.weight(4.5) == s.weight(5) == s.weight(50) == pytest.approx(0.09)
    # In steps: 400-step ramp after a 100-step warm-up, boundaries at 200, 300, 400.
    st = KoopmanWeightSchedule("step", min_weight=0.0, max_weight=0.3, warmup=100, total=500, unit="step")
    assert [st.weight(p) for p in (99, 100, 199, 200, 299, 300, 399, 400)] == pytest.approx(
        [0, 0, 0, 0.1, 0.1, 0.2, 0.2, 0.3]
    )


def test_constant_is_max_from_warmup_on():
    s = KoopmanWeightSchedule("constant", min_weight=0.01, max_weight=0.1, warmup=2, total=5, unit="epoch")
    assert [s.weight(p) for p in (0, 1.99, 2, 3.7, 5, 9)] == [0, 0, 0.1, 0.1, 0.1, 0.1]


def test_phases_and_degenerate_spans():
    s = KoopmanWeightSchedule("linear", warmup=2, total=4, unit="epoch")
    phases = [s.phase(p) for p in (0, 1.999, 2, 3.999, 4, 10)]
    assert phases == ["gradient_warmup"] * 2 + ["hybrid"] * 2 + ["koopman_dominant"] * 2
    same = KoopmanWeightSchedule("exponential", max_weight=0.1, warmup=3, total=3, unit="epoch")  # no ramp: 0 then max
    assert (same.weight(2.9), same.weight(3), same.phase(3)) == (0.0, 0.1, "koopman_dominant")
    no_warmup = KoopmanWeightSchedule("linear", max_weight=0.1, warmup=0, total=10, unit="epoch")
    assert no_warmup.active(0) and no_warmup.phase(0) == "hybrid" and no_warmup.weight(0) == 0.0


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"type": "cosine"}, r"^type='cosine' is not allowed: it must be one of linear, exponential, step, constant$"),
        ({"unit": "batch"}, r"^unit='batch' is not allowed: it must be one of fraction, epoch, step$"),
        ({"unit": "fraction"}, r"^unit='fraction' is not allowed: it must be epoch or step \(resolve a fraction"),
        ({"total": None}, r"^total=None is not allowed: it must be a number of epochs or steps"),
        ({"min_weight": -0.1}, r"^min_weight=-0\.1 is not allowed: it must be a finite number >= 0$"),
        ({"max_weight": -1}, r"^max_weight=-1 is not allowed: it must be a finite number >= 0$"),
        ({"min_weight": 0.5, "max_weight": 0.1}, r"^min_weight=0\.5 is not allowed: it must be <= max_weight=0\.1$"),
        ({"warmup": 6, "total": 5}, r"^warmup=6 is not allowed: it must be <= total=5 \(epochs\)"),
        ({"warmup": 0, "total": 0}, r"^total=0 is not allowed: it must be a finite number > 0"),
        ({"warmup": -1}, r"^warmup=-1 is not allowed: it must be a finite number >= 0$"),
        ({"max_weight": float("nan")}, r"^max_weight=nan is not allowed: it must be a finite number"),
        ({"total": "ten"}, r"^total='ten' is not allowed: it must be a finite number > 0"),
    ],
)
def test_invalid_arguments_name_argument_value_and_what_is_allowed(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern) as info:
        KoopmanWeightSchedule(**{"warmup": 3, "total": 5, "unit": "epoch", **kwargs})
    assert isinstance(info.value, SettingError)  # kbk.config names the full key (schedule.warmup) from it


def test_a_config_resolves_against_the_run_fraction_to_steps_and_null_total_to_the_end():
    config = ScheduleConfig("linear", 0.0, 0.1, warmup=0.3, total=None, unit="fraction")
    assert config.resolve(total_steps=95, epochs=5) == KoopmanWeightSchedule(
        "linear", 0.0, 0.1, warmup=28, total=95, unit="step")  # floor(0.3 · 95)
    assert ScheduleConfig(warmup=0.0, total=0.001).resolve(95, 5).total == 1  # at least one step
    epochs = ScheduleConfig("step", 0.0, 0.1, warmup=3, total=None, unit="epoch").resolve(95, 5)
    assert (epochs.warmup, epochs.total, epochs.unit) == (3.0, 5.0, "epoch")
    with pytest.raises(SettingError, match=r"^warmup=0\.5 is not allowed: it must be <= total=0\.4"):
        ScheduleConfig(warmup=0.5, total=0.4)


def test_state_dict_round_trip_and_load_validates():
    s = KoopmanWeightSchedule("step", min_weight=0.01, max_weight=0.2, warmup=50, total=450, unit="step")
    d = json.loads(json.dumps(s.state_dict()))  # plain JSON values, so it fits in any checkpoint
    assert KoopmanWeightSchedule.from_dict(d) == s
    t = KoopmanWeightSchedule(unit="epoch", total=1)
    t.load_state_dict(d)
    assert t == s and [t.weight(p) for p in range(0, 500, 7)] == [s.weight(p) for p in range(0, 500, 7)]
    with pytest.raises(ValueError, match=r"^warmup=1000 is not allowed: it must be <= total=450\.0"):
        t.load_state_dict({**d, "warmup": 1000})
    assert t == s  # a rejected load leaves the schedule as it was
    with pytest.raises(ValueError, match=r"unknown schedule keys \['koopman_start_epoch'\]"):
        KoopmanWeightSchedule.from_dict({"koopman_start_epoch": 3})
