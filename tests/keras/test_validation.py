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


BAD_VALUES = [
    (dict(learning_rate=-1e-3), "Invalid `learning_rate`: expected 0 <= learning_rate < inf. Received: learning_rate=-0.001"),
    (dict(learning_rate=float("nan")), "Invalid `learning_rate`: expected 0 <= learning_rate < inf. Received: learning_rate=nan"),
    (dict(beta_1=1.0), "Invalid `beta_1`: expected 0 <= beta_1 < 1. Received: beta_1=1.0"),
    (dict(beta_1=-0.1), "Invalid `beta_1`: expected 0 <= beta_1 < 1. Received: beta_1=-0.1"),
    # keras.optimizers.Lion never checks beta_2.
    (dict(beta_2=1.5), "Invalid `beta_2`: expected 0 <= beta_2 < 1. Received: beta_2=1.5"),
    (dict(weight_decay=-0.1), "Invalid `weight_decay`: expected 0 <= weight_decay < inf. Received: weight_decay=-0.1"),
    (dict(decouple_lr=True, max_lr=0.0), "Invalid `max_lr`: expected 0 < max_lr < inf. Received: max_lr=0.0"),
    (
        dict(learning_rate=keras.optimizers.schedules.PolynomialDecay(0.0, 10, 1e-3), decouple_lr=True),
        "Invalid `max_lr`: expected 0 < max_lr < inf. Received: max_lr=0.0",
    ),
    (
        dict(momentum_dtype="int8"),
        "Invalid `momentum_dtype`: expected None or one of ('float16', 'bfloat16', 'float32', 'float64'). "
        "Received: momentum_dtype='int8'",
    ),
]


@pytest.mark.parametrize("kwargs, text", BAD_VALUES, ids=[next(iter(k)) + str(i) for i, (k, _) in enumerate(BAD_VALUES)])
def test_bad_values_raise_value_error(kwargs, text):
    with pytest.raises(ValueError, match=_message(text)):
        lion_keras.Lion(**kwargs)


BAD_TYPES = [
    (dict(learning_rate="0.1"), "Invalid `learning_rate`: expected a real number, a schedule (callable) or a scalar tensor. Received: learning_rate='0.1' of type str"),
    (dict(beta_1=None), "Invalid `beta_1`: expected a real number, a schedule (callable) or a scalar tensor. Received: beta_1=None of type NoneType"),
    (dict(beta_2=(0.9, 0.99)), "Invalid `beta_2`: expected a real number, a schedule (callable) or a scalar tensor. Received: beta_2=(0.9, 0.99) of type tuple"),
    (dict(weight_decay=lambda: 0.1), None),
    (dict(cautious=1), "Invalid `cautious`: expected True or False. Received: cautious=1 of type int"),
    (dict(decouple_lr="yes"), "Invalid `decouple_lr`: expected True or False. Received: decouple_lr='yes' of type str"),
    (dict(momentum_dtype=np.float32), None),
]


@pytest.mark.parametrize("kwargs, text", BAD_TYPES, ids=[next(iter(k)) + str(i) for i, (k, _) in enumerate(BAD_TYPES)])
def test_bad_types_raise_type_error(kwargs, text):
    if text is None:
        (name,) = kwargs
        text = f"Invalid `{name}`: expected "
        with pytest.raises(TypeError, match="^" + re.escape(text) + r".*Received: " + name + "=.* of type "):
            lion_keras.Lion(**kwargs)
        return
    with pytest.raises(TypeError, match=_message(text)):
        lion_keras.Lion(**kwargs)


def test_max_lr_without_decouple_lr_raises():
    with pytest.raises(
        RuntimeError,
        match=_message("`max_lr` is only used with `decouple_lr=True`. Received: decouple_lr=False, max_lr=0.01"),
    ):
        lion_keras.Lion(max_lr=0.01)


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
