"""Bad hyperparameters raise at construction with ``lion_core``'s text; schedules and traced values pass."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lion_optax
from lion_core.reference import reference_step
from tests.support import assert_close


LR_RANGE = "0 <= learning_rate < inf"


def _text(name, expected, value):
    return re.escape(f"Invalid `{name}`: expected {expected}. Received: {name}={value!r}")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(learning_rate=-1e-3), ValueError, _text("learning_rate", LR_RANGE, -1e-3)),
        (dict(learning_rate=float("inf")), ValueError, _text("learning_rate", LR_RANGE, float("inf"))),
        (dict(learning_rate=float("nan")), ValueError, _text("learning_rate", LR_RANGE, float("nan"))),
        (dict(learning_rate=None), TypeError, r"Invalid `learning_rate`: expected a real number, a schedule"),
        (dict(learning_rate="1e-3"), TypeError, r"Invalid `learning_rate`: .* of type str"),
        (dict(learning_rate=jnp.ones(2)), TypeError, r"Invalid `learning_rate`: .*\(one element\)"),
        (dict(learning_rate=1e-3, b1=1.0), ValueError, _text("b1", "0 <= b1 < 1", 1.0)),
        (dict(learning_rate=1e-3, b1=-0.1), ValueError, _text("b1", "0 <= b1 < 1", -0.1)),
        (dict(learning_rate=1e-3, b2=1.5), ValueError, _text("b2", "0 <= b2 < 1", 1.5)),
        (dict(learning_rate=1e-3, b2=jnp.float32(1.0)), ValueError, r"Invalid `b2`: expected 0 <= b2 < 1"),
        (dict(learning_rate=1e-3, weight_decay=-1e-4), ValueError,
         _text("weight_decay", "0 <= weight_decay < inf", -1e-4)),
        (dict(learning_rate=1e-3, mu_dtype="int32"), ValueError, r"Invalid `mu_dtype`: expected None or one"),
        (dict(learning_rate=1e-3, mu_dtype=jnp.int16), ValueError, r"Received: mu_dtype='int16'"),
        (dict(learning_rate=1e-3, mu_dtype="bf16"), ValueError, r"Received: mu_dtype='bf16'"),
        (dict(learning_rate=1e-3, mu_dtype=3), TypeError, r"Invalid `mu_dtype`: .* of type int"),
        (dict(learning_rate=1e-3, cautious="yes"), TypeError, r"Invalid `cautious`: expected True or False"),
        (dict(learning_rate=1e-3, decouple_lr=1), TypeError, r"Invalid `decouple_lr`: expected True or"),
        (dict(learning_rate=1e-3, max_lr=1e-3), RuntimeError, r"`max_lr` is only used with `decouple_lr="),
        (dict(learning_rate=1e-3, decouple_lr=True, max_lr=0.0), ValueError,
         _text("max_lr", "0 < max_lr < inf", 0.0)),
        (dict(learning_rate=optax.constant_schedule(1e-3), decouple_lr=True), RuntimeError,
         r"`max_lr` is required with `decouple_lr=True` when `learning_rate` is a schedule"),
        (dict(learning_rate=1e-3, betas=(0.9, 0.99)), TypeError, r"unexpected keyword argument 'betas'"),
        (dict(learning_rate=1e-3, mode="smooth"), TypeError, r"unexpected keyword argument 'mode'"),
    ],
)
def test_bad_hyperparameters_raise_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        lion_optax.lion(**kwargs)


def test_scale_by_lion_checks_its_own_arguments():
    with pytest.raises(ValueError, match=_text("b1", "0 <= b1 < 1", 1.0)):
        lion_optax.scale_by_lion(b1=1.0)
    with pytest.raises(ValueError, match=r"Invalid `mu_dtype`"):
        lion_optax.scale_by_lion(mu_dtype="float8_e4m3fn")
    with pytest.raises(TypeError, match=r"Invalid `cautious`"):
        lion_optax.scale_by_lion(cautious=None)


def test_mu_dtype_for_complex_parameters_is_refused_at_init():
    tx = lion_optax.scale_by_lion(mu_dtype=jnp.float32)
    with pytest.raises(RuntimeError, match=r"`momentum_dtype` cannot be set for complex parameters"):
        tx.init(jnp.zeros(3, jnp.complex64))


def test_schedules_and_traced_values_pass_unchecked():
    # Schedules are evaluated by optax later; traced values exist only inside jit; both are accepted.
    lion_optax.lion(optax.linear_schedule(0.0, 1e-3, 10), weight_decay=optax.constant_schedule(0.1))
    params, grads = jnp.array([1.0, -1.0]), jnp.array([0.5, 0.5])

    @jax.jit
    def step(lr, b1, b2, wd):
        tx = lion_optax.lion(lr, b1=b1, b2=b2, weight_decay=wd, decouple_lr=True, max_lr=lr)
        updates, _ = tx.update(grads, tx.init(params), params)
        return optax.apply_updates(params, updates)

    got = step(0.1, 0.9, 0.99, 0.01)
    ref_p, _ = reference_step(
        np.asarray(params), np.asarray(grads), np.zeros(2), lr=0.1, weight_decay=0.01, max_lr=0.1
    )
    assert_close(got, ref_p, rtol=1e-6, atol=0)


def test_construction_does_not_need_an_update_to_fail():
    # optax.scale_by_lion only checks `mode` at the first update; ours fails before init.
    with pytest.raises(ValueError):
        lion_optax.lion(1e-3, b2=2.0)
