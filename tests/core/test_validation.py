"""Hyperparameter validation and the dtype policy: the error text is a tested contract."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import lion_core as lc


@pytest.mark.parametrize("value", [-1e-3, math.nan, math.inf, -math.inf])
def test_bad_learning_rate_values(value):
    expected = f"Invalid `lr`: expected 0 <= lr < inf. Received: lr={value!r}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        lc.check_learning_rate(value)


@pytest.mark.parametrize("value", ["0.1", b"0.1", True, None, [0.1], (0.1,), {"lr": 0.1}, 1j])
def test_bad_learning_rate_types(value):
    with pytest.raises(TypeError, match=r"^Invalid `learning_rate`: expected a real number, a schedule"):
        lc.check_learning_rate(value, "learning_rate")


def test_error_names_the_type_received():
    with pytest.raises(TypeError, match=re.escape("Received: lr='0.1' of type str")):
        lc.check_learning_rate("0.1")


@pytest.mark.parametrize("value", [0.0, 1e-4, 3, np.float32(0.1), np.array(0.5), np.array([0.5])])
def test_good_learning_rates_are_returned_unchanged(value):
    assert lc.check_learning_rate(value) is value


def test_schedules_and_callables_pass_through():
    def schedule(step):
        return -1.0  # not evaluated at construction: the host calls it when it steps

    assert lc.check_learning_rate(schedule) is schedule
    assert lc.check_beta(schedule, "beta_1") is schedule


def test_multi_element_arrays_are_type_errors():
    with pytest.raises(TypeError, match=r"\(one element\)"):
        lc.check_learning_rate(np.array([0.1, 0.2]))


def test_concrete_tensors_are_checked():
    torch = pytest.importorskip("torch")
    assert lc.check_learning_rate(torch.tensor(0.01)) is not None
    with pytest.raises(ValueError, match=re.escape("Received: lr=tensor(-0.0100)")):
        lc.check_learning_rate(torch.tensor(-0.01))


def test_traced_values_pass_through():
    jax = pytest.importorskip("jax")
    seen = []

    @jax.jit
    def f(lr):
        seen.append(lc.check_learning_rate(lr, "learning_rate"))
        return lr * 2

    assert float(f(-1.0)) == -2.0  # a tracer cannot be checked; the host owns traced values
    assert len(seen) == 1


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, math.nan, math.inf])
def test_bad_beta(value):
    expected = f"Invalid `beta_2`: expected 0 <= beta_2 < 1. Received: beta_2={value!r}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        lc.check_beta(value, "beta_2")


@pytest.mark.parametrize("value", [0.0, 0.5, 0.999999])
def test_good_beta(value):
    assert lc.check_beta(value, "b1") == value


@pytest.mark.parametrize("index, betas", [(0, (1.0, 0.99)), (1, (0.9, -0.5)), (1, [0.9, math.nan])])
def test_betas_are_named_by_index(index, betas):
    value = betas[index]
    expected = f"Invalid `betas[{index}]`: expected 0 <= betas[{index}] < 1. Received: betas[{index}]={value!r}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        lc.check_betas(betas)


@pytest.mark.parametrize("betas", [(0.9, 0.99, 0.999), (0.9,), 0.9, "ab", None])
def test_betas_must_be_a_pair(betas):
    with pytest.raises(TypeError, match=re.escape("Invalid `betas`: expected a pair (beta1, beta2)")):
        lc.check_betas(betas)


@pytest.mark.parametrize("value", [-1e-8, math.nan, math.inf])
def test_bad_weight_decay(value):
    expected = f"Invalid `weight_decay`: expected 0 <= weight_decay < inf. Received: weight_decay={value!r}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        lc.check_weight_decay(value)


@pytest.mark.parametrize("value", [0.0, -1.0, math.inf, math.nan])
def test_bad_max_lr(value):
    with pytest.raises(ValueError, match=re.escape(f"expected 0 < max_lr < inf. Received: max_lr={value!r}")):
        lc.check_decoupling(True, value)


def test_max_lr_without_decouple_lr_is_refused():
    with pytest.raises(RuntimeError, match=re.escape("`max_lr` is only used with `decouple_lr=True`")):
        lc.check_decoupling(False, 1e-3)
    lc.check_decoupling(True, None)  # the host supplies the group's own peak
    lc.check_decoupling(False, None)


@pytest.mark.parametrize("value", [1, 0, None, "yes"])
def test_variant_switches_are_strict_booleans(value):
    with pytest.raises(TypeError, match=re.escape("Invalid `cautious`: expected True or False.")):
        lc.check_bool(value, "cautious")


@pytest.mark.parametrize("value", [1, "auto"])
def test_implementation_flags_are_tri_state(value):
    with pytest.raises(TypeError, match=re.escape("Invalid `fused`: expected True, False or None")):
        lc.check_optional_bool(value, "fused")
    assert lc.check_optional_bool(None, "fused") is None


# --- momentum dtype ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "param, requested, expected",
    [
        ("float32", None, "float32"),
        ("float64", None, "float64"),
        ("bfloat16", None, "bfloat16"),  # the host's convention: state in the parameter's dtype
        ("float16", None, "float16"),
        ("bfloat16", "float32", "float32"),  # float32 momentum for low precision: one keyword away
        ("float16", "float32", "float32"),
        ("float32", "bfloat16", "bfloat16"),
        ("bfloat16", "bfloat16", "bfloat16"),
        ("complex64", None, "complex64"),
    ],
)
def test_momentum_dtype_policy(param, requested, expected):
    assert lc.momentum_dtype(param, requested) == expected


def test_momentum_dtype_rejects_non_float_names():
    with pytest.raises(ValueError, match=re.escape("Invalid `momentum_dtype`: expected None or one of")):
        lc.momentum_dtype("float32", "int8")
    with pytest.raises(TypeError, match=re.escape("Invalid `momentum_dtype`")):
        lc.momentum_dtype("float32", np.float32)
    with pytest.raises(RuntimeError, match="cannot be set for complex parameters"):
        lc.momentum_dtype("complex64", "float32")


@pytest.mark.parametrize(
    "dtypes, expected",
    [
        (("bfloat16", "float32"), "float32"),
        (("float16", "float16"), "float32"),
        (("float64", "float32"), "float64"),
        (("complex128",), "float64"),
    ],
)
def test_compute_dtype_is_at_least_float32(dtypes, expected):
    assert lc.compute_dtype(*dtypes) == expected


# --- from AdamW ---------------------------------------------------------------------------------


def test_from_adamw_keeps_the_decay_strength():
    settings = lc.from_adamw(lr=1e-3, weight_decay=0.1, factor=10)
    assert settings == lc.LionSettings(lr=1e-4, beta1=0.9, beta2=0.99, weight_decay=1.0)
    assert math.isclose(settings.lr * settings.weight_decay, 1e-3 * 0.1)


def test_from_adamw_suggests_the_stable_betas_for_a_lowered_beta2():
    assert lc.from_adamw(lr=3e-4, betas=(0.9, 0.95))[1:3] == lc.STABLE_BETAS
    assert lc.from_adamw(lr=3e-4, betas=(0.9, 0.999))[1:3] == (0.9, 0.99)


def test_from_adamw_validates():
    with pytest.raises(ValueError, match=re.escape("Invalid `factor`: expected 1 <= factor <= 100. Received: factor=0.5")):
        lc.from_adamw(lr=1e-3, factor=0.5)
    with pytest.raises(TypeError, match=re.escape("Invalid `factor`: expected a real number")):
        lc.from_adamw(lr=1e-3, factor="3")
    with pytest.raises(ValueError, match=re.escape("Invalid `lr`")):
        lc.from_adamw(lr=-1.0)
    with pytest.raises(ValueError, match=re.escape("Invalid `betas[1]`")):
        lc.from_adamw(lr=1e-3, betas=(0.9, 1.0))


# --- fully decoupled weight decay: the peak learning rate ----------------------------------------


def test_resolve_max_lr():
    assert lc.resolve_max_lr(None, 3e-4) == 3e-4
    assert lc.resolve_max_lr(1e-3, lambda step: 1e-4) == 1e-3
    with pytest.raises(RuntimeError, match=re.escape("`max_lr` is required with `decouple_lr=True` when `learning_rate` is a schedule")):
        lc.resolve_max_lr(None, lambda step: 1e-4)
    with pytest.raises(ValueError, match=re.escape("Invalid `lr`: expected 0 < lr < inf with `decouple_lr=True`")):
        lc.resolve_max_lr(None, 0.0, lr_name="lr")


def test_missing_dependency_names_the_remedy():
    error = lc.missing_dependency("Triton (pip install triton)", "pass fused=False")
    assert isinstance(error, ImportError)
    assert str(error) == "install Triton (pip install triton) or pass fused=False"
