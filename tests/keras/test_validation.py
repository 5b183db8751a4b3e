"""Construction: the signature of ``keras.optimizers.Lion``, and ``lion_core``'s errors for bad input."""

from __future__ import annotations

import inspect
import re

import keras
import numpy as np
import pytest

import lion_keras
from lion_core import defaults


def test_signature_is_keras_lion_plus_keyword_only_variants():
    ours = inspect.signature(lion_keras.Lion.__init__).parameters
    theirs = inspect.signature(keras.optimizers.Lion.__init__).parameters
    shared = [name for name in ours if name in theirs]
    assert shared == list(theirs), "same names, same order"
    for name in theirs:
        assert ours[name].default == theirs[name].default, name
        assert ours[name].kind == theirs[name].kind, name
    extra = {name: p for name, p in ours.items() if name not in theirs}
    assert {name: p.default for name, p in extra.items()} == {
        "cautious": False,
        "decouple_lr": False,
        "max_lr": None,
        "momentum_dtype": None,
        "stochastic_rounding": False,
        "seed": None,
    }
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in extra.values())


def test_defaults_come_from_lion_core():
    optimizer = lion_keras.Lion()
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(defaults.KERAS.lr)
    assert (optimizer.beta_1, optimizer.beta_2, optimizer.weight_decay) == (
        defaults.KERAS.beta1,
        defaults.KERAS.beta2,
        defaults.KERAS.weight_decay,
    )
    assert (optimizer.cautious, optimizer.decouple_lr, optimizer.max_lr, optimizer.momentum_dtype) == (
        False,
        False,
        None,
        None,
    )


def _message(text: str) -> str:
    return "^" + re.escape(text) + "$"


def _range(name: str, expected: str, received: str) -> str:
    return f"Invalid `{name}`: expected {expected}. Received: {name}={received}"


LR_RANGE = "0 <= learning_rate < inf"
WD_RANGE = "0 <= weight_decay < inf"

