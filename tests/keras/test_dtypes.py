"""Keras' dtype contract: the momentum has its variable's dtype by default, as every Keras optimizer's
state has (``add_variable_from_reference``), and float32 is one keyword away. The oracle is
``lion_core.reference`` in float32, rounded to the storage dtypes after each step."""

from __future__ import annotations

import keras
import ml_dtypes
import numpy as np
import pytest
from keras import ops

import lion_keras
from lion_core.reference import reference_step
from tests.keras._helpers import margin_grads, momenta, momentum_atol, values
from tests.support import assert_close, assert_exact

SHAPES = [(8, 6), (5,), ()]
STEPS = 4
LR = 0.01
STORAGE = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16, "float32": np.float32}
ULP = {"bfloat16": 2.0**-7, "float16": 2.0**-10, "float32": 2.0**-23}  # relative, at most


def _round(x, dtype):
    return np.asarray(x).astype(STORAGE[dtype]).astype(np.float64)


@pytest.mark.parametrize("momentum_dtype", [None, "float32"], ids=["default", "float32"])
@pytest.mark.parametrize("dtype", sorted(STORAGE))
def test_momentum_dtype_and_numbers(dtype, momentum_dtype):
    rng = np.random.default_rng(11)
    init = [_round(rng.standard_normal(s), dtype) for s in SHAPES]
    # |c| >= 0.05 at every step: the signs agree, whatever the rounding.
    grads = [[_round(g, dtype) for g in step] for step in margin_grads(init, STEPS, seed=12)]
    variables = [keras.Variable(x.astype(np.float32), dtype=dtype) for x in init]
    # No weight decay: Keras' base class applies it in the variable's dtype, where a bfloat16 decay
    # step p * wd * lr below half an ulp of p rounds away (keras.optimizers.Lion does the same).
    optimizer = lion_keras.Lion(learning_rate=LR, momentum_dtype=momentum_dtype)
    for step_grads in grads:
        optimizer.apply([ops.convert_to_tensor(g.astype(np.float32), dtype) for g in step_grads], variables)
    stored = dtype if momentum_dtype is None else momentum_dtype
    assert [keras.backend.standardize_dtype(m.dtype) for m in optimizer._momentums] == [stored] * len(SHAPES)
    # The reference: float32 arithmetic, each result rounded once to its storage dtype.
    ps, ms = list(init), [np.zeros(s) for s in SHAPES]
    for step_grads in grads:
        for i, g in enumerate(step_grads):
            p, m = reference_step(ps[i], g, ms[i], lr=LR, dtype=np.float32)
            ps[i], ms[i] = _round(p, dtype), _round(m, stored)
    # The signs agree and p - lr * sign(c) is one rounding: the parameters are exact. Keras rounds the
    # betas to float32 before forming 1 - beta (as keras.optimizers.Lion does), so the float32 momentum
    # differs from the reference's within momentum_atol; stored in a lower precision, a value that
    # close to a rounding boundary may then round to the neighbouring value: one ulp.
    atol = momentum_atol(grads)
    for i, (p, m) in enumerate(zip(values(variables), momenta(optimizer))):
        assert_exact(p, ps[i], what=f"param {i}")
        rtol = 0.0 if stored == "float32" else ULP[stored]
        assert_close(m, ms[i], rtol=rtol, atol=atol, what=f"momentum {i}")
