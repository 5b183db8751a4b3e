"""The policies lion_core decides once for every adapter: the peak learning rate of fully decoupled
weight decay, real-valued hyperparameters, and the momentum dtype default."""

from __future__ import annotations

import re

import numpy as np
import pytest

import lion_core as lc


def _message(text: str) -> str:
    return "^" + re.escape(text) + "$"


@pytest.mark.parametrize("max_lr, lr, expected", [(1e-3, 0.0, 1e-3), (2e-3, 1e-3, 2e-3), (None, 3e-4, 3e-4)])
def test_resolve_max_lr_returns_the_peak(max_lr, lr, expected):
    assert lc.resolve_max_lr(max_lr, lr) == expected


@pytest.mark.parametrize("name", ["lr", "learning_rate"])
def test_resolve_max_lr_names_the_learning_rate_the_user_passed_and_what_to_pass(name):
    expected = (
        f"Invalid `{name}`: expected 0 < {name} < inf with `decouple_lr=True` and no `max_lr` (the decay is "
        f"divided by the peak learning rate, which then defaults to {name}); to start from {name}=0.0, pass "
        f"max_lr=<the peak learning rate>. Received: {name}=0.0"
    )
    with pytest.raises(ValueError, match=_message(expected)):
        lc.resolve_max_lr(None, 0.0, lr_name=name)


@pytest.mark.parametrize("max_lr", [0.0, -1.0, float("inf"), float("nan")])
def test_resolve_max_lr_refuses_a_given_max_lr_out_of_range(max_lr):
    expected = f"Invalid `max_lr`: expected 0 < max_lr < inf. Received: max_lr={max_lr!r}"
    with pytest.raises(ValueError, match=_message(expected)):
        lc.resolve_max_lr(max_lr, 1e-3)


@pytest.mark.parametrize("schedule", [lambda step: 1e-3, np.array(1e-3)], ids=["callable", "array"])
def test_resolve_max_lr_requires_max_lr_with_a_schedule(schedule):
    expected = (
        "`max_lr` is required with `decouple_lr=True` when `learning_rate` is a schedule or an array, whose "
        f"peak cannot be read at construction: pass max_lr=<the peak learning rate>. "
        f"Received: learning_rate={schedule!r}, max_lr=None"
    )
    with pytest.raises(RuntimeError, match=_message(expected)):
        lc.resolve_max_lr(None, schedule)


@pytest.mark.parametrize("value", [np.array(0.1 + 0j), np.array([0.1 + 0j])[0:1]], ids=["0-d", "1-element"])
def test_complex_array_hyperparameters_are_refused(value):
    expected = (
        "Invalid `lr`: expected a real number, a schedule (callable) or a scalar tensor (real-valued). "
        f"Received: lr={value!r} of type ndarray"
    )
    with pytest.raises(TypeError, match=_message(expected)):
        lc.check_learning_rate(value, "lr")


@pytest.mark.parametrize("dtype", lc.MOMENTUM_DTYPES)
def test_momentum_defaults_to_the_parameters_dtype(dtype):
    assert lc.momentum_dtype(dtype) == dtype
    assert lc.momentum_dtype(dtype, "float32") == "float32"