BAD_VALUES = {
    "learning_rate_negative": (dict(learning_rate=-1e-3), _range("learning_rate", LR_RANGE, "-0.001")),
    "learning_rate_nan": (dict(learning_rate=float("nan")), _range("learning_rate", LR_RANGE, "nan")),
    "beta_1_one": (dict(beta_1=1.0), _range("beta_1", "0 <= beta_1 < 1", "1.0")),
    "beta_1_negative": (dict(beta_1=-0.1), _range("beta_1", "0 <= beta_1 < 1", "-0.1")),
    # keras.optimizers.Lion never checks beta_2.
    "beta_2_above_one": (dict(beta_2=1.5), _range("beta_2", "0 <= beta_2 < 1", "1.5")),
    "weight_decay_negative": (dict(weight_decay=-0.1), _range("weight_decay", WD_RANGE, "-0.1")),
    "max_lr_zero": (dict(decouple_lr=True, max_lr=0.0), _range("max_lr", "0 < max_lr < inf", "0.0")),
    # With no max_lr, a constant learning rate is the peak, and 0 cannot be: the text says what to pass.
    "learning_rate_zero_decoupled": (
        dict(learning_rate=0.0, decouple_lr=True),
        _range("learning_rate", "0 < learning_rate < inf with `decouple_lr=True` and no `max_lr` (the decay "
               "is divided by the peak learning rate, which then defaults to learning_rate); to start from "
               "learning_rate=0.0, pass max_lr=<the peak learning rate>", "0.0"),
    ),
    "momentum_dtype_int4": (
        dict(momentum_dtype="int4"),
        _range(
            "momentum_dtype", "None or one of ('float16', 'bfloat16', 'float32', 'float64', 'int8')", "'int4'"
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_values_raise_value_error(case):
    kwargs, text = BAD_VALUES[case]
    with pytest.raises(ValueError, match=_message(text)):
        lion_keras.Lion(**kwargs)


NUMBER = "a real number, a schedule (callable) or a scalar tensor"

BAD_TYPES = {
    "learning_rate_str": (dict(learning_rate="0.1"), _range("learning_rate", NUMBER, "'0.1' of type str")),
    "beta_1_none": (dict(beta_1=None), _range("beta_1", NUMBER, "None of type NoneType")),
    "beta_2_pair": (dict(beta_2=(0.9, 0.99)), _range("beta_2", NUMBER, "(0.9, 0.99) of type tuple")),
    "cautious_int": (dict(cautious=1), _range("cautious", "True or False", "1 of type int")),
    "decouple_lr_str": (dict(decouple_lr="yes"), _range("decouple_lr", "True or False", "'yes' of type str")),
    "momentum_dtype_class": (
        dict(momentum_dtype=np.float32),
        _range(
            "momentum_dtype",
            "None or one of ('float16', 'bfloat16', 'float32', 'float64', 'int8')",
            "<class 'numpy.float32'> of type type",
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_TYPES))
def test_bad_types_raise_type_error(case):
    kwargs, text = BAD_TYPES[case]
    with pytest.raises(TypeError, match=_message(text)):
        lion_keras.Lion(**kwargs)


def test_scheduled_weight_decay_is_refused_at_construction():
    """Keras' base class cannot apply a callable weight decay: refuse it now, not at the first step."""
    expected = re.escape("Invalid `weight_decay`: expected None or a non-negative real number. Received: ")
    with pytest.raises(TypeError, match="^" + expected + "weight_decay=<function .*> of type function$"):
        lion_keras.Lion(weight_decay=lambda: 0.1)


def test_max_lr_without_decouple_lr_raises():
    with pytest.raises(
        RuntimeError,
        match=_message(
            "`max_lr` is only used with `decouple_lr=True`. Received: decouple_lr=False, max_lr=0.01"
        ),
    ):
        lion_keras.Lion(max_lr=0.01)


def test_max_lr_is_required_with_a_schedule():
    """A schedule's first value is not its peak (a warm-up from 0 would divide by 0): ask for max_lr,
    naming the argument the user passed, not one they never did."""
    schedule = keras.optimizers.schedules.PolynomialDecay(0.0, 10, 1e-3)
    expected = (
        "`max_lr` is required with `decouple_lr=True` when `learning_rate` is a schedule or an array, whose "
        "peak cannot be read at construction: pass max_lr=<the peak learning rate>. "
        f"Received: learning_rate={schedule!r}, max_lr=None"
    )
    with pytest.raises(RuntimeError, match="^" + re.escape(expected) + "$"):
        lion_keras.Lion(schedule, decouple_lr=True)
    assert lion_keras.Lion(schedule, decouple_lr=True, max_lr=1e-3).max_lr == 1e-3


def test_momentum_dtype_for_complex_variables_raises_at_build():
    optimizer = lion_keras.Lion(momentum_dtype="float32")
    with pytest.raises(RuntimeError, match="`momentum_dtype` cannot be set for complex parameters"):
        optimizer.build([keras.Variable(np.zeros(3, np.complex64))])


def test_unknown_keyword_is_refused_by_keras():
    with pytest.raises(ValueError, match="Argument\\(s\\) not recognized"):
        lion_keras.Lion(betas=(0.9, 0.99))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(learning_rate=keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.9)),
        dict(learning_rate=lambda: 1e-3, beta_1=lambda: 0.9, beta_2=lambda: 0.99),
        dict(learning_rate=1, beta_1=0.0, weight_decay=0),
        dict(learning_rate=np.float32(1e-3), beta_1=np.float64(0.5), weight_decay=np.float32(0.1)),
        dict(beta_1=keras.ops.convert_to_tensor(0.9)),
    ],
    ids=["schedule", "callables", "integers_and_zero_beta", "numpy_scalars", "scalar_tensor"],
)
def test_valid_inputs_are_accepted(kwargs):
    """Schedules and callables pass through; ``beta_1=0`` is valid (keras.optimizers.Lion refuses it)."""
    optimizer = lion_keras.Lion(**kwargs)
    variable = keras.Variable(np.array([1.0, -1.0], "float32"))
    optimizer.apply([keras.ops.convert_to_tensor(np.array([1.0, -1.0], "float32"))], [variable])
    moved = keras.ops.convert_to_numpy(variable)
    assert moved[0] < 1.0 and moved[1] > -1.0
